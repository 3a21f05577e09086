"""The provider factory: a source's ``type`` → its provider, as ``exporter.sources.SOURCES`` names it.

Modules are imported only when a source of that type is configured, so the
exporter loads just the SDKs it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from exporter.providers.base import Provider, ProviderContext

if TYPE_CHECKING:
    from exporter.sources.base import SourceBase


def create_provider(config: SourceBase, ctx: ProviderContext) -> Provider:
    """Import the source type's module and build its provider."""
    # here, not at the top: the FOCUS reader process imports this package and starts without the config's models
    from exporter.sources import SOURCES

    spec = SOURCES[config.type]
    module_name, _, cls = spec.implementation.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        hint = f" (pip install 'spend-exporter[{spec.extra}]')" if spec.extra else ""
        raise ImportError(f"source type {spec.type!r} needs a package that is not installed: {e.name}{hint}") from None
    factory = getattr(module, cls)
    provider: Provider = factory(config, ctx)
    return provider

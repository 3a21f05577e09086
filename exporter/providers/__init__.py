"""The provider registry: one explicit table, source ``type`` → module and class.

Modules are imported only when a source of that type is configured, so the
exporter loads just the SDKs it needs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from exporter.providers.base import Provider, ProviderContext


@dataclass(frozen=True)
class ProviderSpec:
    type: str
    provider: str  # value of the ``provider`` label on spend_exporter_source_* metrics
    module: str
    cls: str
    api: str  # the billing API it reads, named in HELP texts and docs
    extra: str  # the pip extra that installs its SDK


REGISTRY: dict[str, ProviderSpec] = {
    s.type: s
    for s in (
        ProviderSpec("aws", "aws", "exporter.providers.aws", "AwsProvider", "AWS Cost Explorer", "aws"),
        ProviderSpec("azure", "azure", "exporter.providers.azure", "AzureProvider", "Azure Cost Management", "azure"),
        ProviderSpec("oci", "oci", "exporter.providers.oci", "OciProvider", "OCI Usage API", "oci"),
        ProviderSpec(
            "gcp_bigquery",
            "gcp",
            "exporter.providers.gcp_bigquery",
            "GcpBigQueryProvider",
            "GCP BigQuery billing export",
            "gcp",
        ),
        ProviderSpec("openai", "openai", "exporter.providers.openai", "OpenAIProvider", "OpenAI Admin API", "openai"),
        ProviderSpec(
            "anthropic",
            "anthropic",
            "exporter.providers.anthropic",
            "AnthropicProvider",
            "Anthropic Admin API",
            "anthropic",
        ),
        ProviderSpec("focus", "focus", "exporter.providers.focus", "FocusProvider", "FinOps FOCUS files", ""),
    )
}


def create_provider(config: Any, ctx: ProviderContext) -> Provider:
    """Import the source type's module and build its provider."""
    spec = REGISTRY[config.type]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as e:
        hint = f" (pip install 'spend-exporter[{spec.extra}]')" if spec.extra else ""
        raise ImportError(f"source type {spec.type!r} needs a package that is not installed: {e.name}{hint}") from None
    factory = getattr(module, spec.cls)
    provider: Provider = factory(config, ctx)
    return provider

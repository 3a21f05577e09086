"""The docs must not drift from the code: every family, config key and provider is documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.config import SOURCE_TYPES, Attribution, Budget, Config, SourceBase
from exporter.metrics import describe_families
from exporter.providers import REGISTRY

ROOT = Path(__file__).resolve().parent.parent


def test_every_family_is_in_metrics_md() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    for fam in describe_families():
        assert f"`{fam['name']}`" in text, f"{fam['name']} missing from docs/metrics.md"
        for label in fam["labels"]:
            assert f"`{label}`" in text


def test_every_config_key_is_in_configuration_md() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    models: list[type] = [Config, Budget, Attribution, SourceBase, *SOURCE_TYPES.values()]
    for model in models:
        for name in model.model_fields:  # type: ignore[attr-defined]
            assert f"`{name}`" in text or f"`attribution.{name}`" in text, f"{model.__name__}.{name} undocumented"


@pytest.mark.parametrize("spec", list(REGISTRY.values()), ids=lambda s: s.type)
def test_every_provider_has_a_page(spec) -> None:  # type: ignore[no-untyped-def]
    if spec.type == "focus":
        assert "### `focus`" in (ROOT / "docs" / "configuration.md").read_text()
        return
    page = ROOT / "docs" / "providers" / f"{spec.type}.md"
    assert page.exists(), f"docs/providers/{spec.type}.md is missing"
    assert "```yaml" in page.read_text(), f"{page.name} has no config example"

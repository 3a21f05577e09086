"""The docs must not drift from the code: every family, config key, source type and file named is documented."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from exporter.config import SOURCE_TYPES, Attribution, Budget, Config
from exporter.metrics import describe_families
from exporter.sources import SOURCES
from exporter.sources.base import SourceBase, SourceSpec

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


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


def test_configuration_md_lists_the_source_types_of_the_table() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    listed = ", ".join(f"`{t}`" for t in SOURCES)
    assert f"| `type` | required | {listed} |" in text, "the `type` row of docs/configuration.md is not SOURCES"
    headings = [line for line in text.splitlines() if line.startswith("### ")]
    for spec in SOURCES.values():
        (heading,) = [h for h in headings if f"`{spec.type}`" in h]
        page = Path(spec.docs).relative_to("docs")
        assert page == Path("configuration.md") or f"]({page.as_posix()})" in heading, (
            f"{heading} has no link to {page}"
        )


@pytest.mark.parametrize("spec", list(SOURCES.values()), ids=lambda s: s.type)
def test_every_source_type_has_a_page(spec: SourceSpec) -> None:
    page = ROOT / spec.docs
    assert page.exists(), f"{spec.docs} is missing"
    text = page.read_text()
    assert any(line.startswith("#") and f"`{spec.type}`" in line for line in text.splitlines()), (
        f"{page.name}: no heading"
    )
    assert "```yaml" in text, f"{page.name} has no config example"
    if page.parent.name == "providers":  # a page of its own, not a section of configuration.md
        assert f"spend-exporter[{spec.extra}]" in text, f"{page.name} does not say how to install the SDK"
        for module in (spec.implementation.partition(":")[0], spec.config.__module__):
            path = module.replace(".", "/") + ".py"
            assert f"`{path}`" in text, f"{page.name} does not name {path}"


@pytest.mark.parametrize("spec", list(SOURCES.values()), ids=lambda s: s.type)
def test_every_source_type_is_installable_and_importable(spec: SourceSpec) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    if spec.extra:
        assert spec.extra in extras, f"pyproject.toml has no extra {spec.extra!r}"
        (everything,) = extras["all"]  # "spend-exporter[aws,azure,...]"
        assert spec.extra in everything.partition("[")[2].rstrip("]").split(","), f"'all' lacks {spec.extra!r}"
    module, _, cls = spec.implementation.partition(":")
    assert (ROOT / (module.replace(".", "/") + ".py")).exists(), spec.implementation
    assert re.search(rf"^class {cls}\b", (ROOT / (module.replace(".", "/") + ".py")).read_text(), re.M), cls


def _named_files(text: str) -> list[str]:
    """Files a doc links to (relative links) or names in a code span (``exporter/app.py``)."""
    # not an URL, an anchor or a placeholder (providers/<type>.md)
    links = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s<]+)\)", text) if not re.match(r"[a-z]+:|#", t)]
    spans = re.findall(r"`((?:exporter|tests|bench|examples|docs)/[\w./-]+\.(?:py|md|yml|yaml|json|toml))", text)
    return [*links, *(f"/{s}" for s in spans)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_a_doc_names_exists(doc: Path) -> None:
    for name in _named_files(doc.read_text()):
        path = ROOT / name[1:] if name.startswith("/") else doc.parent / name
        assert path.exists(), f"{doc.relative_to(ROOT)} names {name.lstrip('/')}, which does not exist"

"""The source types: one table, ``SOURCES``, from which the rest is built.

Each type is one module here declaring its config model and its ``SourceSpec``. From this table come the
config's union of source models (``exporter.config``), the provider factory (``exporter.providers``), the
``provider`` label and API name of each source's metrics, and the docs tests. The modules import pydantic
only: a provider and its SDK are imported when a source of that type is configured.
"""

from __future__ import annotations

from exporter.sources import anthropic, aws, azure, focus, gcp_bigquery, oci, openai
from exporter.sources.base import SourceSpec

SOURCES: dict[str, SourceSpec] = {
    s.type: s for s in (aws.SPEC, azure.SPEC, oci.SPEC, gcp_bigquery.SPEC, openai.SPEC, anthropic.SPEC, focus.SPEC)
}
"""Source ``type`` → its spec, in the order the docs and the JSON Schema list them."""

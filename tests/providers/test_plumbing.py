"""What the providers share: ``paginate``, ``RetryPolicy.from_settings``, ``utc_midnight``; and the table of
source types that the config's union and the provider factory are built from."""

from __future__ import annotations

import datetime as dt
import typing
from typing import Any

import pytest

from exporter.config import SOURCE_TYPES, Config, parse_config
from exporter.providers.base import MAX_PAGES, RetryPolicy, SourceError, paginate, utc_midnight
from exporter.sources import SOURCES
from exporter.sources.admin_api import AdminApiSource
from exporter.sources.base import ThrottleRetry


def pages(tokens: list[str | None]) -> tuple[list[str | None], list[int]]:
    """``paginate`` over pages 0, 1, 2... whose next tokens are ``tokens``: the tokens asked for, the pages got."""
    asked: list[str | None] = []

    def fetch(token: str | None) -> tuple[int, str | None]:
        asked.append(token)
        return len(asked) - 1, tokens[len(asked) - 1]

    return asked, list(paginate("ListThings", fetch))


def test_paginate_follows_tokens_until_there_is_none() -> None:
    assert pages(["a", "b", None]) == ([None, "a", "b"], [0, 1, 2])
    assert pages([""]) == ([None], [0])


def test_paginate_stops_a_token_that_repeats() -> None:
    with pytest.raises(SourceError, match=r"^ListThings: pagination does not end \(page 3\)$"):
        pages(["a", "b", "a", None])


def test_paginate_stops_after_max_pages() -> None:
    tokens: list[str | None] = [str(i) for i in range(MAX_PAGES + 1)]
    with pytest.raises(SourceError, match=rf"pagination does not end \(page {MAX_PAGES}\)"):
        pages(tokens)
    calls = []

    def fetch(token: str | None) -> tuple[None, str | None]:
        calls.append(token)
        return None, f"t{len(calls)}"

    with pytest.raises(SourceError, match=r"\(page 3\)"):
        list(paginate("X", fetch, max_pages=3))
    assert len(calls) == 3


def test_utc_midnight() -> None:
    assert utc_midnight(dt.date(2026, 12, 31)) == dt.datetime(2026, 12, 31, tzinfo=dt.UTC)
    assert utc_midnight(dt.date(2026, 12, 31), 1) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


def one_source(type_: str, **keys: Any) -> Any:
    """A parsed source of ``type_`` with ``keys``, and what the type requires."""
    required = {
        "azure": {"scopes": ["/subscriptions/x"]},
        "oci": {"tenancy_id": "ocid1.tenancy.oc1..x"},
        "gcp_bigquery": {"table": "p.d.t"},
        "focus": {"paths": ["*.csv"]},
    }
    source = {"name": "s", "type": type_, **required.get(type_, {}), **keys}
    (src,) = parse_config({"sources": [source]}, env={}).sources
    return src


@pytest.mark.parametrize("type_", list(SOURCES))
def test_the_config_union_is_the_table(type_: str) -> None:
    src = one_source(type_)
    assert type(src) is SOURCES[type_].config is SOURCE_TYPES[type_]
    assert typing.get_args(SOURCES[type_].config.model_fields["type"].annotation) == (type_,)


def test_the_table_is_the_unions_order() -> None:
    union = typing.get_args(typing.get_args(Config.model_fields["sources"].annotation)[0])[0]
    assert typing.get_args(union) == tuple(s.config for s in SOURCES.values())


@pytest.mark.parametrize("type_", [t for t, s in SOURCES.items() if issubclass(s.config, ThrottleRetry)])
def test_retry_policy_from_throttle_keys(type_: str) -> None:
    src = one_source(type_, throttle_retries=2, throttle_backoff="3s", throttle_max_wait="40s", timeout="2m")
    assert RetryPolicy.from_settings(src) == RetryPolicy(retries=2, max_wait=40.0, timeout=120.0, backoff=3.0)


@pytest.mark.parametrize("type_", [t for t, s in SOURCES.items() if issubclass(s.config, AdminApiSource)])
def test_retry_policy_from_admin_api_keys(type_: str) -> None:
    src = one_source(type_, max_retries=5, max_retry_wait="20s", timeout="1m")
    # no backoff: a 429 without retry-after is not retried
    assert RetryPolicy.from_settings(src) == RetryPolicy(retries=5, max_wait=20.0, timeout=60.0, backoff=None)


def test_retry_defaults_are_each_source_types() -> None:
    defaults = {t: RetryPolicy.from_settings(one_source(t)) for t in ("aws", "azure", "focus", "openai")}
    assert defaults == {
        "aws": RetryPolicy(retries=4, max_wait=30.0, timeout=300.0, backoff=1.0),
        "azure": RetryPolicy(retries=3, max_wait=60.0, timeout=300.0, backoff=5.0),
        "focus": RetryPolicy(retries=4, max_wait=30.0, timeout=300.0, backoff=1.0),
        "openai": RetryPolicy(retries=3, max_wait=60.0, timeout=300.0, backoff=None),
    }

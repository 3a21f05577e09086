"""The OCI source against the local Usage API emulator, through the real ``oci`` SDK.

Requests are signed with a throwaway RSA key made here, and the emulator
verifies the signature with its public half.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from exporter.config import parse_config
from exporter.model import AccountInfo, FetchResult, FetchWindow
from exporter.providers.base import ProviderContext, SourceError, Throttled
from exporter.providers.oci import OciProvider
from exporter.sources.oci import OciSource
from tests.emulators.dataset import Dataset, build_dataset
from tests.emulators.oci_usage import OciUsageEmulator
from tests.emulators.server import Fault
from tests.helpers import Calls, series, write_oci_key

TODAY = dt.date(2024, 5, 20)
NOW = dt.datetime(2024, 5, 20, 12, 0, tzinfo=dt.UTC)
TENANCY = "ocid1.tenancy.oc1..aaaatest"
WINDOW = FetchWindow(start=dt.date(2024, 4, 1), end=TODAY, now=NOW)
CENT = Decimal("0.01")


@dataclass
class OciKey:
    config_file: Path
    public_pem: bytes


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return build_dataset(TODAY)


@pytest.fixture(scope="module")
def oci_key(tmp_path_factory: pytest.TempPathFactory) -> OciKey:
    config, _pem, public = write_oci_key(tmp_path_factory.mktemp("oci"), TENANCY)
    return OciKey(config, public)


@pytest.fixture(scope="module")
def _server(dataset: Dataset, oci_key: OciKey) -> Iterator[OciUsageEmulator]:
    emu = OciUsageEmulator(dataset, public_key_pem=oci_key.public_pem)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def emulator(_server: OciUsageEmulator) -> OciUsageEmulator:
    """The module's emulator, reset: no faults, no requests seen, default knobs."""
    _server.clear_faults()
    _server.requests.clear()
    _server.page_size = 500
    _server.null_amount_days = set()
    _server.blank_currency_days = set()
    _server.blank_currency_value = " "
    return _server


def source(emu: OciUsageEmulator, key: OciKey, **overrides: Any) -> OciSource:
    raw: dict[str, Any] = {
        "name": "oci",
        "type": "oci",
        "tenancy_id": TENANCY,
        "config_file": str(key.config_file),
        "team_tag": {"namespace": "Ops", "key": "team"},
        "service_endpoint": emu.url,
        "timeout": "10s",
        "retry_max_attempts": 3,
        "retry_base_delay": "5ms",
        "retry_max_delay": "20ms",
    }
    raw.update(overrides)
    src = parse_config({"sources": [raw]}).sources[0]
    assert isinstance(src, OciSource)
    return src


def provider(emu: OciUsageEmulator, key: OciKey, **overrides: Any) -> tuple[OciProvider, Calls]:
    calls = Calls()
    ctx = ProviderContext("oci", on_call=calls)
    return OciProvider(source(emu, key, **overrides), ctx), calls


def expected_sums(dataset: Dataset, start: dt.date, end: dt.date) -> dict[tuple[dt.date, str, str | None], Decimal]:
    out: dict[tuple[dt.date, str, str | None], Decimal] = defaultdict(Decimal)
    for r in dataset.rows("oci"):
        if start <= r.day <= end:
            out[(r.day, r.service_name, r.team)] += r.amount
    return out


def got_sums(result: FetchResult) -> dict[tuple[dt.date, str, str | None], Decimal]:
    out: dict[tuple[dt.date, str, str | None], Decimal] = defaultdict(Decimal)
    for c in result.costs:
        assert c.provider == "oci" and c.account_id == TENANCY and c.model == ""
        out[(c.day, c.service_name, c.team_tag)] += Decimal(str(c.amount))
    return {k: v.quantize(CENT) for k, v in out.items()}


def test_figures_equal_the_dataset_per_day_service_and_team(emulator: OciUsageEmulator, oci_key: OciKey) -> None:
    p, calls = provider(emulator, oci_key)
    result = p.fetch(WINDOW)

    assert got_sums(result) == expected_sums(emulator.dataset, WINDOW.start, WINDOW.end)
    assert all(c.currency == "USD" for c in result.costs)
    assert result.days == WINDOW.days()
    assert result.accounts == [AccountInfo("oci", TENANCY, "acme-tenancy")]
    assert result.data_through == dt.datetime(2024, 5, 21, tzinfo=dt.UTC)
    # compartments are summed away: one record per day, service and team
    assert len(result.costs) == len({(c.day, c.service_name, c.team_tag) for c in result.costs})
    # untagged rows come back without a team tag; the engine attributes them
    assert any(c.team_tag is None for c in result.costs)
    assert {c.team_tag for c in result.costs} == {"search", "payments", None}
    assert calls.calls == [("RequestSummarizedUsages", "success", 0.0)]


def test_request_uses_exact_utc_midnights_and_the_documented_grouping(
    emulator: OciUsageEmulator, oci_key: OciKey
) -> None:
    p, _ = provider(emulator, oci_key)
    p.fetch(WINDOW)

    (req,) = emulator.requests
    assert req.method == "POST" and req.path == "/20200107/usage"
    assert req.headers["authorization"].startswith("Signature ")  # and verified by the emulator
    body = req.json()
    assert body["tenantId"] == TENANCY
    assert body["timeUsageStarted"] == "2024-04-01T00:00:00Z"
    assert body["timeUsageEnded"] == "2024-05-21T00:00:00Z"  # exclusive: covers today
    assert body["granularity"] == "DAILY"
    assert body["queryType"] == "COST"
    assert body["groupBy"] == ["service", "compartmentName", "tenantName"]
    assert body["groupByTag"] == [{"namespace": "Ops", "key": "team"}]


def test_without_a_team_tag_nothing_is_grouped_by_tag(emulator: OciUsageEmulator, oci_key: OciKey) -> None:
    p, _ = provider(emulator, oci_key, team_tag=None)
    result = p.fetch(WINDOW)

    assert "groupByTag" not in emulator.requests[0].json()
    assert {c.team_tag for c in result.costs} == {None}
    total = sum(expected_sums(emulator.dataset, WINDOW.start, WINDOW.end).values())
    assert Decimal(str(sum(c.amount for c in result.costs))).quantize(CENT) == total


def test_follows_opc_next_page_across_pages(emulator: OciUsageEmulator, oci_key: OciKey) -> None:
    emulator.page_size = 40
    p, calls = provider(emulator, oci_key)
    result = p.fetch(WINDOW)

    assert len(emulator.requests) >= 3
    assert emulator.requests[0].q("page") is None
    assert all(r.q("page") for r in emulator.requests[1:])
    assert len({r.q("page") for r in emulator.requests[1:]}) == len(emulator.requests) - 1
    assert calls.calls == [("RequestSummarizedUsages", "success", 0.0)] * len(emulator.requests)
    assert got_sums(result) == expected_sums(emulator.dataset, WINDOW.start, WINDOW.end)


def test_throttling_is_retried_then_succeeds(emulator: OciUsageEmulator, oci_key: OciKey) -> None:
    emulator.inject(Fault("throttle", times=2))
    p, calls = provider(emulator, oci_key)
    result = p.fetch(WINDOW)

    assert len(emulator.requests) == 3  # two 429s, then the answer
    assert calls.calls == [("RequestSummarizedUsages", "success", 0.0)]
    assert got_sums(result) == expected_sums(emulator.dataset, WINDOW.start, WINDOW.end)


def test_throttling_that_does_not_stop_raises_throttled(emulator: OciUsageEmulator, oci_key: OciKey) -> None:
    emulator.inject(Fault("throttle", times=-1))
    p, calls = provider(emulator, oci_key, retry_max_attempts=2)

    with pytest.raises(Throttled, match="429 TooManyRequests"):
        p.fetch(WINDOW)
    assert len(emulator.requests) == 2
    assert calls.calls == [("RequestSummarizedUsages", "throttled", 0.0)]


@pytest.mark.parametrize("kind", ["500", "503"])
def test_server_errors_raise(emulator: OciUsageEmulator, oci_key: OciKey, kind: str) -> None:
    emulator.inject(Fault(kind, times=-1))
    p, calls = provider(emulator, oci_key)

    with pytest.raises(SourceError, match=f"OCI Usage API error {kind}"):
        p.fetch(WINDOW)
    assert len(emulator.requests) == 3  # retry_max_attempts
    assert calls.calls == [("RequestSummarizedUsages", "error", 0.0)]


def test_a_failing_later_page_fails_the_whole_fetch(emulator: OciUsageEmulator, oci_key: OciKey) -> None:
    emulator.page_size = 40
    emulator.inject(Fault("500", after=2, times=-1))
    p, calls = provider(emulator, oci_key)

    with pytest.raises(SourceError):
        p.fetch(WINDOW)
    assert [c[1] for c in calls.calls] == ["success", "success", "error"]


def test_timeout_raises(emulator: OciUsageEmulator, oci_key: OciKey) -> None:
    emulator.inject(Fault("timeout", delay=2.0, times=-1))
    p, _ = provider(emulator, oci_key, timeout="300ms", retry_max_attempts=2)

    with pytest.raises(SourceError, match="request failed: timed out"):
        p.fetch(WINDOW)


@pytest.mark.parametrize("kind", ["malformed", "wrong_shape"])
def test_malformed_bodies_raise_source_error(emulator: OciUsageEmulator, oci_key: OciKey, kind: str) -> None:
    emulator.inject(Fault(kind))
    p, calls = provider(emulator, oci_key)

    with pytest.raises(SourceError, match=r"malformed body|unexpected body"):
        p.fetch(WINDOW)
    assert calls.calls == [("RequestSummarizedUsages", "error", 0.0)]


def test_null_computed_amount_is_passed_on_as_not_a_number(
    emulator: OciUsageEmulator, oci_key: OciKey, caplog: pytest.LogCaptureFixture
) -> None:
    unrated = dt.date(2024, 5, 19)
    emulator.null_amount_days = {unrated}
    p, _ = provider(emulator, oci_key)
    with caplog.at_level(logging.WARNING):
        result = p.fetch(WINDOW)

    nan = [c for c in result.costs if math.isnan(c.amount)]
    # one item per service, compartment and team that day; never a zero
    items_that_day = {
        (r.service_name, r.extra["compartment"], r.team) for r in emulator.dataset.rows("oci") if r.day == unrated
    }
    assert len(nan) == len(items_that_day)
    assert {c.day for c in nan} == {unrated}
    rated = FetchResult(days=result.days, costs=[c for c in result.costs if not math.isnan(c.amount)])
    want = {k: v for k, v in expected_sums(emulator.dataset, WINDOW.start, WINDOW.end).items() if k[0] != unrated}
    assert got_sums(rated) == want
    assert "have no computedAmount" in caplog.text


@pytest.mark.parametrize("blank", [" ", "", None])
def test_blank_currency_is_never_read_as_usd(
    emulator: OciUsageEmulator, oci_key: OciKey, caplog: pytest.LogCaptureFixture, blank: str | None
) -> None:
    odd = dt.date(2024, 5, 18)
    emulator.blank_currency_days = {odd}
    emulator.blank_currency_value = blank
    p, _ = provider(emulator, oci_key)
    with caplog.at_level(logging.WARNING):
        result = p.fetch(WINDOW)

    assert {c.currency for c in result.costs if c.day == odd} == {""}  # the engine skips and counts these
    assert {c.currency for c in result.costs if c.day != odd} == {"USD"}
    assert "blank currency" in caplog.text


def test_blank_currency_uses_the_configured_subscription_currency(emulator: OciUsageEmulator, oci_key: OciKey) -> None:
    emulator.blank_currency_days = set(WINDOW.days())
    p, _ = provider(emulator, oci_key, currency="usd")
    result = p.fetch(WINDOW)

    assert {c.currency for c in result.costs} == {"USD"}
    assert got_sums(result) == expected_sums(emulator.dataset, WINDOW.start, WINDOW.end)


def test_unknown_tenancy_raises(emulator: OciUsageEmulator, oci_key: OciKey) -> None:
    p, _ = provider(emulator, oci_key, tenancy_id="ocid1.tenancy.oc1..other")
    with pytest.raises(SourceError, match="404 NotAuthorizedOrNotFound"):
        p.fetch(WINDOW)


def test_missing_config_file_raises(emulator: OciUsageEmulator, oci_key: OciKey, tmp_path: Path) -> None:
    p, calls = provider(emulator, oci_key, config_file=str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="not found"):
        p.fetch(WINDOW)
    assert calls.calls == [] and emulator.requests == []


def test_missing_profile_raises(emulator: OciUsageEmulator, oci_key: OciKey) -> None:
    p, _ = provider(emulator, oci_key, profile="NOPE")
    with pytest.raises(SourceError, match="profile 'NOPE' not found"):
        p.fetch(WINDOW)


def test_an_encrypted_key_works_and_its_passphrase_is_a_registered_secret(
    emulator: OciUsageEmulator, oci_key: OciKey, tmp_path: Path
) -> None:
    passphrase = "correct horse battery staple"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "encrypted.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(passphrase.encode()),
        )
    )
    config = tmp_path / "config"
    config.write_text(
        oci_key.config_file.read_text().replace(str(oci_key.config_file.parent / "api_key.pem"), str(key_file))
        + f"pass_phrase={passphrase}\n"
    )
    ctx = ProviderContext("oci")
    p = OciProvider(source(emulator, oci_key, config_file=str(config)), ctx)
    # signed with the decrypted key, which the emulator does not know: it checks signatures, and refuses this one
    with pytest.raises(SourceError, match="401 NotAuthenticated") as err:
        p.fetch(WINDOW)
    assert passphrase in ctx.secrets
    assert passphrase not in str(err.value)


# --------------------------------------------------------------------------- through the engine


def test_metrics_equal_the_dataset_then_keep_last_good_data_while_the_api_fails(
    emulator: OciUsageEmulator, oci_key: OciKey, tmp_path: Path
) -> None:
    from exporter.app import build_app
    from exporter.status import status_report

    raw_source = source(emulator, oci_key).model_dump(mode="json")
    cfg = parse_config({"cache_path": str(tmp_path / "cache.sqlite"), "sources": [raw_source]})
    app = build_app(cfg, now=lambda: NOW)
    try:
        app.refresh_all()
        text = app.exposition()
        mtd = series(text, "spend_cost_month_to_date_usd")
        want: dict[tuple[tuple[str, str], ...], Decimal] = defaultdict(Decimal)
        for r in emulator.dataset.rows("oci"):
            if r.day >= TODAY.replace(day=1):
                labels = {
                    "provider": "oci",
                    "account_id": r.account_id,
                    "service_name": r.service_name,
                    "team": r.team or "unallocated",
                    "model": "",
                }
                want[tuple(sorted(labels.items()))] += r.amount
        assert {k: Decimal(str(v)).quantize(CENT) for k, v in mtd.items()} == dict(want)
        up = series(text, "spend_exporter_source_up")
        assert up == {(("provider", "oci"), ("source", "oci")): 1.0}
        info = series(text, "spend_account_info")
        assert info == {(("account_id", TENANCY), ("account_name", "acme-tenancy"), ("provider", "oci")): 1.0}

        emulator.inject(Fault("503", times=-1))
        out = app.refresh_all()
        assert not out[0].ok and "503" in (out[0].error or "")
        text = app.exposition()
        assert series(text, "spend_exporter_source_up") == {(("provider", "oci"), ("source", "oci")): 0.0}
        assert series(text, "spend_cost_month_to_date_usd") == mtd

        emulator.clear_faults()
        assert app.refresh_all()[0].ok
        text = app.exposition()
        assert series(text, "spend_exporter_source_up") == {(("provider", "oci"), ("source", "oci")): 1.0}
        assert series(text, "spend_cost_month_to_date_usd") == mtd
        status = json.loads(json.dumps(status_report(app)))
        assert status["sources"][0]["last_error"] is None
    finally:
        app.close()


def test_unrated_and_blank_currency_items_are_counted_by_the_engine(
    emulator: OciUsageEmulator, oci_key: OciKey, tmp_path: Path
) -> None:
    from exporter.app import build_app
    from exporter.status import status_report

    emulator.null_amount_days = {dt.date(2024, 5, 19)}
    emulator.blank_currency_days = {dt.date(2024, 5, 18)}
    cfg = parse_config(
        {"cache_path": str(tmp_path / "cache.sqlite"), "sources": [source(emulator, oci_key).model_dump(mode="json")]}
    )
    app = build_app(cfg, now=lambda: NOW)
    try:
        app.refresh_all()
        skipped = status_report(app)["sources"][0]["records_skipped_last_refresh"]
        result = OciProvider(source(emulator, oci_key), ProviderContext("x")).fetch(WINDOW)
        n_nan = sum(1 for c in result.costs if math.isnan(c.amount))
        n_blank = sum(1 for c in result.costs if c.currency == "" and not math.isnan(c.amount))
        assert skipped == {"not_a_number": n_nan, "no_rate_BLANK": n_blank}
        assert n_nan > 0 and n_blank > 0
    finally:
        app.close()


# --------------------------------------------------------------------------- extra labels


def test_extra_labels_from_defined_tags_to_the_cent(emulator: OciUsageEmulator, oci_key: OciKey) -> None:
    """Defined tags (namespace.key): groupByTag takes one tag, so each value is a filtered request, split exactly;
    a key without a namespace is not read on OCI (rules only)."""
    calls = Calls()
    labels = [("environment", ["Ops.env", "Ops.environment"]), ("customer_id", ["Ops.customer"]), ("x", ["plain"])]
    ctx = ProviderContext("oci", on_call=calls, extra_labels=labels)
    result = OciProvider(source(emulator, oci_key), ctx).fetch(WINDOW)
    want: dict[tuple[dt.date, str, str | None, str, str], Decimal] = defaultdict(Decimal)
    for r in emulator.dataset.rows("oci"):
        if WINDOW.start <= r.day <= WINDOW.end:
            env, customer = r.extra.get("tag:environment", ""), r.extra.get("tag:customer", "")
            want[(r.day, r.service_name, r.team, env, customer)] += r.amount
    got: dict[tuple[dt.date, str, str | None, str, str], Decimal] = defaultdict(Decimal)
    for c in result.costs:
        d = dict(c.labels)
        assert "x" not in d
        got[(c.day, c.service_name, c.team_tag, d.get("environment", ""), d.get("customer_id", ""))] += Decimal(
            str(c.amount)
        )
    assert {k: v.quantize(CENT) for k, v in got.items()} == dict(want)
    # 3 requests for the values (env has none), then (2 + 1) x (2 + 1) for the cells
    assert calls.op_counts()["RequestSummarizedUsages"] >= 3 + 9

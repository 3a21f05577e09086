"""The audit trail: raw pages kept (``raw_retention``), ``raw list`` / ``raw show``, ``recompute``, pruning.

The real SDKs (openai, anthropic, boto3) talk to the emulators; ``recompute`` must restore the records
byte-identical from the kept pages, with no request in any emulator's log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import audit, cli
from exporter.app import build_app
from exporter.config import parse_config
from exporter.model import RawPage
from tests.conftest import Clock
from tests.emulators.ai_dataset import AIDataset, build_ai_dataset
from tests.emulators.anthropic_admin import AnthropicAdminEmulator
from tests.emulators.aws_ce import AwsCostExplorerEmulator
from tests.emulators.dataset import build_dataset
from tests.emulators.openai_admin import OpenAIAdminEmulator
from tests.helpers import use_static_aws_credentials

NOW = dt.datetime(2026, 11, 22, 9, 41, 7, tzinfo=dt.UTC)
OPENAI_KEY = "sk-admin-AUDITtestKEY-0123456789abcdefXYZ"
ANTHROPIC_KEY = "sk-ant-admin01-AUDITtestKEY-0123456789-ZZZ"
AWS_ACCESS = "AKIAAUDITTESTEXPORTER"
AWS_SECRET = "audit-only-secret-key-0123456789abcdefgh"
RECORD_TABLES = ("cost", "usage", "hourly", "accounts", "forecasts")
RAW_TABLES = ("raw_fetches", "raw_pages")


@pytest.fixture(scope="module")
def ai() -> AIDataset:
    return build_ai_dataset(NOW)


@pytest.fixture
def emulators(ai: AIDataset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("AUDIT_OPENAI_KEY", OPENAI_KEY)
    monkeypatch.setenv("AUDIT_ANTHROPIC_KEY", ANTHROPIC_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    use_static_aws_credentials(monkeypatch, tmp_path, AWS_ACCESS, AWS_SECRET, region="us-east-1")
    emus = {
        "openai": OpenAIAdminEmulator(ai, OPENAI_KEY),
        "anthropic": AnthropicAdminEmulator(ai, ANTHROPIC_KEY),
        "aws": AwsCostExplorerEmulator(build_dataset(NOW.date()), page_size=100, access_key_id=AWS_ACCESS),
    }
    for e in emus.values():
        e.start()
    try:
        yield emus
    finally:
        for e in emus.values():
            e.stop()


def settings(tmp_path: Path, emus: dict[str, Any], ai: AIDataset, retention: str = "90d") -> dict[str, Any]:
    return {
        "cache_path": str(tmp_path / "cache.sqlite"),
        "attribution": {"rules": ai.attribution_rules()},
        "sources": [
            {
                "name": "openai",
                "type": "openai",
                "admin_key_env": "AUDIT_OPENAI_KEY",
                "base_url": emus["openai"].url + "/v1",
                "usage_endpoints": ["completions", "embeddings"],
                "request_timeout": "5s",
                "raw_retention": retention,
            },
            {
                "name": "anthropic",
                "type": "anthropic",
                "admin_key_env": "AUDIT_ANTHROPIC_KEY",
                "base_url": emus["anthropic"].url,
                "request_timeout": "5s",
                "raw_retention": retention,
            },
            {
                "name": "aws",
                "type": "aws",
                "endpoint_url": emus["aws"].url,
                "group_by_account": True,
                "timeout": "10s",
                "raw_retention": retention,
            },
        ],
    }


def write_config(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "spend-exporter.yml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def table_rows(cache: str, tables: tuple[str, ...]) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(cache)
    try:
        return {
            t: conn.execute(
                f"SELECT * FROM {t} ORDER BY {', '.join(str(i + 1) for i in range(_ncols(conn, t)))}"
            ).fetchall()
            for t in tables
        }
    finally:
        conn.close()


def _ncols(conn: sqlite3.Connection, table: str) -> int:
    return len(conn.execute(f"PRAGMA table_info({table})").fetchall())


def requests_made(emus: dict[str, Any]) -> dict[str, int]:
    return {name: len(e.requests) for name, e in emus.items()}


# --------------------------------------------------------------------------- recompute


LABELS = [  # attribution.labels: Cost Explorer's cells are filtered queries, kept page by page and split again
    {"name": "environment", "tag_keys": ["env", "environment"]},
    {"name": "customer_id", "tag_keys": ["customer"]},
]
OCI_LABELS = [  # OCI reads defined tags, Namespace.key
    {"name": "environment", "tag_keys": ["Ops.env", "Ops.environment"]},
    {"name": "customer_id", "tag_keys": ["Ops.customer"]},
]


@pytest.mark.parametrize("labels", [False, True], ids=["team", "extra-labels"])
def test_recompute_restores_every_record_byte_identical_with_no_api_call(
    emulators: dict[str, Any], ai: AIDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str], labels: bool
) -> None:
    data = settings(tmp_path, emulators, ai)
    if labels:
        data["attribution"]["labels"] = LABELS
        data["sources"][2]["max_api_cost_usd_per_day"] = 10  # a request per label cell, two accounts, two refreshes
    cfg = parse_config(data, env={})
    clock = Clock(NOW)
    app = build_app(cfg, now=clock)
    try:
        assert all(o.ok for o in app.refresh_all())
        clock.advance(hours=6)  # a second refresh: recompute replays both, in order, as the refreshes wrote them
        assert all(o.ok for o in app.refresh_all())
    finally:
        app.close()
    cache = data["cache_path"]
    before = table_rows(cache, RECORD_TABLES)
    assert all(before[t] for t in RECORD_TABLES), {t: len(r) for t, r in before.items()}
    kept = table_rows(cache, RAW_TABLES)
    assert len(kept["raw_fetches"]) == 6  # two refreshes of three sources

    conn = sqlite3.connect(cache)
    with conn:
        for t in RECORD_TABLES:
            conn.execute(f"DELETE FROM {t}")
    conn.close()
    assert not any(table_rows(cache, RECORD_TABLES).values())

    calls = requests_made(emulators)
    assert cli.main(["recompute", "--config.file", write_config(tmp_path, data)]) == 0
    out = capsys.readouterr().out
    assert "openai: rebuilt from its pages" in out and "aws: rebuilt from its pages" in out
    assert requests_made(emulators) == calls  # not one request to any API
    assert table_rows(cache, RECORD_TABLES) == before
    assert table_rows(cache, RAW_TABLES) == kept
    if labels:  # the split reached the records: values of both labels, from the pages alone
        assert {"prod", "staging"} <= {json.loads(r[8])[0] for r in before["cost"] if r[8]}
        assert {json.loads(r[8])[1] for r in before["cost"] if r[8]} - {""}


def test_recompute_applies_the_attribution_rules_of_today(
    emulators: dict[str, Any], ai: AIDataset, tmp_path: Path
) -> None:
    data = settings(tmp_path, emulators, ai)
    app = build_app(parse_config(data, env={}), now=lambda: NOW)
    try:
        assert all(o.ok for o in app.refresh_all())
    finally:
        app.close()
    project = ai.accounts["openai"][0].account_id
    data["attribution"] = {"rules": [{"match": {"provider": "openai", "account_id": project}, "team": "audit-team"}]}
    calls = requests_made(emulators)
    assert cli.main(["recompute", "--config.file", write_config(tmp_path, data)]) == 0
    assert requests_made(emulators) == calls
    conn = sqlite3.connect(data["cache_path"])
    teams = {r[0] for r in conn.execute("SELECT DISTINCT team FROM cost WHERE account_id=?", (project,))}
    conn.close()
    assert teams == {"audit-team"}


# --------------------------------------------------------------------------- secrets


def test_no_secret_is_kept_anywhere(
    ai: AIDataset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The key pasted into a project's name, and the key in a URL's password: neither reaches the cache."""
    first = ai.accounts["openai"][0]
    pasted = dataclasses.replace(first, name=f"prod {OPENAI_KEY} (do not share)")
    leaky = dataclasses.replace(ai, accounts={**ai.accounts, "openai": [pasted, *ai.accounts["openai"][1:]]})
    monkeypatch.setenv("AUDIT_OPENAI_KEY", OPENAI_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with OpenAIAdminEmulator(leaky, OPENAI_KEY) as emu:
        data = {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "sources": [
                {
                    "name": "openai",
                    "type": "openai",
                    "admin_key_env": "AUDIT_OPENAI_KEY",
                    "base_url": emu.url + "/v1",
                    "request_timeout": "5s",
                    "raw_retention": "90d",
                }
            ],
        }
        app = build_app(parse_config(data, env={}), now=lambda: NOW)
        try:
            assert all(o.ok for o in app.refresh_all())
        finally:
            app.close()
        assert (
            cli.main(
                [
                    "raw",
                    "show",
                    "openai",
                    "--day",
                    NOW.date().isoformat(),
                    "--config.file",
                    write_config(tmp_path, data),
                ]
            )
            == 0
        )
    shown = capsys.readouterr().out
    assert "do not share" in shown and audit.REDACTED in shown  # the page is there, the key is not
    assert OPENAI_KEY not in shown
    conn = sqlite3.connect(data["cache_path"])
    blobs: list[bytes] = []
    for table in RAW_TABLES:
        for row in conn.execute(f"SELECT * FROM {table}"):
            for v in row:
                if isinstance(v, bytes):
                    blobs += [v, zlib.decompress(v)]
                else:
                    blobs.append(str(v).encode())
    conn.close()
    assert blobs
    assert not [b for b in blobs if OPENAI_KEY.encode() in b]
    assert not [b for b in blobs if b"Bearer" in b or b"authorization" in b.lower()]


def test_requests_lose_their_credentials() -> None:
    secret = "pasted-secret-0123456789"
    url = (
        f"https://user:{secret}@bucket.s3.amazonaws.com/exports/a.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential=AKIA%2F20261122&X-Amz-Signature=abcdef&X-Amz-Security-Token=tok&sig=xyz&api_key=k1"
        f"&page=2&limit=31&note={secret}"
    )
    got = audit.strip_request(
        {
            "method": "GET",
            "url": url,
            "headers": {"Authorization": "Bearer x"},
            "params": {"client_secret": "s", "Key": "team"},
        },
        lambda text: text.replace(secret, audit.REDACTED),
    )
    text = json.dumps(got)
    for gone in (secret, "abcdef", "AKIA", "tok", "xyz", "k1", "Bearer", "headers", "user:"):
        assert gone not in text, gone
    assert "page=2" in got["url"] and "limit=31" in got["url"] and "X-Amz-Algorithm=AWS4-HMAC-SHA256" in got["url"]
    assert got["params"] == {"client_secret": audit.REDACTED, "Key": "team"}  # Cost Explorer's Key is data


def test_a_page_comes_back_as_it_was_kept() -> None:
    page = RawPage(
        "costs",
        {"method": "GET", "url": "https://api.example/v1/costs?limit=2"},
        {"data": [1.5, "é"]},
        {"account": "1"},
    )
    operation, request, meta, size, body = audit.encode_page(page, lambda t: t)
    assert size == len(json.dumps(page.body, ensure_ascii=False, separators=(",", ":")).encode())
    assert audit.decode_page(operation, request, meta, body) == page


# --------------------------------------------------------------------------- pruning, list and show


def test_pages_older_than_the_retention_are_pruned_at_refresh(
    emulators: dict[str, Any], ai: AIDataset, tmp_path: Path
) -> None:
    data = settings(tmp_path, emulators, ai, retention="1d")
    data["sources"] = data["sources"][:1]
    clock = Clock(NOW)
    times = []
    for hours in (0, 12, 30):  # the first fetch is 30 h old at the third refresh: more than 1d
        clock.set(NOW + dt.timedelta(hours=hours))
        app = build_app(parse_config(data, env={}), now=clock)
        try:
            assert all(o.ok for o in app.refresh_all())
        finally:
            app.close()
        times.append(clock().timestamp())
        conn = sqlite3.connect(data["cache_path"])
        held = [r[0] for r in conn.execute("SELECT fetched_at FROM raw_fetches ORDER BY fetched_at")]
        orphans = conn.execute("SELECT COUNT(*) FROM raw_pages WHERE fetch_id NOT IN (SELECT id FROM raw_fetches)")
        assert orphans.fetchone()[0] == 0
        conn.close()
        assert held == times[-2:] if hours == 30 else times
    # off: the next refresh keeps nothing and drops what was kept
    data["sources"][0]["raw_retention"] = "0"
    clock.advance(hours=1)
    app = build_app(parse_config(data, env={}), now=clock)
    try:
        assert all(o.ok for o in app.refresh_all())
    finally:
        app.close()
    assert not any(table_rows(data["cache_path"], RAW_TABLES).values())


def test_raw_list_and_show(
    emulators: dict[str, Any], ai: AIDataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = settings(tmp_path, emulators, ai)
    app = build_app(parse_config(data, env={}), now=lambda: NOW)
    try:
        assert all(o.ok for o in app.refresh_all())
    finally:
        app.close()
    path = write_config(tmp_path, data)
    conn = sqlite3.connect(data["cache_path"])
    pages = {
        name: n
        for name, n in conn.execute(
            "SELECT f.source, COUNT(*) FROM raw_pages p JOIN raw_fetches f ON f.id = p.fetch_id GROUP BY f.source"
        )
    }
    conn.close()

    assert cli.main(["raw", "list", "aws", "--config.file", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:6] == ["TIME", "FETCH", "PAGE", "OPERATION", "BYTES", "STORED"]
    assert len(lines) == 1 + pages["aws"]
    assert any("POST ce:GetCostAndUsage" in line and '"Granularity":"DAILY"' in line for line in lines)
    assert all(line.startswith("2026-11-22T09:41:07Z") for line in lines[1:])

    assert cli.main(["raw", "list", "openai", "--config.file", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(f"GET {emulators['openai'].url}/v1/organization/costs?" in line for line in lines)

    assert cli.main(["raw", "show", "anthropic", "--day", "2026-11-22", "--config.file", path]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(shown) == pages["anthropic"]
    ops = {p["operation"] for p in shown}
    assert {"workspaces", "cost_report", "usage_report_messages", "usage_report_messages_hourly"} <= ops
    cost_page = next(p for p in shown if p["operation"] == "cost_report")
    assert cost_page["request"]["url"] == emulators["anthropic"].url + "/v1/organizations/cost_report"
    assert cost_page["request"]["params"]["bucket_width"] == "1d"
    assert cost_page["window"]["now"].startswith("2026-11-22T09:41:07")
    assert isinstance(cost_page["body"]["data"], list) and cost_page["bytes"] > 0

    assert cli.main(["raw", "show", "anthropic", "--day", "2026-11-21", "--config.file", path]) == 0
    assert capsys.readouterr().out == ""
    assert cli.main(["raw", "show", "anthropic", "--day", "22/11/2026", "--config.file", path]) == 2
    assert "--day" in capsys.readouterr().err
    assert cli.main(["raw", "list", "nosuch", "--config.file", path]) == 2
    assert "nosuch" in capsys.readouterr().err


def test_nothing_is_kept_when_retention_is_off(emulators: dict[str, Any], ai: AIDataset, tmp_path: Path) -> None:
    data = settings(tmp_path, emulators, ai, retention="0")
    data["sources"] = data["sources"][:1]
    cfg = parse_config(data, env={})
    assert cfg.sources[0].raw_retention == 0
    app = build_app(cfg, now=lambda: NOW)
    try:
        assert all(o.ok for o in app.refresh_all())
        assert app.store.has_costs("openai")
    finally:
        app.close()
    assert not any(table_rows(data["cache_path"], RAW_TABLES).values())


def refresh_then_recompute(
    tmp_path: Path, data: dict[str, Any], emu: Any, labels: bool = False
) -> tuple[list[str], dict[str, Any]]:
    """One refresh at NOW, the records deleted, ``recompute``: the operations kept; the records before (asserted
    equal to those after, with no request to ``emu``). ``labels``: with ``attribution.labels`` (``LABELS``), whose
    values must reach the records."""
    if labels:
        data["attribution"] = {"labels": OCI_LABELS if data["sources"][0]["type"] == "oci" else LABELS}
    app = build_app(parse_config(data, env={}), now=lambda: NOW)
    try:
        assert all(o.ok for o in app.refresh_all())
    finally:
        app.close()
    before = table_rows(data["cache_path"], RECORD_TABLES)
    assert before["cost"] and before["accounts"]
    conn = sqlite3.connect(data["cache_path"])
    ops = [r[0] for r in conn.execute("SELECT operation FROM raw_pages ORDER BY fetch_id, seq")]
    with conn:
        for t in RECORD_TABLES:
            conn.execute(f"DELETE FROM {t}")
    conn.close()
    calls = len(emu.requests)
    assert cli.main(["recompute", "--config.file", write_config(tmp_path, data)]) == 0
    assert len(emu.requests) == calls
    assert table_rows(data["cache_path"], RECORD_TABLES) == before
    if labels:  # the split reached the records: values of both labels, from the pages alone
        assert {json.loads(r[8])[0] for r in before["cost"] if r[8]} - {""}
        assert {json.loads(r[8])[1] for r in before["cost"] if r[8]} - {""}
    return ops, before


@pytest.mark.parametrize("labels", [False, True], ids=["team", "extra-labels"])
def test_recompute_from_oci_usage_pages(tmp_path: Path, capsys: pytest.CaptureFixture[str], labels: bool) -> None:
    """OCI: each RequestSummarizedUsages page as the SDK's to_dict writes its model, parsed again."""
    from tests.emulators.oci_usage import OciUsageEmulator
    from tests.helpers import write_oci_key

    tenancy = "ocid1.tenancy.oc1..aaaatest"
    config_file, _pem, public = write_oci_key(tmp_path / "oci", tenancy)
    with OciUsageEmulator(build_dataset(NOW.date()), public_key_pem=public) as emu:
        emu.page_size = 50
        data = {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "sources": [
                {
                    "name": "oci",
                    "type": "oci",
                    "tenancy_id": tenancy,
                    "config_file": str(config_file),
                    "team_tag": {"namespace": "Ops", "key": "team"},
                    "service_endpoint": emu.url,
                    "timeout": "10s",
                    "raw_retention": "30d",
                }
            ],
        }
        ops, before = refresh_then_recompute(tmp_path, data, emu, labels)
    assert len(ops) > 1 and set(ops) == {"RequestSummarizedUsages"}
    assert {r[4] for r in before["cost"]} - {"unallocated"}  # team tags came through the pages
    assert "oci: rebuilt from its pages" in capsys.readouterr().out


@pytest.mark.parametrize("labels", [False, True], ids=["team", "extra-labels"])
def test_recompute_from_cost_management_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], labels: bool
) -> None:
    """Azure: each query.usage / forecast.usage response's JSON (the SDK's cls hook), parsed again; the ARM
    token the requests carried is nowhere in the cache."""
    from tests import helpers
    from tests.emulators.azure_cost import AzureCostEmulator

    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.audit-only-arm-token"
    helpers.use_az_stub(monkeypatch, tmp_path, token)
    scopes = [
        "/subscriptions/00000000-0000-0000-0000-000000000001",
        "/subscriptions/00000000-0000-0000-0000-000000000002",
    ]
    with AzureCostEmulator(build_dataset(NOW.date()), token=token, page_size=100) as emu:
        data = {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "sources": [
                {
                    "name": "azure",
                    "type": "azure",
                    "base_url": emu.url,
                    "credential": "cli",
                    "scopes": scopes,
                    "timeout": "10s",
                    "raw_retention": "30d",
                }
            ],
        }
        ops, before = refresh_then_recompute(tmp_path, data, emu, labels)
    assert {"query.usage", "forecast.usage"} <= set(ops) and len(ops) > len(scopes) * 2
    assert before["forecasts"]
    assert "azure: rebuilt from its pages" in capsys.readouterr().out
    conn = sqlite3.connect(data["cache_path"])
    kept = [v for t in RAW_TABLES for row in conn.execute(f"SELECT * FROM {t}") for v in row]
    conn.close()
    texts = [zlib.decompress(v) if isinstance(v, bytes) else str(v).encode() for v in kept]
    assert texts and not [t for t in texts if token.encode() in t or b"Bearer" in t]


@pytest.mark.parametrize("labels", [False, True], ids=["team", "extra-labels"])
def test_recompute_from_bigquery_result_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str], labels: bool) -> None:
    """The GCP billing export: the query and its result rows are kept, page by page, and parsed again."""
    from tests.emulators.bigquery import BigQueryEmulator

    with BigQueryEmulator(build_dataset(NOW.date()), now=NOW, page_size=200) as emu:
        data = {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "sources": [
                {
                    "name": "gcp",
                    "type": "gcp_bigquery",
                    "table": emu.table,
                    "api_endpoint": emu.url,
                    "credentials": "anonymous",
                    "timeout": "10s",
                    "raw_retention": "30d",
                }
            ],
        }
        ops, _ = refresh_then_recompute(tmp_path, data, emu, labels)
    assert "gcp: rebuilt from its pages" in capsys.readouterr().out
    conn = sqlite3.connect(data["cache_path"])
    first = json.loads(zlib.decompress(conn.execute("SELECT body FROM raw_pages WHERE seq=0").fetchone()[0]))
    request = json.loads(conn.execute("SELECT request FROM raw_pages WHERE seq=0").fetchone()[0])
    conn.close()
    assert ops[0] == "jobs.query" and len(ops) > 1 and set(ops[1:]) == {"jobs.getQueryResults"}
    assert dt.date.fromisoformat(first["rows"][0][first["fields"].index("day")])
    assert "gcp_billing_export" in request["params"]["query"]


def test_focus_files_are_kept_as_their_names_sizes_and_hashes(
    tmp_path: Path, focus: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """FOCUS: not a copy of the user's export, but which file, how big, when changed and its SHA-256."""
    import hashlib

    day = NOW.date() - dt.timedelta(days=2)
    files = [
        focus.write(tmp_path / "exports" / "a.csv", [focus.daily(day, 12.5, ServiceName="Amazon S3")]),
        focus.write(tmp_path / "exports" / "b.csv", [focus.daily(day, 7.25, ServiceName="Amazon EC2")]),
    ]
    data = {
        "cache_path": str(tmp_path / "cache.sqlite"),
        "sources": [
            {"name": "focus", "type": "focus", "paths": [str(tmp_path / "exports" / "*.csv")], "raw_retention": "7d"}
        ],
    }
    app = build_app(parse_config(data, env={}), now=lambda: NOW)
    try:
        assert all(o.ok for o in app.refresh_all())
    finally:
        app.close()
    path = write_config(tmp_path, data)
    assert cli.main(["raw", "show", "focus", "--day", NOW.date().isoformat(), "--config.file", path]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["body"] for p in shown] == [
        {
            "path": str(f),
            "bytes": f.stat().st_size,
            "modified": dt.datetime.fromtimestamp(f.stat().st_mtime, dt.UTC).isoformat(),
            "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
        }
        for f in files
    ]
    assert [p["request"] for p in shown] == [{"method": "READ", "path": str(f)} for f in files]
    before = table_rows(data["cache_path"], RECORD_TABLES)
    assert cli.main(["recompute", "--config.file", path]) == 0
    assert "focus: its pages say what was read" in capsys.readouterr().out
    assert table_rows(data["cache_path"], RECORD_TABLES) == before

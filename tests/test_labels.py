"""Extra labels (``attribution.labels``): from the providers' tags, then rules, on every spend_cost_* family.

The FOCUS file path here; the AWS and Azure emulators in tests/providers/. Sums are checked to the cent.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

from exporter.app import App, _source_hash
from exporter.attribution import decode_labels, encode_labels
from exporter.cacheschema import SCHEMA_VERSION
from exporter.config import parse_config
from exporter.store import Store
from tests.helpers import assert_to_the_cent, family_samples

NOW = dt.datetime(2025, 3, 15, 10, 30, tzinfo=dt.UTC)
LABELS = [
    {"name": "environment", "tag_keys": ["env", "environment"]},
    {"name": "customer_id", "tag_keys": ["customer", "customer_id"]},
]
COST_FAMILIES = (
    "spend_cost_month_to_date_usd",
    "spend_cost_daily_usd",
    "spend_cost_daily_baseline_usd",
    "spend_cost_daily_baseline_stddev_usd",
    "spend_cost_previous_month_usd",
    "spend_cost_forecast_month_end_usd",
)


def _rows(focus: Any) -> list[dict[str, Any]]:
    rows = []
    for i in range(1, 15):  # March 1st to 14th
        day = dt.date(2025, 3, i)
        rows += [
            focus.daily(day, "10.01", ServiceName="EC2", Tags=json.dumps({"team": "search", "env": "prod"})),
            focus.daily(day, "2.50", ServiceName="EC2", Tags=json.dumps({"team": "search", "Environment": "staging"})),
            focus.daily(day, "1.25", ServiceName="S3", Tags=json.dumps({"team": "web", "customer": "acme"})),
            focus.daily(day, "0.33", ServiceName="Lambda", SubAccountId="222222222222", Tags="{}"),
        ]
    rows.append(focus.daily(dt.date(2025, 2, 20), "7.07", ServiceName="EC2", Tags=json.dumps({"env": "prod"})))
    return rows


def _config(tmp_path: Path, labels: list[dict[str, Any]] | None = LABELS, **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "cache_path": str(tmp_path / "cache.sqlite"),
        "sources": [{"name": "files", "type": "focus", "paths": [str(tmp_path / "*.csv")]}],
        **extra,
    }
    if labels is not None:
        raw.setdefault("attribution", {})["labels"] = labels
    return raw


def _mtd(text: str) -> dict[tuple[str, ...], Decimal]:
    got: dict[tuple[str, ...], Decimal] = {}
    for lab, v in family_samples(text, "spend_cost_month_to_date_usd"):
        key = (lab["service_name"], lab["team"], lab.get("environment", "-"), lab.get("customer_id", "-"))
        got[key] = got.get(key, Decimal(0)) + Decimal(str(v))
    return got


def test_focus_tags_and_rules_reach_every_cost_family_to_the_cent(tmp_path: Path, focus: Any) -> None:
    focus.write(tmp_path / "a.csv", _rows(focus))
    rules = [{"match": {"account_id": "222222222222"}, "team": "ops", "labels": {"environment": "dev"}}]
    app = App(parse_config(_config(tmp_path, attribution={"rules": rules})), now=lambda: NOW)
    assert all(o.ok for o in app.refresh_all())
    text = app.snapshot.text.decode()
    assert_to_the_cent(
        _mtd(text),
        {
            ("EC2", "search", "prod", ""): Decimal("140.14"),
            ("EC2", "search", "staging", ""): Decimal("35.00"),
            ("S3", "web", "", "acme"): Decimal("17.50"),
            ("Lambda", "ops", "dev", ""): Decimal("4.62"),  # the rule: untagged, so its team and its environment
            ("EC2", "unallocated", "prod", ""): Decimal("0"),  # February only
        },
    )
    for fam in COST_FAMILIES:
        samples = family_samples(text, fam)
        assert samples, fam
        assert all("environment" in lab and "customer_id" in lab for lab, _ in samples), fam
    prev = {(lab["environment"], lab["team"]): v for lab, v in family_samples(text, "spend_cost_previous_month_usd")}
    assert prev == {("prod", "unallocated"): 7.07}
    # the AI families keep their labels
    assert "environment" not in text.split("spend_ai_tokens_month_to_date", 1)[1].split("\n", 2)[1]


def test_tags_win_over_rules_and_a_label_no_rule_sets_is_empty(tmp_path: Path, focus: Any) -> None:
    focus.write(tmp_path / "a.csv", _rows(focus))
    rules = [
        {"match": {"service_name": "EC2"}, "team": "x", "labels": {"environment": "from-rule"}},
        {"match": {"service_name": ["EC2", "S3"]}, "team": "y", "labels": {"customer_id": "shared"}},
    ]
    app = App(parse_config(_config(tmp_path, attribution={"rules": rules})), now=lambda: NOW)
    assert all(o.ok for o in app.refresh_all())
    got = {k for k in _mtd(app.snapshot.text.decode())}
    assert ("EC2", "search", "prod", "shared") in got  # tag env wins; the second rule gives the customer
    assert ("S3", "web", "", "acme") in got  # no rule sets S3's environment
    assert ("Lambda", "unallocated", "", "") in got


def test_no_extra_labels_keeps_the_families_as_they_were(tmp_path: Path, focus: Any) -> None:
    focus.write(tmp_path / "a.csv", _rows(focus))
    app = App(parse_config(_config(tmp_path, labels=None)), now=lambda: NOW)
    assert all(o.ok for o in app.refresh_all())
    samples = family_samples(app.snapshot.text.decode(), "spend_cost_month_to_date_usd")
    assert {tuple(lab) for lab, _ in samples} == {("provider", "account_id", "service_name", "team", "model")}
    ec2 = sum(Decimal(str(v)) for lab, v in samples if lab["service_name"] == "EC2" and lab["team"] == "search")
    assert ec2 == Decimal("175.14")


def test_the_cap_holds_with_extra_labels(tmp_path: Path, focus: Any) -> None:
    rows = [
        focus.daily(dt.date(2025, 3, 3), f"{i}.01", ServiceName="EC2", Tags=json.dumps({"customer": f"c{i:02d}"}))
        for i in range(1, 21)
    ]
    focus.write(tmp_path / "a.csv", rows)
    app = App(parse_config(_config(tmp_path, max_series_per_source=5)), now=lambda: NOW)
    assert all(o.ok for o in app.refresh_all())
    text = app.snapshot.text.decode()
    samples = family_samples(text, "spend_cost_month_to_date_usd")
    assert len(samples) == 5
    other = [lab for lab, _ in samples if lab["customer_id"] == "__other__"]
    assert other and other[0]["environment"] == "__other__"
    total = sum(Decimal(str(v)) for _, v in samples)
    assert total == sum(Decimal(f"{i}.01") for i in range(1, 21))
    assert 'spend_exporter_series_overflow{source="files"} 16' in text


def test_changing_the_labels_fetches_again() -> None:
    base = {"sources": [{"name": "f", "type": "focus", "paths": ["x/*.csv"]}]}
    plain = parse_config(base)
    one = parse_config({**base, "attribution": {"labels": LABELS[:1]}})
    keys = parse_config({**base, "attribution": {"labels": [{"name": "environment", "tag_keys": ["stage"]}]}})
    ruled = parse_config(
        {
            **base,
            "attribution": {
                "labels": LABELS[:1],
                "rules": [{"match": {"provider": "aws"}, "team": "t", "labels": {"environment": "prod"}}],
            },
        }
    )
    hashes = [_source_hash(c.sources[0], c) for c in (plain, one, keys, ruled)]
    assert len(set(hashes)) == 4
    assert hashes[0] == _source_hash(plain.sources[0])  # none configured: the hash of before, no re-fetch


def test_encoding_round_trips() -> None:
    for values in (["prod", ""], ['a "quoted", value', "ü"], ["x"]):
        assert decode_labels(encode_labels(values), len(values)) == tuple(values)
    assert encode_labels([]) == "" and decode_labels("", 2) == ("", "")
    assert decode_labels('["a","b","c"]', 2) == ("a", "b") and decode_labels("not json", 1) == ("",)


def test_a_version_2_cache_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '2');
        CREATE TABLE cost (
            source TEXT NOT NULL, day TEXT NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL,
            service_name TEXT NOT NULL, team TEXT NOT NULL, model TEXT NOT NULL, cost_usd REAL NOT NULL
        );
        CREATE INDEX cost_series ON cost (source, provider, account_id, service_name, team, model, day, cost_usd);
        INSERT INTO cost VALUES ('s', '2025-03-01', 'aws', '1', 'EC2', 'search', '', 12.34);
        -- the history's 70-day copy, as version 2 had it since issue 15
        INSERT INTO meta VALUES ('recent_from', '2025-02-01');
        CREATE TABLE cost_recent (
            source TEXT NOT NULL, day TEXT NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL,
            service_name TEXT NOT NULL, team TEXT NOT NULL, model TEXT NOT NULL, cost_usd REAL NOT NULL
        );
        CREATE INDEX cost_recent_series
            ON cost_recent (source, provider, account_id, service_name, team, model, day, cost_usd);
        INSERT INTO cost_recent VALUES ('s', '2025-03-01', 'aws', '1', 'EC2', 'search', '', 12.34);
        """
    )
    conn.commit()
    conn.close()
    store = Store(path)
    assert store.query("SELECT value FROM meta WHERE key='schema_version'") == [(str(SCHEMA_VERSION),)]
    for table in ("cost", "cost_recent"):
        assert store.query(f"SELECT cost_usd, labels FROM {table}") == [(12.34, "")]
        index = store.query(f"SELECT sql FROM sqlite_master WHERE name='{table}_series'")[0][0]
        assert "model, labels, day" in index
    assert store.query("SELECT value FROM meta WHERE key='recent_from'") == [("2025-02-01",)]
    store.close()


def test_budgets_match_extra_labels(tmp_path: Path, focus: Any) -> None:
    focus.write(tmp_path / "a.csv", _rows(focus))
    budgets = [
        {"name": "staging", "amount_usd": 100, "match": {"environment": "staging"}},
        {"name": "acme", "amount_usd": 100, "match": {"customer_id": ["acme", "other"], "service_name": "S3"}},
        {"name": "untagged", "amount_usd": 100, "match": {"environment": "", "customer_id": ""}},
    ]
    app = App(parse_config(_config(tmp_path, budgets=budgets)), now=lambda: NOW)
    assert all(o.ok for o in app.refresh_all())
    spent = {lab["budget"]: v for lab, v in family_samples(app.snapshot.text.decode(), "spend_budget_spent_usd")}
    assert spent == {"staging": 35.0, "acme": 17.5, "untagged": 4.62}


def test_a_pool_may_match_an_extra_label_alone(tmp_path: Path, focus: Any) -> None:
    """``allocation.shared[].match: {environment: staging}``: the staging cost ($2.50 a day of EC2, March 1-14:
    $35.00) is the pool, split evenly between search and web to the cent; an unknown extra key is a config error."""
    focus.write(tmp_path / "a.csv", _rows(focus))
    pool = {"name": "staging", "match": {"environment": "staging"}, "split": "even", "to_teams": ["search", "web"]}
    app = App(parse_config(_config(tmp_path, allocation={"shared": [pool]})), now=lambda: NOW)
    assert all(o.ok for o in app.refresh_all())
    shares = {
        lab["team"]: Decimal(str(v))
        for lab, v in family_samples(app.snapshot.text.decode(), "spend_cost_shared_month_to_date_usd")
    }
    assert shares == {"search": Decimal("17.50"), "web": Decimal("17.50")}
    app.close()
    bad = {**pool, "match": {"stage": "staging"}}
    try:
        parse_config(_config(tmp_path, allocation={"shared": [bad]}))
    except Exception as e:  # ConfigError: every problem, each naming its key
        assert "allocation.shared[0].match.stage: unknown key" in str(e)
    else:
        raise AssertionError("an unknown match key was accepted")

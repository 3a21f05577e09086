"""The SQLite cache: restart without refetch, corrupted files, restatement and final days.

The source is a FOCUS source over CSV files written by the test: the real provider, reading real
files, so "no refetch" is proven by the provider's own request counter and by files that vanish.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from exporter.app import App, build_app
from exporter.cacheschema import SCHEMA_VERSION
from exporter.cli import assemble
from exporter.config import parse_config
from exporter.status import status_report
from exporter.store import CostWindows, Replacement, SourceState, Store
from tests.helpers import series

DAY = dt.timedelta(days=1)


def value(app: App, family: str, **labels: str) -> float | None:
    for key, v in series(app.exposition(), family).items():
        d = dict(key)
        if all(d.get(k) == want for k, want in labels.items()):
            return v
    return None


def reads(app: App, source: str = "focus") -> int:
    """How many times the FOCUS provider read its files (successful or not)."""
    return sum(n for s, op, _st, n, _c in app.store.api_totals() if s == source and op == "read_files")


def make_config(tmp_path: Path, **source: Any) -> Any:
    return parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "sources": [
                {
                    "name": "focus",
                    "type": "focus",
                    "paths": [str(tmp_path / "exports" / "*.csv"), str(tmp_path / "exports" / "*.parquet")],
                    "interval": "1h",
                    "jitter": 0,
                    **source,
                }
            ],
        }
    )


def history(today: dt.date, focus: Any, first: dt.date, cost: float = 10.0, **cols: Any) -> list[dict[str, Any]]:
    rows = []
    d = first
    while d <= today:
        rows.append(focus.daily(d, cost, ServiceName="Amazon EC2", **cols))
        d += DAY
    return rows


def test_restart_within_interval_makes_no_call(tmp_path: Path, clock: Any, focus: Any) -> None:
    today = clock().date()
    csv = focus.write(tmp_path / "exports" / "a.csv", history(today, focus, dt.date(2025, 2, 1)))
    cfg = make_config(tmp_path)
    app, scheduler = assemble(cfg, now=clock)
    assert scheduler.run_pending() == ["focus"]
    assert reads(app) == 1
    mtd = value(app, "spend_cost_month_to_date_usd", service_name="Amazon EC2")
    assert mtd == pytest.approx(15 * 10.0)  # March 1..15
    status = status_report(app)["sources"][0]
    app.close()

    # the files are gone: any read would fail and mark the source down
    csv.unlink()
    clock.advance(minutes=50)
    app, scheduler = assemble(cfg, now=clock)
    try:
        assert app.ready(), "a warm cache is ready at once"
        assert scheduler.run_pending() == []
        assert reads(app) == 1
        assert value(app, "spend_cost_month_to_date_usd", service_name="Amazon EC2") == mtd
        assert value(app, "spend_exporter_source_up", source="focus") == 1.0
        assert value(app, "spend_exporter_source_last_success_timestamp_seconds", source="focus") == (
            dt.datetime(2025, 3, 15, 10, 30, tzinfo=dt.UTC).timestamp()
        )
        again = status_report(app)["sources"][0]
        assert again["last_success"] == status["last_success"]
        assert again["next_refresh"] == status["next_refresh"] == "2025-03-15T11:30:00Z"
        # once the interval has passed the source is due again: it fails (no files), and says so
        clock.advance(minutes=10)
        assert scheduler.run_pending() == ["focus"]
        assert value(app, "spend_exporter_source_up", source="focus") == 0.0
        assert "no files match" in status_report(app)["sources"][0]["last_error"]
        assert value(app, "spend_cost_month_to_date_usd", service_name="Amazon EC2") == mtd
    finally:
        app.close()


def test_changed_source_settings_refetch_on_restart(tmp_path: Path, clock: Any, focus: Any) -> None:
    today = clock().date()
    focus.write(tmp_path / "exports" / "a.csv", history(today, focus, dt.date(2025, 2, 1), EffectiveCost=4.0))
    app = build_app(make_config(tmp_path), now=clock)
    app.refresh_all()
    assert value(app, "spend_cost_daily_usd") == 10.0
    app.close()
    clock.advance(minutes=5)
    app, scheduler = assemble(make_config(tmp_path, cost_column="EffectiveCost"), now=clock)
    try:
        # the old figures were for another cost column: not served, and fetched again at once
        assert series(app.exposition(), "spend_cost_daily_usd") == {}
        assert scheduler.run_pending() == ["focus"]
        assert value(app, "spend_cost_daily_usd") == 4.0
        # an interval change alone is not a different data set
    finally:
        app.close()
    app, scheduler = assemble(make_config(tmp_path, cost_column="EffectiveCost", interval="2h"), now=clock)
    try:
        assert scheduler.run_pending() == []
        assert value(app, "spend_cost_daily_usd") == 4.0
    finally:
        app.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated_header", "zeroed_pages"])
def test_corrupted_cache_is_moved_aside_and_rebuilt(
    tmp_path: Path, clock: Any, focus: Any, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    today = clock().date()
    focus.write(tmp_path / "exports" / "a.csv", history(today, focus, dt.date(2025, 2, 1)))
    cfg = make_config(tmp_path)
    cache = tmp_path / "cache.sqlite"
    app = build_app(cfg, now=clock)
    app.refresh_all()
    app.close()
    assert cache.stat().st_size > 4096
    if damage == "garbage":
        cache.write_bytes(b"\x00\xffthis is not a database\x13" * 300)
    elif damage == "truncated_header":
        cache.write_bytes(cache.read_bytes()[:50])
    else:
        data = bytearray(cache.read_bytes())
        data[100 : len(data)] = b"\xa5" * (len(data) - 100)  # keep the magic, wreck every page
        cache.write_bytes(bytes(data))
    damaged = cache.read_bytes()

    caplog.set_level(logging.WARNING, logger="exporter.cachefile")
    app, scheduler = assemble(cfg, now=clock)
    try:
        warnings = [r.getMessage() for r in caplog.records if r.name == "exporter.cachefile"]
        assert len(warnings) == 1
        assert f"cache file {cache} is unreadable" in warnings[0]
        assert "moving it to" in warnings[0]
        aside = sorted(tmp_path.glob("cache.sqlite.corrupt-*"))
        assert [p.name for p in aside if not p.name.endswith(("-wal", "-shm"))]
        assert aside[0].read_bytes() == damaged, "the damaged file is kept for inspection, untouched"
        # the new cache is empty and works
        assert not app.ready()
        assert series(app.exposition(), "spend_cost_month_to_date_usd") == {}
        assert scheduler.run_pending() == ["focus"]
        assert value(app, "spend_cost_month_to_date_usd") == pytest.approx(150.0)
        assert sqlite3.connect(cache).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        app.close()


@pytest.mark.parametrize(
    "change",
    [{"timeout": "10m"}, {"backoff_max": "2h"}, {"max_api_cost_usd_per_day": 0.5}, {"poll_interval": "5s"}],
    ids=lambda c: next(iter(c)),
)
def test_fetch_neutral_settings_keep_the_cache(tmp_path: Path, clock: Any, focus: Any, change: dict[str, Any]) -> None:
    today = clock().date()
    focus.write(tmp_path / "exports" / "a.csv", history(today, focus, dt.date(2025, 2, 1)))
    app = build_app(make_config(tmp_path), now=clock)
    app.refresh_all()
    app.close()
    clock.advance(minutes=5)
    (tmp_path / "exports" / "a.csv").unlink()  # a refetch would now fail: none may happen
    app, scheduler = assemble(make_config(tmp_path, **change), now=clock)
    try:
        assert scheduler.run_pending() == []
        assert value(app, "spend_cost_daily_usd") == 10.0
    finally:
        app.close()


def test_every_source_types_fetch_neutral_keys_are_its_own() -> None:
    from exporter.config import SOURCE_TYPES

    for cls in SOURCE_TYPES.values():
        assert set(cls.model_fields) >= cls.FETCH_NEUTRAL, cls.__name__


def test_cache_of_another_schema_version_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.sqlite"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with caplog.at_level(logging.WARNING, logger="exporter.cachefile"):
        store = Store(path)
    try:
        assert "schema version 999" in caplog.text
        assert store.query("SELECT value FROM meta WHERE key='schema_version'") == [(str(SCHEMA_VERSION),)]
        assert list(tmp_path.glob("cache.sqlite.corrupt-*"))
    finally:
        store.close()


def test_a_version_1_cache_is_migrated_in_place(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A cache written before 1-hour cache writes were kept apart: new columns, its rows kept, nothing moved aside."""
    path = tmp_path / "cache.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('generation', '7')")
    conn.execute("INSERT INTO cost VALUES ('ai', '2025-03-02', 'anthropic', 'w', 'messages', 't', 'claude', 1.5)")
    conn.execute(
        "INSERT INTO usage VALUES ('ai', '2025-03-02', 'anthropic', 'w', 'messages', 't', 'claude', 1,2,3,4,5)"
    )
    hour = dt.datetime(2025, 3, 15, 9, tzinfo=dt.UTC).timestamp()
    conn.execute("INSERT INTO hourly VALUES ('ai', ?, 'anthropic', 'w', 'messages', 't', 'claude', 6,7,8,9,1)", (hour,))
    conn.commit()
    conn.close()
    with caplog.at_level(logging.INFO, logger="exporter.cachefile"):
        store = Store(path)
    try:
        assert not list(tmp_path.glob("cache.sqlite.corrupt-*")), caplog.text
        assert store.query("SELECT value FROM meta WHERE key='schema_version'") == [(str(SCHEMA_VERSION),)]
        x = ("anthropic", "w", "messages", "t", "claude")
        assert store.usage_by_series("ai", D(2025, 3, 1), D(2025, 3, 1), D(2025, 3, 15)) == [(*x, 1, 2, 3, 4, 0, 5)]
        assert store.hourly_by_series("ai", hour) == [(*x, 6, 7, 8, 9, 0)]
        assert store.cost_days("ai", D(2025, 3, 15)) == (D(2025, 3, 2), D(2025, 3, 2))
        put(store, "ai", [], usage=[("2025-03-03", *x, 1, 1, 1, 1, 2, 1)])
        assert store.usage_by_model("ai", D(2025, 3, 1), D(2025, 3, 3)) == [("anthropic", "w", "claude", 2, 3, 4, 5, 2)]
    finally:
        store.close()
    # and it opens again as a version 2 cache
    Store(path).close()


# the cache's usage and hourly tables as version 1 wrote them (the other tables are unchanged)
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE cost (
    source TEXT NOT NULL, day TEXT NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL,
    service_name TEXT NOT NULL, team TEXT NOT NULL, model TEXT NOT NULL, cost_usd REAL NOT NULL
);
CREATE INDEX cost_source_day ON cost (source, day);
CREATE INDEX cost_series ON cost (source, provider, account_id, service_name, team, model, day, cost_usd);
CREATE TABLE usage (
    source TEXT NOT NULL, day TEXT NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL,
    service_name TEXT NOT NULL, team TEXT NOT NULL, model TEXT NOT NULL,
    input INTEGER NOT NULL, output INTEGER NOT NULL, cache_read INTEGER NOT NULL,
    cache_write INTEGER NOT NULL, requests INTEGER NOT NULL
);
CREATE INDEX usage_source_day ON usage (source, day);
CREATE TABLE hourly (
    source TEXT NOT NULL, hour REAL NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL,
    service_name TEXT NOT NULL, team TEXT NOT NULL, model TEXT NOT NULL,
    input INTEGER NOT NULL, output INTEGER NOT NULL, cache_read INTEGER NOT NULL,
    cache_write INTEGER NOT NULL, requests INTEGER NOT NULL
);
CREATE INDEX hourly_source ON hourly (source, hour);
"""


def test_cache_is_wal(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite")
    try:
        assert store.query("PRAGMA journal_mode") == [("wal",)]
    finally:
        store.close()


def test_restated_day_replaces_old_figure_and_final_day_is_never_refetched(
    tmp_path: Path, clock: Any, focus: Any
) -> None:
    today = clock().date()  # 2025-03-15
    final_day = dt.date(2025, 3, 5)  # more than restatement_days (3) before the last fetch
    restated_day = dt.date(2025, 3, 13)
    vanished_day = dt.date(2025, 3, 14)
    path = tmp_path / "exports" / "a.csv"
    focus.write(path, history(today, focus, dt.date(2025, 2, 1)))
    app, scheduler = assemble(make_config(tmp_path), now=clock)
    try:
        app.refresh_all()

        def stored(day: dt.date) -> list[tuple[Any, ...]]:
            return app.store.query("SELECT cost_usd FROM cost WHERE source='focus' AND day=?", (day.isoformat(),))

        assert stored(final_day) == [(10.0,)]
        assert value(app, "spend_cost_month_to_date_usd") == pytest.approx(150.0)

        # the provider restates: one open day changes, one disappears, and an old (final) day changes too
        rows = []
        for r in history(today, focus, dt.date(2025, 2, 1)):
            day = r["ChargePeriodStart"].date()
            if day == restated_day:
                r["BilledCost"] = 25.0
            elif day == final_day:
                r["BilledCost"] = 999.0
            elif day == vanished_day:
                continue
            rows.append(r)
        focus.write(path, rows)
        clock.advance(hours=1)
        assert scheduler.run_pending() == ["focus"]
        assert status_report(app)["sources"][0]["up"] is True

        assert stored(restated_day) == [(25.0,)], "a restated day replaces the old figure, never adds to it"
        assert stored(vanished_day) == [], "a day fetched again with no rows is stored empty"
        assert stored(final_day) == [(10.0,)], "a final day is never fetched again"
        # March: 15 days of 10, one restated to 25, one gone
        assert value(app, "spend_cost_month_to_date_usd") == pytest.approx(150.0 + 15.0 - 10.0)
        assert app.store.get_state("focus").fetched_through == today

        # the boundary, a day later: the last fetch ended 2025-03-15, so 03-12 is still open, 03-11 final
        clock.set(dt.datetime(2025, 3, 16, 11, 0, tzinfo=dt.UTC))
        for r in rows:
            if r["ChargePeriodStart"].date() in (dt.date(2025, 3, 11), dt.date(2025, 3, 12)):
                r["BilledCost"] = 50.0
        focus.write(path, rows)
        assert scheduler.run_pending() == ["focus"]
        assert stored(dt.date(2025, 3, 12)) == [(50.0,)]
        assert stored(dt.date(2025, 3, 11)) == [(10.0,)]
        assert stored(final_day) == [(10.0,)]
    finally:
        app.close()


def test_failed_refresh_keeps_the_last_good_data(tmp_path: Path, clock: Any, focus: Any) -> None:
    today = clock().date()
    path = focus.write(tmp_path / "exports" / "a.csv", history(today, focus, dt.date(2025, 2, 1)))
    app = build_app(make_config(tmp_path), now=clock)
    try:
        app.refresh_all()
        before = app.store.query("SELECT * FROM cost ORDER BY day")
        path.unlink()
        (tmp_path / "exports" / "b.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 100)
        clock.advance(hours=1)
        out = app.refresh("focus")
        assert not out.ok
        assert app.store.query("SELECT * FROM cost ORDER BY day") == before
        state = app.store.get_state("focus")
        assert state.consecutive_failures == 1
        assert state.last_error and state.last_error.startswith("reading FOCUS files failed")
        assert state.fetched_through == today
    finally:
        app.close()


# --------------------------------------------------------------------------- the snapshot's reads

D = dt.date


# the windows of a snapshot built on 2025-03-15 whose newest complete day is the 14th
WINDOWS = CostWindows(
    today=D(2025, 3, 15),
    month_start=D(2025, 3, 1),
    day=D(2025, 3, 14),
    baseline=(D(2025, 2, 14), D(2025, 3, 13)),
    recent=(D(2025, 3, 8), D(2025, 3, 14)),
    previous_month=(D(2025, 2, 1), D(2025, 2, 28)),
)


def put(store: Store, source: str, costs: list[Any], usage: list[Any] | None = None, hourly: Any = None) -> None:
    usage = usage or []
    days = [D.fromisoformat(r[0]) for r in costs + usage]
    rep = Replacement(min(days), max(days), costs, usage, hourly, [("openai", "proj", "Project")], [])
    store.replace(source, rep, SourceState(source=source))


def test_cost_by_series_sums_each_window(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite")
    try:
        a = ("aws", "111", "EC2", "search", "")
        b = ("aws", "111", "S3", "search", "")
        old = ("aws", "111", "Glacier", "search", "")
        every_day = [((D(2025, 2, 1) + i * DAY).isoformat(), *a, 1.0) for i in range(43)]  # Feb 1 .. Mar 15
        put(store, "s", [*every_day, ("2025-03-14", *b, 2.0), ("2025-01-10", *old, 3.0)])
        assert store.cost_days("s", D(2025, 3, 15)) == (D(2025, 3, 14), D(2025, 1, 10))
        assert store.cost_days("other", D(2025, 3, 15)) == (None, None)
        assert store.has_costs("s") and not store.has_costs("other")
        rows = {r[:5]: r[5:15] for r in store.cost_by_series("s", WINDOWS)}
        # month to date (with today), has it, through the day, the day, baseline sum and squares,
        # seen from the baseline on, the recent 7 days, the previous month, has it
        assert rows == {a: (15.0, 1, 14.0, 1.0, 28.0, 28.0, 1, 7.0, 28.0, 1), b: (2.0, 1, 2.0, 2.0, 0, 0, 1, 2.0, 0, 0)}
    finally:
        store.close()


def test_usage_hourly_forecast_and_account_reads(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite")
    try:
        x = ("openai", "proj", "chat", "search", "gpt-4o")
        y = ("openai", "proj", "chat", "search", "gpt-4o-mini")
        hour = dt.datetime(2025, 3, 15, 9, tzinfo=dt.UTC).timestamp()
        put(
            store,
            "ai",
            [("2025-03-14", *x, 1.0)],
            # tokens: input, output, cache_read, cache_write, cache_write_1h; then requests
            usage=[
                ("2025-02-20", *y, 9, 9, 9, 9, 9, 9),
                ("2025-03-02", *x, 1, 2, 3, 4, 8, 5),
                ("2025-03-03", *x, 1, 0, 0, 0, 2, 1),
            ],
            hourly=[
                (hour, *x, 10, 20, 0, 0, 6, 3),
                (hour - 3600, *y, 5, 5, 0, 0, 0, 1),
                (hour - 90000, *x, 7, 7, 7, 7, 7, 7),
            ],
        )
        usage = {r[:5]: r[5:] for r in store.usage_by_series("ai", D(2025, 3, 1), D(2025, 2, 1), D(2025, 3, 15))}
        assert usage == {x: (2, 2, 3, 4, 10, 6), y: (0, 0, 0, 0, 0, 0)}  # y: used last month only, so 0 this month
        hourly = {r[:5]: r[5:] for r in store.hourly_by_series("ai", hour)}
        assert hourly == {x: (10, 20, 0, 0, 6), y: (0, 0, 0, 0, 0)}  # y: seen in the last day, not in this hour
        # the price ratio's reads: billed cost and tokens per (provider, account, model) over some days
        got = store.ai_cost_by_model("ai", ["openai"], D(2025, 3, 8), D(2025, 3, 14))
        assert got == [("openai", "proj", "gpt-4o", 1.0)]
        assert store.ai_cost_by_model("ai", ["openai"], D(2025, 3, 1), D(2025, 3, 13)) == []
        assert store.ai_cost_by_model("ai", ["anthropic"], D(2025, 3, 8), D(2025, 3, 14)) == []
        assert store.usage_by_model("ai", D(2025, 3, 1), D(2025, 3, 14)) == [
            ("openai", "proj", "gpt-4o", 2, 2, 3, 4, 10)
        ]
        assert store.accounts("ai") == [("openai", "proj", "Project")]
        assert store.provider_forecasts("ai") == []
    finally:
        store.close()


def test_a_damaged_file_found_by_a_snapshot_read_is_recovered(tmp_path: Path) -> None:
    """The snapshot reads through the store's recovery: damage is moved aside, not raised into the refresh."""
    path = tmp_path / "c.sqlite"
    store = Store(path)
    services = [("aws", "111", f"svc-{j}", "search", "") for j in range(10)]
    put(store, "s", [((D(2024, 2, 1) + i * DAY).isoformat(), *s, 1.0) for i in range(400) for s in services])
    store.close()
    # every page written after the schema's (the cost table's rows and its indexes' entries): the schema itself
    # may span more than page 1 once it has enough tables, and damage there is found on opening, not by a read
    conn = sqlite3.connect(path)
    (schema_end,) = conn.execute("SELECT MAX(rootpage) FROM sqlite_master").fetchone()
    conn.close()
    data = bytearray(path.read_bytes())
    data[schema_end * 4096 :] = b"\xa5" * (len(data) - schema_end * 4096)
    path.write_bytes(bytes(data))

    store = Store(path)
    reset = threading.Event()
    store.on_reset.append(reset.set)
    try:
        store.cost_by_series("s", WINDOWS)  # either this read or the check after start finds the damage
        assert reset.wait(30)
        assert store.cost_by_series("s", WINDOWS) == []
        assert store.persistent
        assert list(tmp_path.glob("c.sqlite.corrupt-*"))
    finally:
        store.close()


def test_after_an_unclean_stop_the_history_is_checked_after_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The tables serving reads are checked before the start; the cost table, with its history, after it."""
    path = tmp_path / "c.sqlite"
    Store(path).close()
    con = sqlite3.connect(path)
    (roots,) = con.execute("SELECT MAX(rootpage) FROM sqlite_master").fetchone()
    rows = [
        ("s", (D(2024, 2, 1) + i * DAY).isoformat(), "aws", "111", f"svc-{j}", "t", "", 1.0, "")
        for i in range(400)
        for j in range(10)
    ]
    con.executemany("INSERT INTO cost VALUES (?,?,?,?,?,?,?,?,?)", rows)  # only cost grows beyond its root pages
    con.execute("UPDATE meta SET value='0' WHERE key='closed_cleanly'")  # as a kill -9 leaves it
    con.commit()
    con.close()
    data = bytearray(path.read_bytes())
    data[roots * 4096 :] = b"\xa5" * (len(data) - roots * 4096)
    path.write_bytes(bytes(data))

    caplog.set_level(logging.INFO)
    store = Store(path)  # the served tables are whole: it opens the file, and serves from it
    reset = threading.Event()
    store.on_reset.append(reset.set)
    try:
        assert any("the tables it serves checked ok" in r.getMessage() for r in caplog.records)
        assert not list(tmp_path.glob("c.sqlite.corrupt-*"))
        store.query("SELECT COUNT(*) FROM cost")  # either this read or the check after start finds the damage
        assert reset.wait(30)
        assert list(tmp_path.glob("c.sqlite.corrupt-*"))
        assert store.query("SELECT COUNT(*) FROM cost") == [(0,)]
    finally:
        store.close()

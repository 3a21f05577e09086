"""The persistent cache: one SQLite file (WAL), written in atomic transactions.

Records are stored already normalised (team attributed, amounts in USD), next
to per-source state: last success and error, data-through time, the days
fetched, and API requests and their cost per UTC day. A corrupted or
unreadable file is moved aside and rebuilt, never a crash.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cost (
    source TEXT NOT NULL, day TEXT NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL,
    service_name TEXT NOT NULL, team TEXT NOT NULL, model TEXT NOT NULL, cost_usd REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cost_source_day ON cost (source, day);
-- covers the snapshot's aggregation: rows come out grouped by series, no sort (8x faster at 100k series)
CREATE INDEX IF NOT EXISTS cost_series ON cost (source, provider, account_id, service_name, team, model, day, cost_usd);
CREATE TABLE IF NOT EXISTS usage (
    source TEXT NOT NULL, day TEXT NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL,
    service_name TEXT NOT NULL, team TEXT NOT NULL, model TEXT NOT NULL,
    input INTEGER NOT NULL, output INTEGER NOT NULL, cache_read INTEGER NOT NULL,
    cache_write INTEGER NOT NULL, requests INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_source_day ON usage (source, day);
CREATE TABLE IF NOT EXISTS hourly (
    source TEXT NOT NULL, hour REAL NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL,
    service_name TEXT NOT NULL, team TEXT NOT NULL, model TEXT NOT NULL,
    input INTEGER NOT NULL, output INTEGER NOT NULL, cache_read INTEGER NOT NULL,
    cache_write INTEGER NOT NULL, requests INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS hourly_source ON hourly (source, hour);
CREATE TABLE IF NOT EXISTS accounts (
    source TEXT NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL, account_name TEXT NOT NULL,
    PRIMARY KEY (source, provider, account_id)
);
CREATE TABLE IF NOT EXISTS forecasts (
    source TEXT NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL, remaining_usd REAL NOT NULL,
    PRIMARY KEY (source, provider, account_id)
);
CREATE TABLE IF NOT EXISTS source_state (
    source TEXT PRIMARY KEY,
    config_hash TEXT,
    last_attempt REAL,
    last_success REAL,
    last_error TEXT,
    last_duration REAL,
    data_through REAL,
    fetched_through TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    next_refresh REAL,
    skipped_records INTEGER NOT NULL DEFAULT 0,
    skipped_detail TEXT
);
CREATE TABLE IF NOT EXISTS api_calls (
    source TEXT NOT NULL, day TEXT NOT NULL, operation TEXT NOT NULL, status TEXT NOT NULL,
    requests INTEGER NOT NULL, cost_usd REAL NOT NULL,
    PRIMARY KEY (source, day, operation, status)
);
"""


@dataclass(frozen=True)
class SourceState:
    source: str
    config_hash: str | None = None
    last_attempt: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_duration: float | None = None
    data_through: float | None = None
    fetched_through: dt.date | None = None
    consecutive_failures: int = 0
    next_refresh: float | None = None
    skipped_records: int = 0
    skipped_detail: str | None = None

    @property
    def up(self) -> bool:
        """The last refresh succeeded (``spend_exporter_source_up``)."""
        return self.last_success is not None and self.consecutive_failures == 0


# Rows as the store holds them: everything normalised.
CostRow = tuple[str, str, str, str, str, str, float]  # day, provider, account_id, service_name, team, model, usd
UsageRow = tuple[str, str, str, str, str, str, int, int, int, int, int]  # day|hour..., 4 token types, requests


@dataclass
class Replacement:
    """What one successful refresh writes for one source, atomically."""

    start: dt.date
    end: dt.date
    costs: list[CostRow]
    usage: list[tuple[Any, ...]]
    hourly: list[tuple[Any, ...]] | None
    accounts: list[tuple[str, str, str]]
    forecasts: list[tuple[str, str, float]] | None


class StoreError(Exception):
    pass


def _merge_cost_duplicates(conn: sqlite3.Connection) -> None:
    """A cache written before one-row-per-day-and-series: merge its duplicate rows once."""
    cols = "source, day, provider, account_id, service_name, team, model"
    dup = conn.execute(f"SELECT 1 FROM cost GROUP BY {cols} HAVING COUNT(*) > 1 LIMIT 1").fetchone()
    if not dup:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"CREATE TEMP TABLE merged AS SELECT {cols}, SUM(cost_usd) FROM cost GROUP BY {cols}")
        conn.execute("DELETE FROM cost")
        conn.execute("INSERT INTO cost SELECT * FROM merged")
        conn.execute("DROP TABLE merged")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class Store:
    """SQLite cache shared by the scheduler's workers (one connection, one lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self._conn = self._open()

    # -- opening and recovery -------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except (sqlite3.DatabaseError, StoreError) as e:
            if self.path == ":memory:":
                raise
            aside = f"{self.path}.corrupt-{int(time.time())}"
            log.warning(
                "cache file %s is unreadable (%s); moving it to %s and starting an empty cache", self.path, e, aside
            )
            for suffix in ("", "-wal", "-shm"):
                p = self.path + suffix
                if os.path.exists(p):
                    os.replace(p, aside + suffix)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            ok = conn.execute("PRAGMA quick_check").fetchone()
            if not ok or ok[0] != "ok":
                raise StoreError(f"integrity check failed: {ok[0] if ok else 'no answer'}")
            had_series_index = conn.execute("SELECT 1 FROM sqlite_master WHERE name='cost_series'").fetchone()
            conn.executescript(_SCHEMA)
            if not had_series_index:
                _merge_cost_duplicates(conn)
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(f"schema version {row[0]} is not {SCHEMA_VERSION}")
        except Exception:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def query(self, sql: str, params: Iterable[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        # a mapping binds :named parameters; tuple() of it would bind its keys positionally
        args: tuple[Any, ...] | dict[str, Any] = dict(params) if isinstance(params, Mapping) else tuple(params)
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # -- data -------------------------------------------------------------------
    def replace(self, source: str, rep: Replacement, state: SourceState) -> None:
        """Replace exactly the days ``rep.start``..``rep.end`` of ``source`` and save its state."""
        s, e = rep.start.isoformat(), rep.end.isoformat()
        with self.transaction() as c:
            # one row per day and series (the snapshot's aggregation relies on it): sum what normalises alike
            costs: dict[tuple[Any, ...], float] = {}
            for r in rep.costs:
                costs[r[:6]] = costs.get(r[:6], 0.0) + r[6]
            c.execute("DELETE FROM cost WHERE source=? AND day BETWEEN ? AND ?", (source, s, e))
            c.executemany("INSERT INTO cost VALUES (?,?,?,?,?,?,?,?)", [(source, *k, v) for k, v in costs.items()])
            c.execute("DELETE FROM usage WHERE source=? AND day BETWEEN ? AND ?", (source, s, e))
            c.executemany("INSERT INTO usage VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", [(source, *r) for r in rep.usage])
            if rep.hourly is not None:
                c.execute("DELETE FROM hourly WHERE source=?", (source,))
                c.executemany("INSERT INTO hourly VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", [(source, *r) for r in rep.hourly])
            c.executemany("INSERT OR REPLACE INTO accounts VALUES (?,?,?,?)", [(source, *a) for a in rep.accounts])
            if rep.forecasts is not None:
                c.execute("DELETE FROM forecasts WHERE source=?", (source,))
                c.executemany(
                    "INSERT OR REPLACE INTO forecasts VALUES (?,?,?,?)", [(source, *f) for f in rep.forecasts]
                )
            self._put_state(c, state)

    def prune(self, source: str, before: dt.date) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM cost WHERE source=? AND day < ?", (source, before.isoformat()))
            c.execute("DELETE FROM usage WHERE source=? AND day < ?", (source, before.isoformat()))

    def forget_source(self, source: str) -> None:
        """Drop everything held for a source (its config changed, or it was removed)."""
        with self.transaction() as c:
            for table in ("cost", "usage", "hourly", "accounts", "forecasts"):
                c.execute(f"DELETE FROM {table} WHERE source=?", (source,))
            c.execute(
                "UPDATE source_state SET fetched_through=NULL, data_through=NULL, next_refresh=NULL WHERE source=?",
                (source,),
            )

    def sources_held(self) -> set[str]:
        return {r[0] for r in self.query("SELECT source FROM source_state")}

    # -- state ----------------------------------------------------------------------
    def get_state(self, source: str) -> SourceState:
        rows = self.query("SELECT * FROM source_state WHERE source=?", (source,))
        if not rows:
            return SourceState(source=source)
        r = rows[0]
        return SourceState(
            source=r[0],
            config_hash=r[1],
            last_attempt=r[2],
            last_success=r[3],
            last_error=r[4],
            last_duration=r[5],
            data_through=r[6],
            fetched_through=dt.date.fromisoformat(r[7]) if r[7] else None,
            consecutive_failures=r[8] or 0,
            next_refresh=r[9],
            skipped_records=r[10] or 0,
            skipped_detail=r[11],
        )

    def put_state(self, state: SourceState) -> None:
        with self.transaction() as c:
            self._put_state(c, state)

    @staticmethod
    def _put_state(c: sqlite3.Connection, s: SourceState) -> None:
        c.execute(
            "INSERT OR REPLACE INTO source_state VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                s.source,
                s.config_hash,
                s.last_attempt,
                s.last_success,
                s.last_error,
                s.last_duration,
                s.data_through,
                s.fetched_through.isoformat() if s.fetched_through else None,
                s.consecutive_failures,
                s.next_refresh,
                s.skipped_records,
                s.skipped_detail,
            ),
        )

    # -- API accounting ------------------------------------------------------------
    def record_call(self, source: str, day: dt.date, operation: str, status: str, cost_usd: float) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT INTO api_calls VALUES (?,?,?,?,1,?) ON CONFLICT (source, day, operation, status) "
                "DO UPDATE SET requests = requests + 1, cost_usd = cost_usd + excluded.cost_usd",
                (source, day.isoformat(), operation, status, cost_usd),
            )

    def api_cost_on(self, source: str, day: dt.date) -> float:
        rows = self.query(
            "SELECT COALESCE(SUM(cost_usd), 0) FROM api_calls WHERE source=? AND day=?", (source, day.isoformat())
        )
        return float(rows[0][0])

    def api_totals(self) -> list[tuple[str, str, str, int, float]]:
        """(source, operation, status, requests, cost) summed over all days: the counters' values."""
        return [
            (r[0], r[1], r[2], int(r[3]), float(r[4]))
            for r in self.query(
                "SELECT source, operation, status, SUM(requests), SUM(cost_usd) FROM api_calls "
                "GROUP BY source, operation, status ORDER BY source, operation, status"
            )
        ]

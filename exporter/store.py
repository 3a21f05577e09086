"""The persistent cache: one SQLite file (WAL), written in atomic transactions.

Records are stored already normalised (team attributed, amounts in USD), next
to per-source state: last success and error, data-through time, the days
fetched, API requests and their cost per UTC day, and the last rendered
snapshot (so that a restart serves ``/metrics`` at once).

Faults never stop the exporter (docs/runbook.md, "The cache"): a corrupted file,
or one with another schema, is moved aside to ``<path>.corrupt-<unix time>`` and
an empty cache is started; a cache that cannot be written (read-only directory
or file, full disk) is replaced by an in-memory copy of what it held, so the
exporter keeps serving and refreshing but keeps nothing across a restart.
Each is one log line naming the path and the problem, and shows in ``/status``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

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
-- the last published snapshot, valid only while meta.generation is still the one it was built at
CREATE TABLE IF NOT EXISTS snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 1), key TEXT NOT NULL, generation INTEGER NOT NULL,
    meta TEXT NOT NULL, body BLOB NOT NULL
);
"""

# SQLite primary result codes meaning "this cache cannot be written here", as opposed to a damaged file
_UNWRITABLE = {3: "permission denied", 8: "read-only", 10: "disk I/O error", 13: "disk is full", 14: "cannot open"}


def _unwritable(e: BaseException) -> bool:
    return isinstance(e, sqlite3.Error) and (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF in _UNWRITABLE


def _damaged(e: BaseException) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB: the file's content is wrong, not its permissions or room."""
    return isinstance(e, sqlite3.DatabaseError) and (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF in (11, 26)


def _check_columns(conn: sqlite3.Connection) -> None:
    """A table of ours with other columns (another program's file, a hand-edited one) is not a cache we can use."""
    for table, want in _COLUMNS.items():
        have = [c[1] for c in conn.execute(f"PRAGMA table_info({table})")]
        if have and have != want:
            raise StoreError(f"table {table} has columns {', '.join(have)}, not the cache schema's")


def _quick_check(conn: sqlite3.Connection) -> None:
    ok = conn.execute("PRAGMA quick_check").fetchone()
    if not ok or ok[0] != "ok":
        raise StoreError(f"integrity check failed: {ok[0] if ok else 'no answer'}")


def _closed_cleanly(conn: sqlite3.Connection, path: str) -> bool | None:
    """The last process to use the file closed it (no crash, no kill -9) and it is as long as it says.

    None for a file that has no cache in it yet.
    """
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='closed_cleanly'").fetchone()
        pages = conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
    except sqlite3.OperationalError:
        return None  # no meta table yet (a new file); a damaged one raises DatabaseError to the caller
    if not (row and row[0] == "1"):
        return None if row is None else False
    wal = path + "-wal"
    # after a clean close the WAL is empty, so the file must hold every page its header counts
    if (not os.path.exists(wal) or os.path.getsize(wal) == 0) and os.path.getsize(path) < pages:
        raise StoreError(f"truncated: {os.path.getsize(path)} bytes where its header says {pages}")
    return True


def _expected_columns() -> dict[str, list[str]]:
    conn = sqlite3.connect(":memory:")
    conn.executescript(_SCHEMA)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    out = {t: [c[1] for c in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
    conn.close()
    return out


_COLUMNS = _expected_columns()


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


def _describe(e: BaseException) -> str:
    code = (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF
    return f"{e}" if code not in _UNWRITABLE or _UNWRITABLE[code] in str(e) else f"{_UNWRITABLE[code]}: {e}"


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
    """SQLite cache shared by the scheduler's workers (one connection, one lock).

    ``persistent`` is False when the cache could not be kept in its file and runs in memory;
    ``problem`` then says why (it is logged once, and ``/status`` shows it).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.persistent = self.path != ":memory:"
        self.problem: str | None = None
        self.on_reset: list[Callable[[], None]] = []  # called when the cache was replaced by an empty one
        self._lock = threading.RLock()
        self._check_later = False
        self._resets = 0
        self._conn = self._open()
        if self._check_later:
            threading.Thread(target=self._background_check, name="cache-check", daemon=True).start()

    # -- opening and recovery -------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        if self.path == ":memory:":
            return self._connect(self.path)
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            return self._connect(self.path)
        except OSError as e:
            return self._to_memory(f"cannot create its directory ({e.strerror or e})")
        except (sqlite3.DatabaseError, StoreError) as e:
            if _unwritable(e):
                return self._to_memory(f"cannot be written ({_describe(e)})", copy_file=True)
            return self._move_aside(e)

    def _move_aside(self, e: BaseException) -> sqlite3.Connection:
        """The file is damaged: keep it for inspection under another name and start an empty cache."""
        self._check_later = False
        aside = f"{self.path}.corrupt-{int(time.time())}"
        try:
            for suffix in ("", "-wal", "-shm"):
                p = self.path + suffix
                if os.path.exists(p):
                    os.replace(p, aside + suffix)
        except OSError as move:
            return self._to_memory(f"is unreadable ({e}) and cannot be moved aside ({move.strerror or move})")
        log.warning(
            "cache file %s is unreadable (%s); moving it to %s and starting an empty cache", self.path, e, aside
        )
        try:
            return self._connect(self.path)
        except (sqlite3.DatabaseError, StoreError) as e2:
            return self._to_memory(f"cannot be created ({_describe(e2)})")

    def _connect(self, path: str) -> sqlite3.Connection:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            if path != ":memory:":
                _check_columns(conn)  # before anything writes to a file that may not be ours
                clean = _closed_cleanly(conn, path)
                if clean:
                    # reading the whole file takes ~2 ms a MB: after a clean shutdown it runs after start instead
                    self._check_later = True
                else:
                    _quick_check(conn)
                    if clean is False:
                        log.info("cache file %s was not closed cleanly (a crash or kill -9); it checked ok", path)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            self._init_schema(conn)
            if path != ":memory:":
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('closed_cleanly', '0')")
        except Exception:
            conn.close()
            raise
        return conn

    def _background_check(self) -> None:
        resets = self._resets
        try:
            # read-only: never creates a file at a path a test or an operator has just removed
            uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=30)
            try:
                _quick_check(conn)
            finally:
                conn.close()
        except (sqlite3.DatabaseError, StoreError) as e:
            if not _unwritable(e):
                self._reset(e, resets)
        except Exception:
            log.debug("background check of cache file %s could not run", self.path, exc_info=True)

    def _reset(self, e: BaseException, resets: int | None = None) -> None:
        """Damage found while running: move the file aside, go on with an empty cache, tell the engine."""
        with self._lock:
            if not self.persistent or self._closed or (resets is not None and resets != self._resets):
                return  # (or the damaged file was already replaced: this check read the old one)
            self._resets += 1
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = self._move_aside(e)
        for callback in self.on_reset:
            callback()

    @staticmethod
    def _init_schema(conn: sqlite3.Connection) -> None:
        had_series_index = conn.execute("SELECT 1 FROM sqlite_master WHERE name='cost_series'").fetchone()
        _check_columns(conn)
        conn.executescript(_SCHEMA)
        if not had_series_index:
            _merge_cost_duplicates(conn)
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif row[0] != str(SCHEMA_VERSION):
            raise StoreError(f"schema version {row[0]} is not {SCHEMA_VERSION}")
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")

    def _to_memory(
        self, problem: str, copy_file: bool = False, copy: sqlite3.Connection | None = None
    ) -> sqlite3.Connection:
        """Carry on in memory with a copy of what the cache held, after one log line saying why."""
        mem = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        copied = False
        try:
            if copy_file and os.path.exists(self.path):
                # immutable: reads the file as it is, needing neither a -shm nor a lock in an unwritable directory
                uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro&immutable=1"
                src = sqlite3.connect(uri, uri=True)
                try:
                    ok = src.execute("PRAGMA quick_check").fetchone()
                    if ok and ok[0] == "ok":
                        src.backup(mem)
                        copied = True
                finally:
                    src.close()
            elif copy is not None:
                copy.backup(mem)
                copied = True
            self._init_schema(mem)
        except (sqlite3.Error, StoreError):
            mem.close()
            mem = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            self._init_schema(mem)
            copied = False
        self.persistent = False
        self.problem = f"cache file {self.path} {problem}"
        log.error(
            "%s; running with an in-memory cache%s: the exporter serves and refreshes as usual, "
            "but what it fetches is lost at restart",
            self.problem,
            " holding a copy of its data" if copied else "",
        )
        return mem

    _closed = False

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.persistent:
                try:
                    self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('closed_cleanly', '1')")
                except sqlite3.Error:
                    pass  # then the next start checks the whole file, which is what an unclean stop deserves
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write; it moves the data generation on, which invalidates the saved snapshot."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            else:
                try:
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a transaction; when the file cannot be written, go on in memory and run it there."""
        with self._lock:
            try:
                with self.transaction() as c:
                    return fn(c)
            except sqlite3.DatabaseError as e:
                if self.persistent and _damaged(e):
                    self._reset(e)
                    with self.transaction() as c:
                        return fn(c)
                if not self.persistent or not _unwritable(e):
                    raise
                old = self._conn
                self._conn = self._to_memory(f"cannot be written ({_describe(e)})", copy=old)
                try:
                    old.close()
                except sqlite3.Error:
                    pass
            with self.transaction() as c:
                return fn(c)

    def generation(self) -> int:
        """Moves on with every write: a snapshot saved at one generation is only valid at that generation."""
        return int(self.query("SELECT value FROM meta WHERE key='generation'")[0][0])

    def save_snapshot(self, key: str, generation: int, meta: str, body: bytes) -> bool:
        """Keep the rendered snapshot, if no write happened since ``generation`` (else it is already stale)."""
        if not self.persistent:
            return False
        with self._lock:
            c = self._conn
            try:
                c.execute("BEGIN IMMEDIATE")
                if self.generation() != generation:
                    c.execute("ROLLBACK")
                    return False
                c.execute("INSERT OR REPLACE INTO snapshot VALUES (1, ?, ?, ?, ?)", (key, generation, meta, body))
                c.execute("COMMIT")
            except sqlite3.Error as e:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                log.warning("cache file %s: could not save the snapshot (%s)", self.path, _describe(e))
                return False
        return True

    def load_snapshot(self, key: str) -> tuple[str, bytes] | None:
        """(meta, body) of the saved snapshot if it was saved under ``key`` at the current generation."""
        rows = self.query(
            "SELECT s.meta, s.body FROM snapshot s JOIN meta m ON m.key = 'generation' "
            "WHERE s.id = 1 AND s.key = ? AND s.generation = CAST(m.value AS INTEGER)",
            (key,),
        )
        return (rows[0][0], bytes(rows[0][1])) if rows else None

    def query(self, sql: str, params: Iterable[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        # a mapping binds :named parameters; tuple() of it would bind its keys positionally
        args: tuple[Any, ...] | dict[str, Any] = dict(params) if isinstance(params, Mapping) else tuple(params)
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as e:
                if not _damaged(e):
                    raise
                self._reset(e)
                return self._conn.execute(sql, args).fetchall()

    # -- data -------------------------------------------------------------------
    def replace(self, source: str, rep: Replacement, state: SourceState) -> None:
        """Replace exactly the days ``rep.start``..``rep.end`` of ``source`` and save its state."""
        s, e = rep.start.isoformat(), rep.end.isoformat()

        def write(c: sqlite3.Connection) -> None:
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

        self._write(write)

    def prune(self, source: str, before: dt.date) -> None:
        def write(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM cost WHERE source=? AND day < ?", (source, before.isoformat()))
            c.execute("DELETE FROM usage WHERE source=? AND day < ?", (source, before.isoformat()))

        self._write(write)

    def forget_source(self, source: str) -> None:
        """Drop everything held for a source (its config changed, or it was removed)."""

        def write(c: sqlite3.Connection) -> None:
            for table in ("cost", "usage", "hourly", "accounts", "forecasts"):
                others = c.execute(f"SELECT 1 FROM {table} WHERE source < ? OR source > ? LIMIT 1", (source, source))
                if others.fetchone():
                    c.execute(f"DELETE FROM {table} WHERE source=?", (source,))
                else:
                    # the only source in it: a DELETE without WHERE drops whole pages (32 s -> 4 s at 100k series)
                    c.execute(f"DELETE FROM {table}")
            c.execute(
                "UPDATE source_state SET fetched_through=NULL, data_through=NULL, next_refresh=NULL WHERE source=?",
                (source,),
            )

        self._write(write)

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
        self._write(lambda c: self._put_state(c, state))

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
        self._write(
            lambda c: c.execute(
                "INSERT INTO api_calls VALUES (?,?,?,?,1,?) ON CONFLICT (source, day, operation, status) "
                "DO UPDATE SET requests = requests + 1, cost_usd = cost_usd + excluded.cost_usd",
                (source, day.isoformat(), operation, status, cost_usd),
            )
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

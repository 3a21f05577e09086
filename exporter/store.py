"""The persistent cache's data: what the engine writes after each refresh and what the snapshot reads.

Records are stored already normalised (team attributed, amounts in USD), next
to per-source state: last success and error, data-through time, the days
fetched, API requests and their cost per UTC day, and the last rendered
snapshot (so that a restart serves ``/metrics`` at once). The tables are in
``exporter.cacheschema``; the file itself, and what keeps it usable when it is
damaged or cannot be written, in ``exporter.cachefile``. Nothing else touches the
connection: the snapshot aggregates through the read methods at the end, which
go through the file's recovery like every other read.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from exporter.cachefile import CacheFile, describe
from exporter.cachefile import QueryInterrupted as QueryInterrupted  # raised by Store.spend
from exporter.cacheschema import CHECK_AFTER_START, check_tables, create_tables

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceState:
    """What the store keeps of one source between refreshes (and restarts)."""

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


# Rows as the store holds them, without their source: everything normalised (ISO day, team attributed, USD).
# day, provider, account_id, service_name, team, model, usd[, labels: the extra labels, attribution.encode_labels]
StoredCostRow = tuple[str, str, str, str, str, str, float] | tuple[str, str, str, str, str, str, float, str]
# day (or the hour's unix time in ``hourly``), provider, account_id, service_name, team, model,
# input, output, cache_read, cache_write, cache_write_1h tokens (model.TOKEN_TYPES), requests
StoredUsageRow = tuple[Any, ...]


# the cost table's label columns, which Store.spend may group by (the metrics' COST_LABELS)
SPEND_COLUMNS = ("provider", "account_id", "service_name", "team", "model")

_TOKENS = "input, output, cache_read, cache_write, cache_write_1h"  # model.TOKEN_TYPES, in its order
_USAGE_COLUMNS = (
    f"(source, day, provider, account_id, service_name, team, model, {_TOKENS}, requests) VALUES ({'?,' * 12}?)"
)
_HOURLY_COLUMNS = _USAGE_COLUMNS.replace("day", "hour", 1)
_KEY_USAGE_COLUMNS = (
    f"(source, day, provider, account_id, service_name, team, model, api_key_id, {_TOKENS}, requests) "
    f"VALUES ({'?,' * 13}?)"
)


@dataclass
class Replacement:
    """What one successful refresh writes for one source, atomically."""

    start: dt.date
    end: dt.date
    costs: list[StoredCostRow]
    usage: list[StoredUsageRow]
    hourly: list[StoredUsageRow] | None
    accounts: list[tuple[str, str, str]]
    forecasts: list[tuple[str, str, float]] | None
    # day, provider, account_id, service_name, team, model, api_key_id, tokens (model.TOKEN_TYPES), requests
    key_usage: list[StoredUsageRow] = field(default_factory=list)
    api_keys: list[tuple[str, str, str, str]] = field(default_factory=list)  # provider, account_id, api_key_id, name


@dataclass(frozen=True)
class CostWindows:
    """The days ``Store.cost_by_series`` sums one source's costs over (each pair first, last; inclusive)."""

    today: dt.date  # the newest day read: month-to-date includes today's partial day
    month_start: dt.date
    day: dt.date  # the newest complete day
    baseline: tuple[dt.date, dt.date]
    recent: tuple[dt.date, dt.date]  # ends with ``day``
    previous_month: tuple[dt.date, dt.date]


class Store:
    """The cache's data, shared by the scheduler's workers (one connection, one lock: ``CacheFile``).

    ``persistent`` is False when the cache could not be kept in its file and runs in memory;
    ``problem`` then says why. ``on_reset`` callbacks run when a damaged file was replaced by an
    empty cache while running. Every write moves the data *generation* on.
    """

    def __init__(self, path: str | Path, shared: bool = False) -> None:
        """``shared``: the file of a running exporter, opened by a command beside it (``CacheFile``)."""
        self._file = CacheFile(path, check_tables, create_tables, shared=shared, check_after_start=CHECK_AFTER_START)

    @property
    def path(self) -> str:
        return self._file.path

    @property
    def persistent(self) -> bool:
        return self._file.persistent

    @property
    def problem(self) -> str | None:
        return self._file.problem

    @property
    def on_reset(self) -> list[Callable[[], None]]:
        return self._file.on_reset

    def close(self) -> None:
        self._file.close()

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one transaction that also moves the generation on (which invalidates the saved snapshot)."""

        def write(c: sqlite3.Connection) -> T:
            out = fn(c)
            c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")
            return out

        return self._file.write(write)

    def query(self, sql: str, params: Iterable[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        """All rows of one statement, through the cache file's recovery."""
        # a mapping binds :named parameters; tuple() of it would bind its keys positionally
        args: tuple[Any, ...] | dict[str, Any] = dict(params) if isinstance(params, Mapping) else tuple(params)
        return self._file.read(sql, args)

    # -- the saved snapshot ------------------------------------------------------
    def generation(self) -> int:
        """Moves on with every write: a snapshot saved at one generation is only valid at that generation."""
        return int(self.query("SELECT value FROM meta WHERE key='generation'")[0][0])

    def save_snapshot(self, key: str, generation: int, meta: str, body: bytes) -> bool:
        """Keep the rendered snapshot, if no write happened since ``generation`` (else it is already stale)."""
        if not self.persistent:
            return False
        try:
            with self._file.transaction() as c:
                now = int(c.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])
                if now != generation:
                    raise _Stale
                c.execute("INSERT OR REPLACE INTO snapshot VALUES (1, ?, ?, ?, ?)", (key, generation, meta, body))
        except _Stale:
            return False
        except sqlite3.Error as e:
            log.warning("cache file %s: could not save the snapshot (%s)", self.path, describe(e))
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

    # -- data -------------------------------------------------------------------
    def replace(
        self, source: str, rep: Replacement, state: SourceState | None, *, history_from: dt.date | None = None
    ) -> None:
        """Replace exactly the days ``rep.start``..``rep.end`` of ``source`` and save its state (None: leave it).

        ``history_from``: every day of the source from then on has now been fetched (``exporter.history``),
        recorded in the same transaction as the rows.
        """
        s, e = rep.start.isoformat(), rep.end.isoformat()

        def write(c: sqlite3.Connection) -> None:
            # one row per day and series (the snapshot's aggregation relies on it): sum what normalises alike
            costs: dict[tuple[Any, ...], float] = {}
            for r in rep.costs:
                k = (*r[:6], r[7] if len(r) > 7 else "")
                costs[k] = costs.get(k, 0.0) + r[6]
            rows = [(source, *k[:6], v, k[6]) for k, v in costs.items()]
            c.execute("DELETE FROM cost WHERE source=? AND day BETWEEN ? AND ?", (source, s, e))
            c.executemany("INSERT INTO cost VALUES (?,?,?,?,?,?,?,?,?)", rows)
            recent = _recent_from(c)
            if e >= recent:
                first = max(s, recent)
                c.execute("DELETE FROM cost_recent WHERE source=? AND day BETWEEN ? AND ?", (source, first, e))
                c.executemany("INSERT INTO cost_recent VALUES (?,?,?,?,?,?,?,?,?)", [r for r in rows if r[1] >= recent])
            c.execute("DELETE FROM usage WHERE source=? AND day BETWEEN ? AND ?", (source, s, e))
            c.executemany(f"INSERT INTO usage {_USAGE_COLUMNS}", [(source, *r) for r in rep.usage])
            if rep.hourly is not None:
                c.execute("DELETE FROM hourly WHERE source=?", (source,))
                c.executemany(f"INSERT INTO hourly {_HOURLY_COLUMNS}", [(source, *r) for r in rep.hourly])
            c.execute("DELETE FROM key_usage WHERE source=? AND day BETWEEN ? AND ?", (source, s, e))
            c.executemany(f"INSERT INTO key_usage {_KEY_USAGE_COLUMNS}", [(source, *r) for r in rep.key_usage])
            # like accounts: names are kept (a key listed once keeps its name), and the latest listing wins
            c.executemany("INSERT OR REPLACE INTO api_keys VALUES (?,?,?,?,?)", [(source, *k) for k in rep.api_keys])
            c.executemany("INSERT OR REPLACE INTO accounts VALUES (?,?,?,?)", [(source, *a) for a in rep.accounts])
            if rep.forecasts is not None:
                c.execute("DELETE FROM forecasts WHERE source=?", (source,))
                c.executemany(
                    "INSERT OR REPLACE INTO forecasts VALUES (?,?,?,?)", [(source, *f) for f in rep.forecasts]
                )
            if state is not None:
                self._put_state(c, state)
            if history_from is not None:
                c.execute(
                    "INSERT INTO history (source, fetched_from) VALUES (?, ?) ON CONFLICT (source) "
                    "DO UPDATE SET fetched_from = excluded.fetched_from, last_error = NULL",
                    (source, history_from.isoformat()),
                )

        self._write(write)

    def replace_records(self, source: str, rep: Replacement) -> None:
        """``replace`` that keeps the source's state as it is (``recompute``: the records change, not the last
        refresh)."""
        self.replace(source, rep, self.get_state(source))

    def prune(self, source: str, before: dt.date, recent_from: dt.date | None = None) -> None:
        """Drop ``source``'s days before ``before``; ``recent_from``: the copy the snapshot reads
        (``cost_recent``, every source's) keeps only the days from then on."""

        def write(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM cost WHERE source=? AND day < ?", (source, before.isoformat()))
            c.execute("DELETE FROM cost_recent WHERE source=? AND day < ?", (source, before.isoformat()))
            c.execute("DELETE FROM usage WHERE source=? AND day < ?", (source, before.isoformat()))
            c.execute("DELETE FROM key_usage WHERE source=? AND day < ?", (source, before.isoformat()))
            if recent_from is not None and recent_from.isoformat() > _recent_from(c):
                c.execute("DELETE FROM cost_recent WHERE day < ?", (recent_from.isoformat(),))
                c.execute("INSERT OR REPLACE INTO meta VALUES ('recent_from', ?)", (recent_from.isoformat(),))

        self._write(write)

    def forget_source(self, source: str) -> None:
        """Drop everything held for a source (its config changed, or it was removed)."""

        def write(c: sqlite3.Connection) -> None:
            for table in ("cost", "cost_recent", "usage", "hourly", "accounts", "forecasts", "key_usage", "api_keys"):
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
            c.execute("DELETE FROM history WHERE source=?", (source,))

        self._write(write)

    def sources_held(self) -> set[str]:
        return {r[0] for r in self.query("SELECT source FROM source_state")}

    # -- the audit trail (exporter.audit encodes what is kept) ----------------------------
    def keep_raw(
        self,
        source: str,
        fetched_at: float,
        config_hash: str,
        window: str,
        context: bytes,
        pages: list[tuple[str, str, str, int, bytes]],
    ) -> None:
        """Keep one fetch's pages: (operation, request, meta, size, compressed body) each, in order."""

        def write(c: sqlite3.Connection) -> None:
            cur = c.execute(
                "INSERT INTO raw_fetches (source, fetched_at, config_hash, fetch_window, context) VALUES (?,?,?,?,?)",
                (source, fetched_at, config_hash, window, context),
            )
            fid = cur.lastrowid
            c.executemany("INSERT INTO raw_pages VALUES (?,?,?,?,?,?,?)", [(fid, i, *p) for i, p in enumerate(pages)])

        self._write(write)

    def prune_raw(self, source: str, before: float) -> None:
        """Drop ``source``'s fetches made before ``before`` (unix time), and their pages; no write if none is."""
        if not self.query("SELECT 1 FROM raw_fetches WHERE source=? AND fetched_at < ? LIMIT 1", (source, before)):
            return

        def write(c: sqlite3.Connection) -> None:
            old = "SELECT id FROM raw_fetches WHERE source=? AND fetched_at < ?"
            c.execute(f"DELETE FROM raw_pages WHERE fetch_id IN ({old})", (source, before))
            c.execute("DELETE FROM raw_fetches WHERE source=? AND fetched_at < ?", (source, before))

        self._write(write)

    def raw_fetches(self, source: str, config_hash: str | None = None) -> list[tuple[int, float, str, str, bytes]]:
        """(id, fetched_at, config_hash, window, context) of ``source``'s kept fetches, oldest first; only those
        made with ``config_hash`` when given."""
        where, args = ("AND config_hash=?", (source, config_hash)) if config_hash else ("", (source,))
        return [
            (int(r[0]), float(r[1]), r[2], r[3], bytes(r[4]))
            for r in self.query(
                "SELECT id, fetched_at, config_hash, fetch_window, context FROM raw_fetches "
                f"WHERE source=? {where} ORDER BY fetched_at, id",
                args,
            )
        ]

    def raw_pages(self, fetch_id: int) -> list[tuple[str, str, str, int, bytes]]:
        """(operation, request, meta, size, compressed body) of one fetch's pages, in the order received."""
        return [
            (r[0], r[1], r[2], int(r[3]), bytes(r[4]))
            for r in self.query(
                "SELECT operation, request, meta, size, body FROM raw_pages WHERE fetch_id=? ORDER BY seq", (fetch_id,)
            )
        ]

    def raw_index(self, source: str, since: float = 0.0, until: float = float("inf")) -> list[tuple[Any, ...]]:
        """(fetch id, fetched_at, seq, operation, request, size, compressed size) of every page of ``source``'s
        fetches made in ``[since, until)``, oldest first."""
        return self.query(
            "SELECT f.id, f.fetched_at, p.seq, p.operation, p.request, p.size, LENGTH(p.body) "
            "FROM raw_fetches f JOIN raw_pages p ON p.fetch_id = f.id "
            "WHERE f.source=? AND f.fetched_at >= ? AND f.fetched_at < ? ORDER BY f.fetched_at, f.id, p.seq",
            (source, since, until if until != float("inf") else 1e18),
        )

    # -- history (exporter.history) ----------------------------------------------------
    def history_state(self, source: str) -> tuple[dt.date | None, float | None, str | None]:
        """(the day from which every day has been fetched, the last history try, its error) of ``source``."""
        rows = self.query("SELECT fetched_from, last_attempt, last_error FROM history WHERE source=?", (source,))
        if not rows:
            return None, None, None
        r = rows[0]
        return (dt.date.fromisoformat(r[0]) if r[0] else None), r[1], r[2]

    def history_tried(self, source: str, when: float, error: str | None) -> None:
        """Record a history fetch's end (its error, or None), without touching what it stored."""
        self._write(
            lambda c: c.execute(
                "INSERT INTO history (source, last_attempt, last_error) VALUES (?, ?, ?) ON CONFLICT (source) "
                "DO UPDATE SET last_attempt = excluded.last_attempt, last_error = excluded.last_error",
                (source, when, error),
            )
        )

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

    # -- reads for the snapshot ------------------------------------------------------
    def cost_days(self, source: str, before: dt.date) -> tuple[dt.date | None, dt.date | None]:
        """The newest and the oldest day held for ``source`` before ``before``."""
        # two statements: SQLite answers a lone MIN or MAX from the index (cost_source_day) in one step, but
        # MIN and MAX together by reading every day held (5.9 s at 400 days of 100k series)
        args = (source, before.isoformat())
        hi = self.query("SELECT MAX(day) FROM cost WHERE source=? AND day < ?", args)
        lo = self.query("SELECT MIN(day) FROM cost WHERE source=? AND day < ?", args)
        newest = dt.date.fromisoformat(hi[0][0]) if hi and hi[0][0] else None
        oldest = dt.date.fromisoformat(lo[0][0]) if lo and lo[0][0] else None
        return newest, oldest

    def _cost_table(self, first: dt.date) -> str:
        """The table holding every cost row from ``first`` on: the recent copy when it reaches back that far."""
        rows = self.query("SELECT value FROM meta WHERE key='recent_from'")
        return "cost_recent" if rows and first.isoformat() >= str(rows[0][0]) else "cost"

    def has_costs(self, source: str) -> bool:
        return bool(self.query("SELECT 1 FROM cost WHERE source=? LIMIT 1", (source,)))

    def cost_by_series(self, source: str, w: CostWindows) -> list[tuple[Any, ...]]:
        """One row per cost series of ``source`` held from the earlier of the baseline and the previous month on.

        Columns: provider, account_id, service_name, team, model; then the sum from ``month_start``
        through ``today`` and whether it has a day there; the sum from ``month_start`` through ``day``;
        the cost of ``day``; the sum and the sum of squares of the daily costs over ``baseline``;
        whether it has a day from the baseline's first through ``day``; the sum over ``recent``;
        the sum over ``previous_month`` and whether it has a day there; last, the extra labels' values
        (``attribution.encode_labels``).
        """
        b0, b1 = w.baseline
        p0, p1 = w.previous_month
        p = {
            "src": source,
            "lower": min(p0, b0).isoformat(),
            "today": w.today.isoformat(),
            "ms": w.month_start.isoformat(),
            "d": w.day.isoformat(),
            "b0": b0.isoformat(),
            "b1": b1.isoformat(),
            "l0": w.recent[0].isoformat(),
            "p0": p0.isoformat(),
            "p1": p1.isoformat(),
        }
        # the store holds one row per day and series, so c is the day's total; the index
        # cost_series (cost_recent_series) hands the rows over grouped by series, so this needs no sort
        return self.query(
            f"""
            WITH per_day AS (
                SELECT provider, account_id, service_name, team, model, labels, day, cost_usd AS c
                FROM {self._cost_table(min(p0, b0))} WHERE source = :src AND day >= :lower AND day <= :today
            )
            SELECT provider, account_id, service_name, team, model,
                SUM(CASE WHEN day >= :ms THEN c ELSE 0 END),
                MAX(day >= :ms),
                SUM(CASE WHEN day >= :ms AND day <= :d THEN c ELSE 0 END),
                SUM(CASE WHEN day = :d THEN c ELSE 0 END),
                SUM(CASE WHEN day BETWEEN :b0 AND :b1 THEN c ELSE 0 END),
                SUM(CASE WHEN day BETWEEN :b0 AND :b1 THEN c * c ELSE 0 END),
                MAX(day BETWEEN :b0 AND :d),
                SUM(CASE WHEN day BETWEEN :l0 AND :d THEN c ELSE 0 END),
                SUM(CASE WHEN day BETWEEN :p0 AND :p1 THEN c ELSE 0 END),
                MAX(day BETWEEN :p0 AND :p1),
                labels
            FROM per_day
            GROUP BY provider, account_id, service_name, team, model, labels
            """,
            p,
        )

    def usage_by_series(
        self, source: str, month_start: dt.date, since: dt.date, through: dt.date
    ) -> list[tuple[Any, ...]]:
        """One row per AI usage series of ``source`` with usage from ``since`` through ``through``.

        Columns: provider, account_id, service_name, team, model; then input, output, cache_read,
        cache_write and cache_write_1h tokens and requests from ``month_start`` on (0 for a series with
        none there).
        """
        return self.query(
            "SELECT provider, account_id, service_name, team, model, "
            "SUM(CASE WHEN day >= :ms THEN input ELSE 0 END), SUM(CASE WHEN day >= :ms THEN output ELSE 0 END), "
            "SUM(CASE WHEN day >= :ms THEN cache_read ELSE 0 END), "
            "SUM(CASE WHEN day >= :ms THEN cache_write ELSE 0 END), "
            "SUM(CASE WHEN day >= :ms THEN cache_write_1h ELSE 0 END), "
            "SUM(CASE WHEN day >= :ms THEN requests ELSE 0 END) FROM usage "
            "WHERE source = :s AND day >= :p0 AND day <= :today "
            "GROUP BY provider, account_id, service_name, team, model",
            {"s": source, "ms": month_start.isoformat(), "p0": since.isoformat(), "today": through.isoformat()},
        )

    def hourly_by_series(self, source: str, hour: float) -> list[tuple[Any, ...]]:
        """One row per AI usage series of ``source`` with hourly usage in the day up to the hour at ``hour``.

        Columns: provider, account_id, service_name, team, model; then input, output, cache_read,
        cache_write and cache_write_1h tokens in the hour starting at ``hour`` (unix time; 0 for a series
        with none then).
        """
        return self.query(
            "SELECT provider, account_id, service_name, team, model, "
            "SUM(CASE WHEN hour = :h THEN input ELSE 0 END), SUM(CASE WHEN hour = :h THEN output ELSE 0 END), "
            "SUM(CASE WHEN hour = :h THEN cache_read ELSE 0 END), "
            "SUM(CASE WHEN hour = :h THEN cache_write ELSE 0 END), "
            "SUM(CASE WHEN hour = :h THEN cache_write_1h ELSE 0 END) "
            "FROM hourly WHERE source = :s AND hour > :h - 86400 AND hour <= :h "
            "GROUP BY provider, account_id, service_name, team, model",
            {"h": hour, "s": source},
        )

    def ai_cost_by_model(
        self, source: str, providers: Iterable[str], first: dt.date, last: dt.date, *, by_day: bool = False
    ) -> list[tuple[Any, ...]]:
        """(provider, account_id, model, USD): ``source``'s billed cost per AI model of ``providers``, ``first``
        through ``last`` (the index cost_series reads just those providers' rows, not a cloud's many others).
        ``by_day``: one row per day, the day (ISO) after the model."""
        provs = sorted(set(providers))
        if not provs:
            return []
        marks = ",".join("?" * len(provs))
        day = ", day" if by_day else ""
        table = self._cost_table(first)
        return [
            (*r[:-1], float(r[-1]))
            for r in self.query(
                f"SELECT provider, account_id, model{day}, SUM(cost_usd) FROM {table} INDEXED BY {table}_series "
                f"WHERE source = ? AND provider IN ({marks}) AND model != '' AND day BETWEEN ? AND ? "
                f"GROUP BY provider, account_id, model{day}",
                (source, *provs, first.isoformat(), last.isoformat()),
            )
        ]

    def usage_by_model(
        self, source: str, first: dt.date, last: dt.date, *, by_day: bool = False
    ) -> list[tuple[Any, ...]]:
        """(provider, account_id, model, then tokens by ``model.TOKEN_TYPES``) from ``first`` through ``last``.
        ``by_day``: one row per day, the day (ISO) after the model."""
        day = ", day" if by_day else ""
        return self.query(
            f"SELECT provider, account_id, model{day}, SUM(input), SUM(output), SUM(cache_read), SUM(cache_write), "
            f"SUM(cache_write_1h) FROM usage WHERE source = ? AND day BETWEEN ? AND ? "
            f"GROUP BY provider, account_id, model{day}",
            (source, first.isoformat(), last.isoformat()),
        )

    def key_usage_by_series(
        self, source: str, month_start: dt.date, since: dt.date, through: dt.date
    ) -> list[tuple[Any, ...]]:
        """One row per API key series of ``source`` with usage from ``since`` through ``through``.

        Columns: provider, account_id, service_name, team, model, api_key_id; then tokens by
        ``model.TOKEN_TYPES`` and requests from ``month_start`` on (0 for a key with none there).
        """
        this = ", ".join(f"SUM(CASE WHEN day >= :ms THEN {c} ELSE 0 END)" for c in (*_TOKENS.split(", "), "requests"))
        return self.query(
            f"SELECT provider, account_id, service_name, team, model, api_key_id, {this} FROM key_usage "
            "WHERE source = :s AND day >= :p0 AND day <= :today "
            "GROUP BY provider, account_id, service_name, team, model, api_key_id",
            {"s": source, "ms": month_start.isoformat(), "p0": since.isoformat(), "today": through.isoformat()},
        )

    def api_keys(self, source: str) -> list[tuple[str, str, str, str]]:
        """(provider, account_id, api_key_id, api_key_name) of every API key ``source``'s key lists named."""
        return [
            (r[0], r[1], r[2], r[3])
            for r in self.query(
                "SELECT provider, account_id, api_key_id, api_key_name FROM api_keys WHERE source=?", (source,)
            )
        ]

    def spend(
        self,
        sources: Iterable[str],
        first: dt.date,
        last: dt.date,
        group_by: Iterable[str] = (),
        *,
        monthly: bool = False,
        limit: int | None = None,
        deadline: float | None = None,
    ) -> list[tuple[Any, ...]]:
        """Cost per billing date of ``sources`` from ``first`` through ``last``, summed over everything but
        ``group_by`` (cost columns: ``SPEND_COLUMNS``, or ``labels``, the extra labels encoded): rows of the date
        (ISO day, or ``YYYY-MM`` when ``monthly``), the ``group_by`` values in that order, and the sum as an
        integer of nano-dollars (1e-9 USD: each stored amount rounded once, then summed exactly, so no float
        drift). Sorted by date, then by the values in order; the first ``limit`` rows at most.

        Read one calendar month at a time (through the index on day), in one read transaction
        (``CacheFile.read_aside``: a connection of its own, so a long read holds up neither refreshes nor snapshot
        builds): each month's rows sort apart, and reading stops once ``limit`` rows are in (every label by day
        over 800 days of a 6.5M-row cache: 3 s, not the 22 s of one statement over the range; docs/performance.md).
        ``deadline`` (``time.monotonic()``) stops it with ``QueryInterrupted``."""
        cols = list(group_by)
        bad = [c for c in cols if c not in (*SPEND_COLUMNS, "labels")]
        if bad or len(set(cols)) != len(cols):
            raise ValueError(f"not cost columns (or given twice): {cols}")
        names = sorted(set(sources))
        if not names or first > last:
            return []
        marks = ",".join("?" * len(names))
        # the day index, always: for every label the planner picks cost_series, and reads the whole source per month
        where = f"FROM cost INDEXED BY cost_source_day WHERE source IN ({marks}) AND day BETWEEN ? AND ?"
        total = "SUM(CAST(ROUND(cost_usd * 1e9) AS INTEGER))"
        labels = "".join(", " + c for c in cols)
        if not monthly:
            keys = ", ".join(["day", *cols])
            sql = f"SELECT day{labels}, {total} {where} GROUP BY {keys} ORDER BY {keys}"
        elif cols:  # one month's date is one value: group by the labels alone
            sql = f"SELECT ?{labels}, {total} {where} GROUP BY {', '.join(cols)} ORDER BY {', '.join(cols)}"
        else:  # one row, empty (a NULL sum) when the month has no cost row
            sql = f"SELECT ?, {total} {where}"
        months = []
        start = first
        while start <= last:
            nxt = (start.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
            months.append((start, min(last, nxt - dt.timedelta(days=1))))
            start = nxt

        def reads(read: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
            out: list[tuple[Any, ...]] = []
            for a, b in months:
                if limit is not None and len(out) >= limit:
                    break
                args = (*names, a.isoformat(), b.isoformat())
                more = f" LIMIT {limit - len(out)}" if limit is not None else ""
                out += [
                    r for r in read(sql + more, (a.isoformat()[:7], *args) if monthly else args) if r[-1] is not None
                ]
            return out

        return self._file.read_aside(reads, deadline)

    def provider_forecasts(self, source: str) -> list[tuple[str, str, float]]:
        """(provider, account_id, remaining USD): the provider's own forecast of the rest of the month."""
        return [
            (r[0], r[1], r[2])
            for r in self.query("SELECT provider, account_id, remaining_usd FROM forecasts WHERE source=?", (source,))
        ]

    def accounts(self, source: str) -> list[tuple[str, str, str]]:
        """(provider, account_id, account_name) of every account ``source`` named."""
        return [
            (r[0], r[1], r[2])
            for r in self.query("SELECT provider, account_id, account_name FROM accounts WHERE source=?", (source,))
        ]

    # -- the guard's actions (exporter.guard) ------------------------------------------
    def guard_claim(
        self, row: Mapping[str, Any], max_per_day: int, starts_at: float | None = None, rearm_after: float = 600.0
    ) -> tuple[int, str]:
        """Record an action about to run, in one transaction: (id, "pending"), or the reason it will not run.

        "duplicate": its rule and alert fingerprint already have a row that acts (a ``claim``); "limited":
        ``max_per_day`` rows already act on ``row["day"]``. Either is recorded too, as a row that does nothing.
        The one exception to "duplicate": a new firing of the alert (``starts_at``, the alert's ``startsAt``,
        more than ``rearm_after`` seconds after the last claim was made) when that claim's action is no longer
        in force (undone, or it changed nothing). Re-sends and an HA pair's copies carry the first ``startsAt``.
        """
        first = f"{row['rule']}\0{row['fingerprint']}"

        def write(c: sqlite3.Connection) -> tuple[int, str]:
            result, claim = "pending", first
            prev = c.execute(
                "SELECT created_at, result, changes, undone_at FROM guard_actions "
                "WHERE rule=? AND fingerprint=? AND claim IS NOT NULL ORDER BY id DESC LIMIT 1",
                (row["rule"], row["fingerprint"]),
            ).fetchone()
            if prev is not None:
                created, prev_result, changes, undone_at = prev
                in_force = undone_at is None and (
                    prev_result == "pending" or (prev_result in ("applied", "failed") and changes != "[]")
                )
                if in_force or starts_at is None or starts_at <= created + rearm_after:
                    result = "duplicate"
                else:
                    claim = f"{first}\0{starts_at:.3f}"  # the same new firing, delivered twice, still collides
                    if c.execute("SELECT 1 FROM guard_actions WHERE claim=?", (claim,)).fetchone():
                        result = "duplicate"
            if result == "pending":
                (n,) = c.execute(
                    "SELECT COUNT(*) FROM guard_actions WHERE day=? AND claim IS NOT NULL", (row["day"],)
                ).fetchone()
                if n >= max_per_day:
                    result = "limited"
            values = dict(row, claim=claim if result == "pending" else None, result=result)
            if result != "pending":
                values["finished_at"] = row["created_at"]
            cols = ", ".join(values)
            cur = c.execute(
                f"INSERT INTO guard_actions ({cols}) VALUES ({', '.join('?' * len(values))})", tuple(values.values())
            )
            return int(cur.lastrowid or 0), result

        return self._write(write)

    def guard_update(self, action_id: int, **fields: Any) -> None:
        """Set columns of one recorded action (its plan, then its result; its undo)."""
        sets = ", ".join(f"{k}=?" for k in fields)
        self._write(lambda c: c.execute(f"UPDATE guard_actions SET {sets} WHERE id=?", (*fields.values(), action_id)))

    def guard_actions(self, action_id: int | None = None) -> list[dict[str, Any]]:
        """Recorded actions, oldest first (or the one with ``action_id``), as column → value."""
        cols = (
            "id, created_at, finished_at, rule, action, mode, fingerprint, labels, provider, account_id, model, "
            "target, changes, result, error, undone_at, undo_detail"
        )
        where, args = ("WHERE id=?", (action_id,)) if action_id is not None else ("", ())
        rows = self.query(f"SELECT {cols} FROM guard_actions {where} ORDER BY id", args)
        names = [c.strip() for c in cols.split(",")]
        return [dict(zip(names, r, strict=True)) for r in rows]

    def guard_counts(self) -> list[tuple[str, str, str, int]]:
        """(rule, action, result, number of actions) of every finished action."""
        rows = self.query(
            "SELECT rule, action, result, COUNT(*) FROM guard_actions WHERE result != 'pending' "
            "GROUP BY rule, action, result ORDER BY rule, action, result"
        )
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    def guard_in_force(self) -> list[tuple[str, str, str, str]]:
        """(rule, action, provider, account_id) of actions that changed something and are not undone."""
        rows = self.query(
            "SELECT DISTINCT rule, action, provider, account_id FROM guard_actions "
            "WHERE changes != '[]' AND result IN ('applied', 'failed') AND undone_at IS NULL ORDER BY 1, 2, 3, 4"
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]


def _recent_from(c: sqlite3.Connection) -> str:
    """The first day (ISO; "" for all) from which ``cost_recent`` holds every cost row."""
    row = c.execute("SELECT value FROM meta WHERE key='recent_from'").fetchone()
    return str(row[0]) if row else ""


class _Stale(Exception):
    """A write happened since the snapshot was built: it is not saved."""

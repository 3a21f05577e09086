"""The cache's tables: their SQL, the schema version, and the checks that a file holds them.

``exporter.cachefile`` calls ``check_tables`` on a file before anything writes to it (a file of
another program is moved aside, not altered) and ``create_tables`` once it is open; the store
(``exporter.store``) reads and writes the tables.
"""

from __future__ import annotations

import sqlite3

from exporter.cachefile import CacheFileError

SCHEMA_VERSION = 3
# 2: usage and hourly gain cache_write_1h (1-hour prompt-cache writes); a version 1 file is migrated in place
# 3: cost gains labels (the extra labels of attribution.labels, attribution.encode_labels; '' when none) and
#    cost_series groups by it; a version 1 or 2 file is migrated in place

CHECK_AFTER_START = frozenset({"cost"})
"""Tables that serving does not read (the snapshot reads ``cost_recent``): after an unclean stop they are checked
with the whole file after start, not before (``exporter.cachefile``)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cost (
    source TEXT NOT NULL, day TEXT NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL,
    service_name TEXT NOT NULL, team TEXT NOT NULL, model TEXT NOT NULL, cost_usd REAL NOT NULL,
    labels TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS cost_source_day ON cost (source, day);
-- covers the snapshot's aggregation: rows come out grouped by series, no sort (8x faster at 100k series)
CREATE INDEX IF NOT EXISTS cost_series
    ON cost (source, provider, account_id, service_name, team, model, labels, day, cost_usd);
-- the recent days of cost (from meta.recent_from on), a copy the store keeps equal to cost's: the snapshot reads
-- these, so that its build reads as many rows with 400 days held as with 70 (docs/performance.md, "History")
CREATE TABLE IF NOT EXISTS cost_recent (
    source TEXT NOT NULL, day TEXT NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL,
    service_name TEXT NOT NULL, team TEXT NOT NULL, model TEXT NOT NULL, cost_usd REAL NOT NULL,
    labels TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS cost_recent_day ON cost_recent (source, day);
CREATE INDEX IF NOT EXISTS cost_recent_series
    ON cost_recent (source, provider, account_id, service_name, team, model, labels, day, cost_usd);
-- each source's history (exporter.history): every day from fetched_from on has been fetched; the last try's error
CREATE TABLE IF NOT EXISTS history (
    source TEXT PRIMARY KEY, fetched_from TEXT, last_attempt REAL, last_error TEXT
);
CREATE TABLE IF NOT EXISTS usage (
    source TEXT NOT NULL, day TEXT NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL,
    service_name TEXT NOT NULL, team TEXT NOT NULL, model TEXT NOT NULL,
    input INTEGER NOT NULL, output INTEGER NOT NULL, cache_read INTEGER NOT NULL,
    cache_write INTEGER NOT NULL, requests INTEGER NOT NULL, cache_write_1h INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS usage_source_day ON usage (source, day);
CREATE TABLE IF NOT EXISTS hourly (
    source TEXT NOT NULL, hour REAL NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL,
    service_name TEXT NOT NULL, team TEXT NOT NULL, model TEXT NOT NULL,
    input INTEGER NOT NULL, output INTEGER NOT NULL, cache_read INTEGER NOT NULL,
    cache_write INTEGER NOT NULL, requests INTEGER NOT NULL, cache_write_1h INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS hourly_source ON hourly (source, hour);
-- AI usage by API key (spend_ai_key_cost_month_to_date_usd), one row per day and series, replaced with the days
CREATE TABLE IF NOT EXISTS key_usage (
    source TEXT NOT NULL, day TEXT NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL,
    service_name TEXT NOT NULL, team TEXT NOT NULL, model TEXT NOT NULL, api_key_id TEXT NOT NULL,
    input INTEGER NOT NULL, output INTEGER NOT NULL, cache_read INTEGER NOT NULL,
    cache_write INTEGER NOT NULL, cache_write_1h INTEGER NOT NULL, requests INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS key_usage_source_day ON key_usage (source, day);
-- covers the snapshot's per-key read (Store.key_usage_by_series), as cost_series does: no sort (6x faster at 3000 keys)
CREATE INDEX IF NOT EXISTS key_usage_series ON key_usage (
    source, provider, account_id, service_name, team, model, api_key_id, day,
    input, output, cache_read, cache_write, cache_write_1h, requests
);
-- the API keys' names (spend_ai_key_info), as the provider's key list last gave them
CREATE TABLE IF NOT EXISTS api_keys (
    source TEXT NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL, api_key_id TEXT NOT NULL,
    api_key_name TEXT NOT NULL, PRIMARY KEY (source, provider, account_id, api_key_id)
);
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
-- the guard's actions (exporter.guard), recorded before they run and again with their result; "claim" is
-- rule + NUL + alert fingerprint (+ NUL + startsAt for a later firing, Store.guard_claim) on the rows that act
-- (NULL on "duplicate" and "limited" rows), so that two deliveries of one alert cannot both act, whichever
-- process or thread writes first
CREATE TABLE IF NOT EXISTS guard_actions (
    id INTEGER PRIMARY KEY, claim TEXT UNIQUE, created_at REAL NOT NULL, day TEXT NOT NULL, finished_at REAL,
    rule TEXT NOT NULL, action TEXT NOT NULL, mode TEXT NOT NULL, fingerprint TEXT NOT NULL, labels TEXT NOT NULL,
    provider TEXT NOT NULL, account_id TEXT NOT NULL, model TEXT NOT NULL, target TEXT NOT NULL DEFAULT '',
    changes TEXT NOT NULL DEFAULT '[]', result TEXT NOT NULL, error TEXT, undone_at REAL, undo_detail TEXT
);
-- the audit trail (docs/audit.md): every raw page of a refresh of a source with raw_retention, its request
-- (secrets stripped) and its JSON, zlib-compressed; the fetch's window and context, from which recompute parses
CREATE TABLE IF NOT EXISTS raw_fetches (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, fetched_at REAL NOT NULL, config_hash TEXT NOT NULL,
    fetch_window TEXT NOT NULL, context BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS raw_fetches_source ON raw_fetches (source, fetched_at);
CREATE TABLE IF NOT EXISTS raw_pages (
    fetch_id INTEGER NOT NULL, seq INTEGER NOT NULL, operation TEXT NOT NULL, request TEXT NOT NULL,
    meta TEXT NOT NULL, size INTEGER NOT NULL, body BLOB NOT NULL, PRIMARY KEY (fetch_id, seq)
);
-- the last published snapshot, valid only while meta.generation is still the one it was built at
CREATE TABLE IF NOT EXISTS snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 1), key TEXT NOT NULL, generation INTEGER NOT NULL,
    meta TEXT NOT NULL, body BLOB NOT NULL
);
"""


def _expected_columns() -> dict[str, list[str]]:
    conn = sqlite3.connect(":memory:")
    conn.executescript(_SCHEMA)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    out = {t: [c[1] for c in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
    conn.close()
    return out


_COLUMNS = _expected_columns()


# columns added since version 1, by table: (name, definition), appended in this order by the migration
_ADDED = {
    "cost": [("labels", "TEXT NOT NULL DEFAULT ''")],
    "cost_recent": [("labels", "TEXT NOT NULL DEFAULT ''")],
    "usage": [("cache_write_1h", "INTEGER NOT NULL DEFAULT 0")],
    "hourly": [("cache_write_1h", "INTEGER NOT NULL DEFAULT 0")],
}


def check_tables(conn: sqlite3.Connection) -> None:
    """A table of ours with other columns (another program's file, a hand-edited one) is not a cache we can use.

    A version 1 table, without the columns added since, is ours: ``create_tables`` migrates it.
    """
    for table, want in _COLUMNS.items():
        have = [c[1] for c in conn.execute(f"PRAGMA table_info({table})")]
        older = want[: len(want) - len(_ADDED.get(table, []))]
        if have and have != want and have != older:
            raise CacheFileError(f"table {table} has columns {', '.join(have)}, not the cache schema's")


def create_tables(conn: sqlite3.Connection) -> None:
    """Create what is missing, merge rows of an older cache once; a file of another schema version raises."""
    had_series_index = conn.execute("SELECT 1 FROM sqlite_master WHERE name='cost_series'").fetchone()
    check_tables(conn)
    _migrate(conn)
    conn.executescript(_SCHEMA)
    if not had_series_index:
        _merge_cost_duplicates(conn)
    if conn.execute("SELECT 1 FROM meta WHERE key='recent_from'").fetchone() is None:
        _fill_cost_recent(conn)
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    elif row[0] in ("1", "2"):  # migrated above
        conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
    elif row[0] != str(SCHEMA_VERSION):
        raise CacheFileError(f"schema version {row[0]} is not {SCHEMA_VERSION}")
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")


def _migrate(conn: sqlite3.Connection) -> None:
    """An older cache gets the columns added since, in place and in one transaction (its rows read 0 or '' there).

    Version 3's ``labels`` of ``cost`` and ``cost_recent`` changes their covering indexes (``cost_series``,
    ``cost_recent_series``): they are dropped here and made again with the new column by ``_SCHEMA``.

    The user's cache is never moved aside for a new column: its history may hold more days than the
    billing APIs still return.
    """
    missing = []
    for table, added in _ADDED.items():
        have = {c[1] for c in conn.execute(f"PRAGMA table_info({table})")}
        if have:
            missing += [(table, name, ddl) for name, ddl in added if name not in have]
    if not missing:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, name, ddl in missing:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}")
            if name == "labels":  # the covering index of the table, made again with labels by _SCHEMA
                conn.execute(f"DROP INDEX IF EXISTS {table}_series")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _fill_cost_recent(conn: sqlite3.Connection) -> None:
    """A cache written before cost_recent: copy its cost rows once (all of them; the next prune trims the copy)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM cost_recent")
        conn.execute("INSERT INTO cost_recent SELECT * FROM cost")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('recent_from', '')")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _merge_cost_duplicates(conn: sqlite3.Connection) -> None:
    """A cache written before one-row-per-day-and-series: merge its duplicate rows once."""
    cols = "source, day, provider, account_id, service_name, team, model"
    # (a cache this old has no extra labels: every row's labels is '', restored by the column's default)
    dup = conn.execute(f"SELECT 1 FROM cost GROUP BY {cols} HAVING COUNT(*) > 1 LIMIT 1").fetchone()
    if not dup:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"CREATE TEMP TABLE merged AS SELECT {cols}, SUM(cost_usd) FROM cost GROUP BY {cols}")
        conn.execute("DELETE FROM cost")
        conn.execute(f"INSERT INTO cost ({cols}, cost_usd) SELECT * FROM merged")
        conn.execute("DROP TABLE merged")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")

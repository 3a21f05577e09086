"""The cache file: opening it, and keeping the exporter running whatever happens to it.

Faults never stop the exporter (docs/runbook.md, "The cache"): a corrupted file,
or one with another schema, is moved aside to ``<path>.corrupt-<unix time>`` and
an empty cache is started; a cache that cannot be written (read-only directory
or file, full disk) is replaced by an in-memory copy of what it held, so the
exporter keeps serving and refreshing but keeps nothing across a restart.
Each is one log line naming the path and the problem, and shows in ``/status``.

After an unclean stop the file is checked (``PRAGMA quick_check``) before it is
used; after a clean one the check runs in the background, and damage it finds
is handled like damage found by a read or a write: the file is moved aside while
the exporter serves, and ``on_reset`` tells the engine.

What the file holds is the schema's business (``exporter.cacheschema``); this
module only needs its ``meta (key, value)`` table, where the clean-close flag is kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
# read(sql, args) -> all rows: what CacheFile.read_aside hands its function
Reader = Callable[[str, tuple[Any, ...] | dict[str, Any]], list[tuple[Any, ...]]]

log = logging.getLogger(__name__)

# SQLite primary result codes meaning "this cache cannot be written here", as opposed to a damaged file
_UNWRITABLE = {3: "permission denied", 8: "read-only", 10: "disk I/O error", 13: "disk is full", 14: "cannot open"}


class CacheFileError(Exception):
    """The file is not a cache this exporter can use (damaged, truncated, or of another schema)."""


# the page cache (KiB) of a read_aside connection: one at a time (exporter.spendapi), freed when it closes
ASIDE_CACHE_KB = 64 << 10


class QueryInterrupted(Exception):
    """A ``read_aside`` ran past its deadline and was stopped."""


def _unwritable(e: BaseException) -> bool:
    return isinstance(e, sqlite3.Error) and (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF in _UNWRITABLE


def _damaged(e: BaseException) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB: the file's content is wrong, not its permissions or room."""
    return isinstance(e, sqlite3.DatabaseError) and (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF in (11, 26)


def describe(e: BaseException) -> str:
    """``e`` for a log line, naming what an unwritable-file error code means when its message does not."""
    code = (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF
    return f"{e}" if code not in _UNWRITABLE or _UNWRITABLE[code] in str(e) else f"{_UNWRITABLE[code]}: {e}"


def _quick_check(conn: sqlite3.Connection, table: str | None = None) -> None:
    """The whole file, or (SQLite 3.33+) one table and its indexes."""
    ok = conn.execute("PRAGMA quick_check" + (f'("{table}")' if table else "")).fetchone()
    if not ok or ok[0] != "ok":
        raise CacheFileError(f"integrity check failed: {ok[0] if ok else 'no answer'}")


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
        raise CacheFileError(f"truncated: {os.path.getsize(path)} bytes where its header says {pages}")
    return True


class CacheFile:
    """One SQLite connection to the cache at ``path``, shared by every thread under one lock.

    ``check_tables(conn)`` raises ``CacheFileError`` for a file whose tables are not the schema's;
    ``create_tables(conn)`` creates them (with ``meta``) and raises for another schema version.
    ``persistent`` is False when the cache could not be kept in its file and runs in memory;
    ``problem`` then says why (it is logged once, and ``/status`` shows it). ``on_reset`` callbacks
    run when a damaged file found while running was replaced by an empty cache.
    """

    def __init__(
        self,
        path: str | Path,
        check_tables: Callable[[sqlite3.Connection], None],
        create_tables: Callable[[sqlite3.Connection], None],
        shared: bool = False,
        check_after_start: frozenset[str] = frozenset(),
    ) -> None:
        """``shared``: a file a running exporter holds (``guard list``, ``guard undo``): no check, no clean-close
        flag, no recovery (a fault raises: only the exporter that owns the file may move it aside).
        ``check_after_start``: tables that serving does not read, whose check after an unclean stop waits for the
        whole file's check after start (the history's days: checking them first would make the start as slow as
        the file is large)."""
        self.path = str(path)
        self.shared = shared
        self.persistent = self.path != ":memory:"
        self.problem: str | None = None
        self.on_reset: list[Callable[[], None]] = []
        self._check_tables = check_tables
        self._create_tables = create_tables
        self._check_after_start = check_after_start
        self._lock = threading.RLock()
        self._check_later = False
        self._resets = 0
        self._closed = False
        self._conn = self._open()
        if self._check_later:
            threading.Thread(target=self._background_check, name="cache-check", daemon=True).start()

    # -- opening and recovery -------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        if self.path == ":memory:" or self.shared:
            return self._connect(self.path)
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            return self._connect(self.path)
        except OSError as e:
            return self._to_memory(f"cannot create its directory ({e.strerror or e})")
        except (sqlite3.DatabaseError, CacheFileError) as e:
            if _unwritable(e):
                return self._to_memory(f"cannot be written ({describe(e)})", copy_file=True)
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
        except (sqlite3.DatabaseError, CacheFileError) as e2:
            return self._to_memory(f"cannot be created ({describe(e2)})")

    def _connect(self, path: str) -> sqlite3.Connection:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            if path != ":memory:" and self.shared:
                self._check_tables(conn)
            elif path != ":memory:":
                self._check_tables(conn)  # before anything writes to a file that may not be ours
                clean = _closed_cleanly(conn, path)
                if clean:
                    # reading the whole file takes ~2 ms a MB: after a clean shutdown it runs after start instead
                    self._check_later = True
                elif clean is False and self._check_after_start:
                    # what serving reads first (table by table), then the whole file after start, as after a
                    # clean stop: damage it finds there is handled like damage a read finds
                    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
                        if table not in self._check_after_start:
                            _quick_check(conn, table)
                    self._check_later = True
                    msg = "cache file %s was not closed cleanly (a crash or kill -9); the tables it serves checked ok"
                    log.info(msg, path)
                else:
                    _quick_check(conn)
                    if clean is False:
                        log.info("cache file %s was not closed cleanly (a crash or kill -9); it checked ok", path)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            self._create_tables(conn)
            if path != ":memory:" and not self.shared:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('closed_cleanly', '0')")
        except Exception:
            conn.close()
            raise
        return conn

    def _background_check(self) -> None:
        resets = self._resets
        if sys.platform == "linux":  # this thread only (a TID): the check reads the whole file, a start must not wait
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            # read-only: never creates a file at a path a test or an operator has just removed
            uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=30)
            try:
                _quick_check(conn)
            finally:
                conn.close()
        except (sqlite3.DatabaseError, CacheFileError) as e:
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
            self._create_tables(mem)
        except (sqlite3.Error, CacheFileError):
            mem.close()
            mem = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            self._create_tables(mem)
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

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.persistent and not self.shared:
                try:
                    self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('closed_cleanly', '1')")
                except sqlite3.Error:
                    pass  # then the next start checks the whole file, which is what an unclean stop deserves
            self._conn.close()

    # -- reading and writing ------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write, as it is: no recovery (``write`` adds it)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
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

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a transaction; on a damaged file, or one that cannot be written, recover and run it again."""
        with self._lock:
            try:
                with self.transaction() as c:
                    return fn(c)
            except sqlite3.DatabaseError as e:
                if self.shared:
                    raise
                if self.persistent and _damaged(e):
                    self._reset(e)
                    with self.transaction() as c:
                        return fn(c)
                if not self.persistent or not _unwritable(e):
                    raise
                old = self._conn
                self._conn = self._to_memory(f"cannot be written ({describe(e)})", copy=old)
                try:
                    old.close()
                except sqlite3.Error:
                    pass
            with self.transaction() as c:
                return fn(c)

    def read_aside(self, fn: Callable[[Reader], T], deadline: float | None = None) -> T:
        """Long reads: ``fn(read)`` runs ``read(sql, args)`` (all rows of one statement) as often as it needs, in one
        read transaction (one consistent state of the cache) on a read-only connection of its own, outside the
        lock, so that it holds up no refresh, write or snapshot build (WAL). A cache in memory has one connection
        only: there it runs under the lock. Past ``deadline`` (``time.monotonic()``) the statement running is
        stopped and ``QueryInterrupted`` raised. A damaged file found here is moved aside as by ``read``, and the
        error raised."""
        if not self.persistent or self.shared or self._closed:
            with self._lock:
                return self._reads(self._conn, fn, deadline)
        resets = self._resets
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
        try:
            # room for the GROUP BY's sorts: with the default 2 MB they spill to temporary files far sooner
            conn.execute(f"PRAGMA cache_size=-{ASIDE_CACHE_KB}")
            return self._reads(conn, fn, deadline)
        except sqlite3.DatabaseError as e:
            if _damaged(e):
                self._reset(e, resets)
            raise
        finally:
            conn.close()

    @staticmethod
    def _reads(conn: sqlite3.Connection, fn: Callable[[Reader], T], deadline: float | None) -> T:
        if deadline is not None:
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        conn.execute("BEGIN")
        try:
            return fn(lambda sql, args: conn.execute(sql, args).fetchall())
        except sqlite3.OperationalError as e:
            if deadline is not None and time.monotonic() > deadline and "interrupt" in str(e):
                raise QueryInterrupted("the read ran past its deadline") from None
            raise
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.set_progress_handler(None, 0)

    def read(self, sql: str, args: tuple[Any, ...] | dict[str, Any]) -> list[tuple[Any, ...]]:
        """All rows of one statement; a damaged file is replaced by an empty cache, which is then read."""
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as e:
                if self.shared or not _damaged(e):
                    raise
                self._reset(e)
                return self._conn.execute(sql, args).fetchall()

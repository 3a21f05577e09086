"""FinOps FOCUS 1.0–1.2 cost exports (CSV or Parquet, local files and globs) through DuckDB.

Reads what AWS Data Exports, Azure FocusCost exports, OCI FOCUS reports and
our demo generator write. The files are read by DuckDB in a reader process
started for each refresh (``focus_reader``); this module turns what it sends
back into records. Files added to the glob are picked up at the next refresh.

Optional columns beyond FOCUS, used where present: ``x_Model`` (AI model),
``x_TokenType`` (input|output|cache_read|cache_write|cache_write_1h) with ``ConsumedQuantity``
in ``ConsumedUnit`` ``Tokens``, and ``Requests`` rows for request counts.
"""

from __future__ import annotations

import datetime as dt
import gc
import glob
import hashlib
import json
import os
import pickle
import subprocess
import sys
from typing import Any

from exporter.model import AccountInfo, CostRows, FetchResult, FetchWindow, RawFetch
from exporter.providers.base import ProviderContext, SourceError, labels_from_tags
from exporter.providers.focus_reader import FocusRead, FocusReader
from exporter.providers.focus_records import add_usage, hourly_records, normalise_provider, usage_records
from exporter.sources.focus import FocusSource

# The reader's stderr kept for an error message: enough for DuckDB's or Python's last words
STDERR_TAIL = 2000


class FocusProvider:
    """Aggregates FOCUS files by UTC day, provider, sub-account, service, team tag and model."""

    def __init__(self, config: FocusSource, ctx: ProviderContext) -> None:
        self.config = config
        self.ctx = ctx
        self._tag_cache: dict[str, str | None] = {}
        self._keys = [k.strip().lower() for k in ctx.team_tag_keys]
        self._athena: Any = None
        if config.engine == "athena":
            from exporter.providers.focus_athena import AthenaFocus  # imports boto3: only when configured

            self._athena = AthenaFocus(config, ctx)

    def close(self) -> None:
        if self._athena is not None:
            self._athena.close()

    def files(self) -> list[str]:
        out: set[str] = set()
        for pattern in self.config.paths:
            out.update(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
        return sorted(out)

    def labels_from_tags(self, tags: str | None) -> tuple[tuple[str, str], ...]:
        """The extra labels (``attribution.labels``) found in a FOCUS ``Tags`` value (a JSON object)."""
        if not tags or not self.ctx.extra_labels:
            return ()
        try:
            obj = json.loads(tags)
        except ValueError:
            return ()
        return labels_from_tags(obj, self.ctx.extra_labels) if isinstance(obj, dict) else ()

    def team_from_tags(self, tags: str | None) -> str | None:
        if not tags:
            return None
        if tags in self._tag_cache:
            return self._tag_cache[tags]
        team: str | None = None
        try:
            obj = json.loads(tags)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            lowered = {str(k).strip().lower(): v for k, v in obj.items()}
            for key in self._keys:
                v = lowered.get(key)
                if v is not None and str(v).strip() and str(v).strip().upper() != "NULL":
                    # a JSON escape like "\udcff" decodes to a lone surrogate, which no UTF-8 store accepts
                    team = str(v).strip().encode("utf-16", "surrogatepass").decode("utf-16", "replace")
                    break
        if len(self._tag_cache) < 100_000:
            self._tag_cache[tags] = team
        return team

    def fetch(self, window: FetchWindow) -> FetchResult:
        if self._athena is not None:
            result: FetchResult = self._athena.fetch(window)
            return result
        files = self.files()
        if not files:
            raise SourceError(f"no files match {', '.join(self.config.paths)}")
        # the audit trail keeps what was read, not a copy of it: each file's name, size, time and SHA-256
        manifest = _manifest(files) if self.config.raw_retention > 0 else None
        with self.ctx.api_call("read_files"):
            read = self._read_in_child(files, window)
        result = self._result(read, window)
        result.raw = manifest
        return result

    def _read_in_child(self, files: list[str], window: FetchWindow) -> FocusRead:
        """The files read by ``FocusReader`` in a process of its own (``python -m exporter.providers.focus_reader``).

        DuckDB's memory (up to ``memory_limit``, and what its allocator keeps afterwards) goes back to the OS
        when the reader exits, instead of staying in the exporter between refreshes; a crash or an
        out-of-memory kill inside DuckDB fails this refresh instead of the exporter; a refresh timeout kills a
        runaway query instead of leaving it running in an abandoned thread; and the reader, at nice 10, takes
        neither the CPU nor the GIL from the scrapes.
        """
        reader = FocusReader(
            self.config.cost_column, self.config.memory_limit, self.config.threads, self.ctx.scratch_dir
        )
        request = pickle.dumps((reader, files, window), pickle.HIGHEST_PROTOCOL)
        timeout = self.ctx.remaining_seconds(self.config.timeout)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "exporter.providers.focus_reader"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C at the terminal stops the exporter, which then ends the reader
            )
        except OSError as e:
            raise SourceError(f"could not start the FOCUS reader process: {e.strerror or e}") from None
        try:
            out, err = proc.communicate(request, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SourceError(
                f"reading the FOCUS files took longer than the {timeout:.1f}s left for this refresh; stopped"
            ) from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        if proc.returncode == 0 and out:
            try:
                kind, payload = pickle.loads(out)
            except Exception as e:  # a reader that wrote something else (a library printing to stdout)
                kind, payload = "error", f"the FOCUS reader process sent a reply that could not be read: {e}"[:300]
            if kind == "ok" and isinstance(payload, FocusRead):
                return payload
            raise SourceError(str(payload))
        how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited {proc.returncode}"
        if proc.returncode == -9:
            how += " (out of memory? see memory_limit)"
        tail = err.decode("utf-8", "replace").strip()[-STDERR_TAIL:]
        raise SourceError(f"the FOCUS reader process {how}" + (f": {tail}" if tail else ""))

    def _result(self, read: FocusRead, window: FetchWindow) -> FetchResult:
        """The records of what the reader sent: providers normalised and teams found once per series."""
        if read.bad:
            self.ctx.log.warning(
                "source %s: %d FOCUS rows have no parsable ChargePeriodStart or cost", self.ctx.source_name, read.bad
            )
        series = [
            (normalise_provider(p), a, s, cur, self.team_from_tags(t), m, self.labels_from_tags(t))
            for p, a, s, cur, t, m in read.series
        ]
        days = window.days()
        # in CostRecord's field order; a million tuples with no cycles among them: the cyclic GC would only walk
        # them again and again while they are built (a quarter of the time)
        paused = gc.isenabled()
        gc.disable()
        try:
            costs = CostRows(
                [
                    (days[d], p, a, s, amount, cur, t, m, lab)
                    for d, i, amount in zip(*read.costs, strict=True)
                    for p, a, s, cur, t, m, lab in (series[i],)
                ]
            )
        finally:
            if paused:
                gc.enable()
        usage: dict[tuple[Any, ...], dict[str, int]] = {}
        for day, prov, acct, svc, tags, model, unit, token_type, qty in read.usage:
            key = (day, normalise_provider(prov), acct, svc, self.team_from_tags(tags), model)
            add_usage(usage.setdefault(key, {}), unit, token_type, qty)
        hourly: dict[tuple[Any, ...], dict[str, int]] = {}
        for ts, prov, acct, svc, tags, model, unit, token_type, qty in read.hourly:
            key = (ts, normalise_provider(prov), acct, svc, self.team_from_tags(tags), model)
            add_usage(hourly.setdefault(key, {}), unit, token_type, qty)
        accounts = [AccountInfo(normalise_provider(p), a, n) for p, a, n in read.accounts]
        through = read.through
        if through is not None and not isinstance(through, dt.datetime):
            through = window.now  # DuckDB gives a string for a year Python cannot hold (ChargePeriodEnd 99999-01-01)
        data_through = min(through, window.now) if through is not None else None
        return FetchResult(
            days=days,
            costs=costs,
            usage=usage_records(usage),
            hourly=hourly_records(hourly),
            accounts=accounts,
            data_through=data_through,
            skipped={"unparsable_row": read.bad} if read.bad else {},
        )


def _manifest(files: list[str]) -> RawFetch:
    """One page per file: its path, size, modification time and SHA-256 (read in 1 MiB blocks)."""
    raw = RawFetch()
    for path in files:
        digest = hashlib.sha256()
        try:
            st = os.stat(path)
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError as e:
            raise SourceError(f"{path}: {e.strerror or e}") from None
        modified = dt.datetime.fromtimestamp(st.st_mtime, dt.UTC).isoformat()
        body = {"path": path, "bytes": st.st_size, "modified": modified, "sha256": digest.hexdigest()}
        raw.add("file", {"method": "READ", "path": os.path.abspath(path)}, body)
    return raw

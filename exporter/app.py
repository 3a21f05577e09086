"""The engine: config, store, providers and the current snapshot, wired together.

It refreshes a source on request (``refresh``) and says when each is next due (``due_at``, by the rules
of ``exporter.timing``); ``exporter.scheduler`` calls both when they are due. ``exporter.status`` reports
on it and ``exporter.normalise`` turns what a provider fetched into the store's rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from exporter import audit, burn, history, timing, warmstart
from exporter.attribution import Resolver
from exporter.config import Config
from exporter.exposition import clean_label_value
from exporter.fetcher import SourceFetcher
from exporter.guard import Guard
from exporter.model import FetchResult, FetchWindow, MinuteUsage
from exporter.normalise import data_through, normalise
from exporter.pricing import PriceTable
from exporter.providers.base import PaidCallCapReached, SourceError, Throttled
from exporter.snapshot import Snapshot, SnapshotBuilder
from exporter.sources import SOURCES
from exporter.sources.admin_api import AdminApiSource
from exporter.sources.base import SourceBase
from exporter.store import SourceState, Store

log = logging.getLogger(__name__)


@dataclass
class RefreshOutcome:
    source: str
    ok: bool
    records: int = 0
    duration: float = 0.0
    error: str | None = None
    skipped: bool = False  # not attempted (paid-call cap reached)


@dataclass
class Runtime:
    """What the process knows about a source beyond the store."""

    attempted: bool = False
    records: int = 0
    refreshing: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    refresh_usd: float = 0.0  # paid calls of the last refresh: the history leaves them for the day's refreshes


@dataclass
class BurnState:
    """A source's burn rate: the last good window, and when its light refresh is next due."""

    data: burn.BurnData | None = None
    failures: int = 0
    next_at: float = 0.0  # unix time; 0: due now
    last_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def burn_backoff(src: AdminApiSource, failures: int, retry_after: float | None = None) -> float:
    """Seconds to the next burn fetch after ``failures`` failures in a row: doubled from ``burn_interval``,
    at most ``burn_window`` (so staleness is judged again well before the rate is withdrawn)."""
    delay = min(src.burn_interval * 2 ** max(failures - 1, 0), src.burn_window)
    if retry_after:
        delay = max(delay, min(retry_after, src.burn_window))
    return float(delay)


BURN_PHASE = 5.0  # seconds after the minute at which burn refreshes run: the API's grace to publish a minute
BURN_MIN_GAP = 15.0  # seconds: never two burn refreshes closer than this


def burn_next_at(now: float, interval: float) -> float:
    """When the burn refresh after a good one at ``now`` runs: the last minute boundary + ``BURN_PHASE`` at
    or before ``now + interval``, or the one after it if that is less than ``BURN_MIN_GAP`` away.

    ``burn_delay`` is whole minutes, so the newest complete minute changes on minute boundaries. A refresh
    just after one reads that minute as soon as it may; a refresh at any other phase would wait for it up
    to a minute longer (bench/runaway.py: the page would come up to 11.5 minutes after the loop started
    instead of 9.6). Off phase (the first refresh, or one after a failure), the next comes early.
    """
    aligned = (now + interval - BURN_PHASE) // 60 * 60 + BURN_PHASE
    return aligned if aligned - now >= BURN_MIN_GAP else aligned + 60


def _source_hash(src: SourceBase, config: Config | None = None) -> str:
    """Hash of the settings that change what is fetched (all but the source type's ``FETCH_NEUTRAL`` keys).

    With extra labels configured (``attribution.labels``), they and the rules' ``labels`` count too: the store
    holds their values, so a change is a re-fetch (as a changed source); none configured leaves the hash as it was.
    """
    data = src.model_dump(mode="json", exclude=set(src.FETCH_NEUTRAL))
    # history_days was hashed, at its default of 35, before it became fetch-neutral: hashing that constant
    # keeps the caches written then (their history is fetched, not the whole cache again)
    data["history_days"] = 35
    if config is not None and config.attribution.labels:
        a = config.attribution
        data = {"source": data, "labels": [lab.model_dump(mode="json") for lab in a.labels]}
        data["rule_labels"] = [[r.match.model_dump(mode="json"), r.labels] for r in a.rules if r.labels]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class App:
    """The engine: refreshes sources into the store and publishes the snapshot ``/metrics`` serves."""

    def __init__(
        self,
        config: Config,
        now: Callable[[], dt.datetime] = timing.utc_now,
        rng: random.Random | None = None,
        store: Store | None = None,
        stale_ok: bool = False,
        one_shot: bool = False,
    ) -> None:
        """``rng``: the jitter of the next refresh times.
        ``stale_ok``: start on a saved snapshot from an earlier hour of today (``run``; see warmstart).
        ``one_shot``: a command that refreshes once and exits (``check``, ``once``): no "next try" to announce."""
        self.config = config
        self.one_shot = one_shot
        self.now = now
        self.rng = rng or random.Random()
        self.store = store or Store(config.cache_path)
        self.resolver = Resolver(config)
        self._sources = {s.name: s for s in config.sources}
        self._hashes = {s.name: _source_hash(s, config) for s in config.sources}
        self._provider_names = {s.name: SOURCES[s.type].provider for s in config.sources}
        self._fetchers = {
            s.name: SourceFetcher(
                s,
                self.store,
                now,
                team_tag_keys=config.attribution.team_tag_keys,
                cache_path=config.cache_path,
                extra_labels=[(lab.name, lab.tag_keys) for lab in config.attribution.labels],
            )
            for s in config.sources
        }
        self._rt = {s.name: Runtime() for s in config.sources}
        self._burn = {s.name: BurnState() for s in config.sources if isinstance(s, AdminApiSource)}
        self._snapshot_lock = threading.Lock()
        self.prices = PriceTable.load(
            {m: {str(k): v for k, v in p.items()} for m, p in config.pricing.items()}, at=self.now()
        )
        self._estimate: burn.Estimate = _estimator(self.prices)
        self._burn_unpriced_logged: set[tuple[str, str]] = set()
        self.builder = SnapshotBuilder(
            config,
            self.store,
            {s.name: (self._provider_names[s.name], SOURCES[s.type].api, s.interval) for s in config.sources},
            prices=self.prices,
        )
        # billed ÷ list price per provider, account_id, model, from the latest build
        self._ratio: burn.Ratio = self.builder.price_ratio
        self._drop_stale_sources()
        self.store.on_reset.append(self.builder.invalidate)  # a damaged cache was replaced by an empty one
        self._snapshot_key = warmstart.snapshot_key(config, self.prices.version)
        self.snapshot_restored = False  # serving the snapshot saved before the restart
        self.snapshot_stale = False  # ... and it is from an earlier hour: rebuild_snapshot() soon
        # the burn rate's scale (price ratios) before a build: loaded at the first burn refresh, not at start
        # (pricing the ratios loads the price table: 1-2 s that a restart on the saved snapshot need not wait)
        self._ratios_pending = True
        restored = warmstart.load(self.store, self._snapshot_key, self.now(), stale_ok)
        if restored is not None:
            self._snapshot: Snapshot = restored[0]
            self.snapshot_restored, self.snapshot_stale = True, not restored[1]
        else:
            self._snapshot = self.rebuild_snapshot()
        # POST /-/guard/alertmanager: an action's result republishes the snapshot (spend_guard_* families)
        self.guard = Guard(config, self.store, now, on_change=self.rebuild_snapshot)

    # -- helpers -------------------------------------------------------------------------
    def source_names(self) -> list[str]:
        return list(self._sources)

    def source(self, name: str) -> SourceBase:
        return self._sources[name]

    def provider_name(self, name: str) -> str:
        """The ``provider`` label of the source's type."""
        return self._provider_names[name]

    def runtime(self, name: str) -> Runtime:
        return self._rt[name]

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def exposition(self) -> str:
        return self._snapshot.text.decode()

    def rebuild_snapshot(self, save: bool = True) -> Snapshot:
        """Build and publish the snapshot; ``save``: keep it in the cache for a warm restart (not for the burn's)."""
        with self._snapshot_lock:
            now = self.now()
            # every write happens inside a refresh: with none running, this build matches the data at this
            # generation, and save() keeps it only if no write happened before it is stored
            consistent = not any(rt.refreshing for rt in self._rt.values())
            generation = self.store.generation()
            snap = self.builder.build(now, self._sources)
            self._snapshot = snap
            self._ratios_pending = False  # the build set them
            self.snapshot_restored = self.snapshot_stale = False
            try:
                if consistent and save:
                    warmstart.save(self.store, self._snapshot_key, generation, snap, now)
            except Exception:
                log.warning("could not save the snapshot in the cache", exc_info=True)
            return snap

    def load_price_ratios(self) -> None:
        """The price ratios the burn rate is scaled by, as a build would set them, when no build has yet (a start
        on the saved snapshot); the first burn refresh calls it."""
        if self._ratios_pending:
            self.builder.load_price_ratios(self.now(), self._sources)
            self._ratios_pending = False

    def rebuild_stale_snapshot(self) -> None:
        """Replace a snapshot restored from an earlier hour (``run`` calls it in a thread at start)."""
        if self.snapshot_stale:
            try:
                self.rebuild_snapshot()
            except Exception:
                log.exception("building the snapshot failed; serving the one saved before the restart")

    def _drop_stale_sources(self) -> None:
        for name in self.store.sources_held():
            if name not in self._sources:
                continue  # kept: a source commented out for a while keeps its cache
            st = self.store.get_state(name)
            if st.config_hash is not None and st.config_hash != self._hashes[name]:
                log.info("source %s: its settings changed; its cached data will be fetched again", name)
                self.store.forget_source(name)

    def ready(self) -> bool:
        """Every source has data in the cache or has been tried once since start."""
        for name in self._sources:
            if self._rt[name].attempted:
                continue
            st = self.store.get_state(name)
            if st.last_success is None or st.config_hash != self._hashes[name]:
                return False
        return True

    def due_at(self, name: str) -> float:
        """Unix time at which the source is next due (now or earlier: due)."""
        st = self.store.get_state(name)
        return timing.due_at(self._sources[name], st, self._hashes[name], self.now())

    def cap_reached(self, name: str) -> bool:
        return self._fetchers[name].cap_reached()

    # -- refreshing ------------------------------------------------------------------------
    def refresh_all(self, history: bool = False) -> list[RefreshOutcome]:
        """Refresh every source once, now, whatever its schedule (``once``, ``check``, tests); ``history``: then
        fetch each refreshed source's history still owed (``once``; ``run``'s workers do it after a refresh)."""
        out = [self.refresh(s.name) for s in self.config.sources]
        if history:
            out += [self.refresh_history(o.source) for o in out if o.ok and self.history_due(o.source)]
        return out

    def refresh(self, name: str) -> RefreshOutcome:
        src = self._sources[name]
        rt = self._rt[name]
        with rt.lock:
            rt.refreshing = True
            try:
                out = self._refresh(src)
            finally:
                # before the flag drops: a snapshot built while no source is refreshing holds no stale view
                self.builder.invalidate(name)
                rt.refreshing = False
        try:
            self.rebuild_snapshot()
        except Exception:
            log.exception("building the snapshot failed; serving the previous one")
        # only now: /-/ready must not say ready before /metrics shows what this refresh fetched
        rt.attempted = True
        return out

    def _refresh(self, src: SourceBase) -> RefreshOutcome:
        now = self.now()
        state = self.store.get_state(src.name)
        cold = state.config_hash != self._hashes[src.name]
        if cold:
            state = SourceState(source=src.name, config_hash=self._hashes[src.name])
        if self.cap_reached(src.name):
            until = self._fetchers[src.name].cap_reached_until
            self.store.put_state(replace(state, next_refresh=until))
            return RefreshOutcome(src.name, ok=False, skipped=True, error="paid-call cap reached for today")
        window = timing.fetch_window(src, state, now, cold)
        started = time.monotonic()
        spent = self.store.api_cost_on(src.name, now.date())
        try:
            result = self._fetchers[src.name].fetch(window)
            truncated = result.clean_labels(clean_label_value)
            rep, records, skipped = normalise(self.resolver, window, result)
            _warn_skipped(src.name, skipped)
        except Exception as e:
            duration = time.monotonic() - started
            return self._failed(src, state, now, duration, e)
        duration = time.monotonic() - started
        through = result.data_through.timestamp() if result.data_through else data_through(rep)
        if through is not None:
            through = min(through, now.timestamp())
        new_state = replace(
            state,
            config_hash=self._hashes[src.name],
            last_attempt=now.timestamp(),
            last_success=now.timestamp(),
            last_error=None,
            last_duration=duration,
            data_through=through or state.data_through,
            fetched_through=window.end,
            consecutive_failures=0,
            next_refresh=timing.next_after_success(src, now, self.rng),
            skipped_records=sum(skipped.values()),
            skipped_detail=json.dumps(dict(skipped)) if skipped else None,
        )
        self._rt[src.name].refresh_usd = max(self.store.api_cost_on(src.name, now.date()) - spent, 0.0)
        # the history is complete from this window's first day on: a new source's, or a cache from before history
        # (or again from it, when a long stop left days between the last fetch and this window unfetched)
        gap = state.fetched_through is not None and window.start > state.fetched_through + dt.timedelta(days=1)
        complete_from = window.start if cold or gap or self.store.history_state(src.name)[0] is None else None
        self.store.replace(src.name, rep, new_state, history_from=complete_from)
        self.builder.count_truncated(src.name, truncated)
        self._prune(src.name, window)
        self._keep_raw(src, window, result)
        self._rt[src.name].records = records
        log.info(
            "source %s refreshed: %d records for %s..%s in %.2fs%s",
            src.name,
            records,
            window.start,
            window.end,
            duration,
            f"; skipped {dict(skipped)}" if skipped else "",
        )
        return RefreshOutcome(src.name, ok=True, records=records, duration=duration)

    def _prune(self, name: str, window: FetchWindow) -> None:
        """Drop the days a refresh of ``window`` no longer keeps (older than ``history_days``; the refresh and
        recompute alike), and the snapshot's recent copy past ``history.RECENT_DAYS``."""
        today = window.now.date()
        keep_from = min(window.start, today - dt.timedelta(days=self.config.history_days))
        self.store.prune(name, keep_from, recent_from=today - dt.timedelta(days=history.RECENT_DAYS))

    def _keep_raw(self, src: SourceBase, window: FetchWindow, result: FetchResult) -> None:
        """The audit trail: the fetch's pages kept (``raw_retention``), and those past the retention dropped.

        A page that cannot be kept is a warning, never a failed refresh: the records are already stored.
        """
        retention = src.raw_retention
        try:
            if retention > 0 and result.raw is not None:
                scrub = self._fetchers[src.name].scrub
                self.store.keep_raw(
                    src.name,
                    window.now.timestamp(),
                    self._hashes[src.name],
                    audit.encode_window(window),
                    audit.encode_context(result.raw, scrub),
                    [audit.encode_page(p, scrub) for p in result.raw.pages],
                )
            self.store.prune_raw(src.name, window.now.timestamp() - retention)  # 0: every page kept before goes
        except Exception:
            log.warning("source %s: could not keep its raw pages in the cache", src.name, exc_info=True)

    def recompute(self, name: str) -> RefreshOutcome:
        """Rebuild ``name``'s records from its kept pages, with no API call (``spend-exporter recompute``).

        Every fetch kept under the source's current settings is parsed again and normalised with today's rules
        (attribution, currency rates), oldest first, each replacing the days it covered as its refresh did.
        The source's state (last refresh, errors) is left as it is.
        """
        src = self._sources[name]
        rt = self._rt[name]
        started = time.monotonic()
        fetches = self.store.raw_fetches(name, self._hashes[name])
        if fetches and not self._fetchers[name].can_parse():
            note = "its pages say what was read (files' names, sizes, hashes), not what it held: nothing to rebuild"
            return RefreshOutcome(name, ok=True, skipped=True, error=note)
        records = 0
        with rt.lock:
            rt.refreshing = True
            try:
                for fid, _at, _hash, window_text, context in fetches:
                    window = audit.decode_window(window_text)
                    pages = [audit.decode_page(*p[:3], p[4]) for p in self.store.raw_pages(fid)]
                    result = self._fetchers[name].parse(window, audit.decode_fetch(context, pages))
                    result.clean_labels(clean_label_value)
                    rep, records, _skipped = normalise(self.resolver, window, result)
                    self.store.replace_records(name, rep)
                    self._prune(name, window)
            except Exception as e:
                msg = str(e) if isinstance(e, SourceError) else f"{e.__class__.__name__}: {e}"
                msg = self._fetchers[name].scrub(msg)[:2000]
                return RefreshOutcome(name, ok=False, duration=time.monotonic() - started, error=msg)
            finally:
                self.builder.invalidate(name)
                rt.refreshing = False
        if not fetches:
            return RefreshOutcome(src.name, ok=True, skipped=True, duration=time.monotonic() - started)
        return RefreshOutcome(src.name, ok=True, records=records, duration=time.monotonic() - started)

    def _failed(
        self, src: SourceBase, state: SourceState, now: dt.datetime, duration: float, e: Exception
    ) -> RefreshOutcome:
        if isinstance(e, SourceError):
            msg = str(e)
        elif isinstance(e, TimeoutError):
            msg = f"refresh timed out after {src.timeout:g}s"
        else:
            msg = f"{e.__class__.__name__}: {e}"
        msg = self._fetchers[src.name].scrub(msg)[:2000]
        failures = state.consecutive_failures + 1
        if isinstance(e, PaidCallCapReached):
            nxt = self._fetchers[src.name].cap_reached_until or timing.next_midnight(now).timestamp()
        else:
            retry_after = e.retry_after if isinstance(e, Throttled) else None
            nxt = timing.next_after_failure(src, now, failures, retry_after, self.rng)
        self.store.put_state(
            replace(
                state,
                last_attempt=now.timestamp(),
                last_error=msg,
                last_duration=duration,
                consecutive_failures=failures,
                next_refresh=nxt,
            )
        )
        if self.one_shot:
            log.warning("source %s refresh failed: %s", src.name, msg)
            return RefreshOutcome(src.name, ok=False, duration=duration, error=msg)
        log.warning(
            "source %s refresh failed (%d in a row), keeping the last good data; next try in %.0fs: %s",
            src.name,
            failures,
            max(nxt - now.timestamp(), 0),
            msg,
        )
        return RefreshOutcome(src.name, ok=False, duration=duration, error=msg)

    # -- the history (exporter.history) ------------------------------------------------------
    def history_due(self, name: str) -> bool:
        """The source's last refresh succeeded and its history does not yet reach ``history_days`` back (or as
        far as its API serves)."""
        st = self.store.get_state(name)
        if st.last_success is None or st.config_hash != self._hashes[name] or st.consecutive_failures:
            return False
        fetched_from = self.store.history_state(name)[0]  # None: no refresh since the history came in
        if fetched_from is None:
            return False
        return bool(history.owed(self.config, self._sources[name], self.now().date(), fetched_from))

    def history_status(self, name: str) -> dict[str, Any]:
        """``/status``'s view of the source's history: how far back it should and does reach, its last error."""
        fetched_from, attempt, error = self.store.history_state(name)
        start = history.history_start(self.config, self._sources[name], self.now().date())
        return {
            "from": start.isoformat(),
            "complete_from": fetched_from.isoformat() if fetched_from else None,
            "complete": fetched_from is not None and fetched_from <= start,
            "last_attempt": attempt,
            "last_error": error,
        }

    def refresh_history(self, name: str) -> RefreshOutcome:
        """Fetch what the source's history still needs, newest first, one query at a time; each query's days are
        stored as it ends, so a stop (error, paid-call cap, restart) loses nothing and the next call resumes."""
        rt = self._rt[name]
        with rt.lock:
            rt.refreshing = True
            try:
                out = self._refresh_history(self._sources[name])
            finally:
                self.builder.invalidate(name)
                rt.refreshing = False
        if out.records:
            try:
                self.rebuild_snapshot()
            except Exception:
                log.exception("building the snapshot failed; serving the previous one")
        return out

    def _refresh_history(self, src: SourceBase) -> RefreshOutcome:
        now = self.now()
        fetched_from = self.store.history_state(src.name)[0]
        spans = history.owed(self.config, src, now.date(), fetched_from) if fetched_from else []
        fetcher = self._fetchers[src.name]
        started = time.monotonic()
        stored = 0
        error: str | None = None
        for first, last in spans:
            if fetcher.cap_reached():
                error = "paid-call cap reached for today"
                break
            window = FetchWindow(first, last, now, history=True)
            try:
                result = fetcher.fetch(window, reserve=self._refresh_reserve(src, now))
                truncated = result.clean_labels(clean_label_value)
                rep, records, skipped = normalise(self.resolver, window, result)
            except Exception as e:
                error = fetcher.scrub(str(e) if isinstance(e, SourceError) else f"{e.__class__.__name__}: {e}")[:2000]
                break
            _warn_skipped(src.name, skipped)
            # days only: the forecast and the hourly buckets are the refresh's
            self.store.replace(src.name, replace(rep, hourly=None, forecasts=None), None, history_from=first)
            self.builder.count_truncated(src.name, truncated)
            stored += records
            log.info("source %s: history %s..%s fetched, %d records", src.name, first, last, records)
        self.store.history_tried(src.name, now.timestamp(), error)
        duration = time.monotonic() - started
        if error is not None:
            log.warning("source %s: history fetch stopped, to resume after the next refresh: %s", src.name, error)
            return RefreshOutcome(src.name, ok=False, records=stored, duration=duration, error=error)
        return RefreshOutcome(src.name, ok=True, records=stored, duration=duration)

    def _refresh_reserve(self, src: SourceBase, now: dt.datetime) -> float:
        """Dollars of today's paid-call cap the history leaves for the refreshes still due today."""
        left = (timing.next_midnight(now) - now).total_seconds()
        return self._rt[src.name].refresh_usd * max(1, math.ceil(left / src.interval))

    # -- the burn rate ----------------------------------------------------------------------
    def burn_sources(self) -> list[str]:
        """The sources with a burn rate (the AI admin-API sources), in the configuration's order."""
        return list(self._burn)

    def burn_due_at(self, name: str) -> float:
        """Unix time at which the source's burn refresh is next due (0: now)."""
        return self._burn[name].next_at

    def burn_window_end(self, name: str) -> float | None:
        """End of the newest burn window held for the source (unix), None before the first good fetch."""
        data = self._burn[name].data
        return data.end.timestamp() if data else None

    def burn_status(self, name: str) -> dict[str, object] | None:
        """The source's burn state for ``/status`` (None for a source without a burn rate)."""
        st = self._burn.get(name)
        if st is None:
            return None
        src = self._sources[name]
        assert isinstance(src, AdminApiSource)
        data = st.data
        return {
            "window_start": data.start.isoformat().replace("+00:00", "Z") if data else None,
            "window_end": data.end.isoformat().replace("+00:00", "Z") if data else None,
            "stale": data is not None and burn.is_stale(data.end, self.now(), src.burn_window, src.burn_delay),
            "last_error": st.last_error,
            "consecutive_failures": st.failures,
            "next_refresh": dt.datetime.fromtimestamp(max(st.next_at, 0), dt.UTC).isoformat().replace("+00:00", "Z"),
            "series": len(data.rates) if data else 0,
            # minute tokens of the window the price table could not price: those series have no burn rate
            "unpriced_tokens": {f"{p}/{m}": n for (p, m), n in sorted(data.unpriced.items())} if data else {},
        }

    def burning_keys(self, provider: str, account_id: str, model: str) -> list[str]:
        """The API key ids with usage in the latest burn window of ``account_id`` (project or workspace) and
        ``model`` (for the guard)."""
        keys: set[str] = set()
        for st in self._burn.values():
            if st.data is not None:
                keys.update(st.data.keys.get((provider, account_id, model), ()))
        return sorted(keys)

    def refresh_burn(self, name: str) -> RefreshOutcome:
        """The light refresh: minute usage of the burn window, priced; publishes the snapshot.

        It writes nothing to the store but the API calls it makes. A failure keeps the last good window
        (its end timestamp then ages) and backs off; it never touches the source's daily state.
        """
        src = self._sources[name]
        assert isinstance(src, AdminApiSource)
        st = self._burn[name]
        with st.lock:
            self.load_price_ratios()
            now = self.now()
            started = time.monotonic()
            out: RefreshOutcome
            try:
                result = self._fetchers[name].fetch_minutes(now, min(src.timeout, src.burn_interval))
                data = burn.burn_data(result, self._burn_labels, self._estimate, self._ratio, st.data)
            except Exception as e:
                duration = time.monotonic() - started
                if isinstance(e, SourceError):
                    msg = str(e)
                elif isinstance(e, TimeoutError):
                    msg = f"burn fetch timed out after {min(src.timeout, src.burn_interval):g}s"
                else:
                    msg = f"{e.__class__.__name__}: {e}"
                msg = self._fetchers[name].scrub(msg)[:2000]
                st.failures += 1
                delay = burn_backoff(src, st.failures, e.retry_after if isinstance(e, Throttled) else None)
                st.next_at = now.timestamp() + delay
                st.last_error = msg
                log.warning(
                    "source %s burn refresh failed (%d in a row), keeping the last good window; next try in %.0fs: %s",
                    name,
                    st.failures,
                    delay,
                    msg,
                )
                out = RefreshOutcome(name, ok=False, duration=duration, error=msg)
            else:
                st.data, st.failures, st.last_error = data, 0, None
                st.next_at = burn_next_at(now.timestamp(), src.burn_interval)
                for _provider, model in data.unpriced:
                    if (name, model) not in self._burn_unpriced_logged:
                        self._burn_unpriced_logged.add((name, model))
                        log.warning(
                            "source %s: model %r has minute usage the price table cannot price; it has no burn rate",
                            name,
                            model,
                        )
                out = RefreshOutcome(name, ok=True, records=len(result.minutes), duration=time.monotonic() - started)
            self._publish_burn(name, now)
        try:
            self.rebuild_snapshot(save=False)
        except Exception:
            log.exception("building the snapshot failed; serving the previous one")
        return out

    def _publish_burn(self, name: str, now: dt.datetime) -> None:
        src = self._sources[name]
        assert isinstance(src, AdminApiSource)
        data = self._burn[name].data
        stale = data is not None and burn.is_stale(data.end, now, src.burn_window, src.burn_delay)
        frags, overflow = burn.fragments(
            name, self._provider_names[name], data, stale, self.config.max_series_per_source
        )
        self.builder.set_burn(name, frags, overflow)

    def _burn_labels(self, m: MinuteUsage) -> tuple[str, ...]:
        team = self.resolver.team(m.team_tag, m.provider, m.account_id, m.service_name, m.model)
        return tuple(clean_label_value(v)[0] for v in (m.provider, m.account_id, m.service_name, team, m.model))

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the providers and the store (stop the scheduler that drives this engine first)."""
        self.guard.close()
        for f in self._fetchers.values():
            f.close()
        self.store.close()


def _warn_skipped(name: str, skipped: Counter[str]) -> None:
    for reason, n in skipped.items():
        if reason.startswith(("no_rate", "forecast_no_rate")):
            log.warning(
                "source %s: skipped %d amounts in a currency with no rate (%s); add it to currency_rates",
                name,
                n,
                reason.rsplit("_", 1)[-1],
            )
        elif reason == "not_a_number":
            log.warning("source %s: skipped %d amounts that are not a finite number (NaN or infinite)", name, n)


def _estimator(prices: PriceTable) -> burn.Estimate:
    """``(provider, model, tokens) -> (usd, unpriced tokens)`` from the price table."""

    def estimate(provider: str, model: str, tokens: Mapping[str, int]) -> tuple[float, int]:
        e = prices.estimate(provider, model, tokens)
        return e.usd, e.unpriced_tokens

    return estimate


def build_app(
    config: Config,
    now: Callable[[], dt.datetime] = timing.utc_now,
    rng: random.Random | None = None,
    stale_ok: bool = False,
    one_shot: bool = False,
) -> App:
    return App(config, now=now, rng=rng, stale_ok=stale_ok, one_shot=one_shot)

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
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from exporter import timing, warmstart
from exporter.attribution import Resolver
from exporter.config import Config
from exporter.exposition import clean_label_value
from exporter.fetcher import SourceFetcher
from exporter.guard import Guard
from exporter.normalise import data_through, normalise
from exporter.providers.base import PaidCallCapReached, SourceError, Throttled
from exporter.snapshot import Snapshot, SnapshotBuilder
from exporter.sources import SOURCES
from exporter.sources.base import SourceBase
from exporter.store import SourceState, Store

log = logging.getLogger(__name__)

KEEP_DAYS = 70  # older days are pruned: baselines need 28 + the forecast 7, previous month up to 62


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


def _source_hash(src: SourceBase) -> str:
    """Hash of the settings that change what is fetched (all but the source type's ``FETCH_NEUTRAL`` keys)."""
    data = src.model_dump(mode="json", exclude=set(src.FETCH_NEUTRAL))
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
        self._hashes = {s.name: _source_hash(s) for s in config.sources}
        self._provider_names = {s.name: SOURCES[s.type].provider for s in config.sources}
        self._fetchers = {
            s.name: SourceFetcher(
                s, self.store, now, team_tag_keys=config.attribution.team_tag_keys, cache_path=config.cache_path
            )
            for s in config.sources
        }
        self._rt = {s.name: Runtime() for s in config.sources}
        self._snapshot_lock = threading.Lock()
        price = _load_prices(config)
        self.builder = SnapshotBuilder(
            config,
            self.store,
            {s.name: (self._provider_names[s.name], SOURCES[s.type].api, s.interval) for s in config.sources},
            price=price,
        )
        self._drop_stale_sources()
        self.store.on_reset.append(self.builder.invalidate)  # a damaged cache was replaced by an empty one
        self._snapshot_key = warmstart.snapshot_key(config)
        self.snapshot_restored = False  # serving the snapshot saved before the restart
        self.snapshot_stale = False  # ... and it is from an earlier hour: rebuild_snapshot() soon
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

    def rebuild_snapshot(self) -> Snapshot:
        with self._snapshot_lock:
            now = self.now()
            # every write happens inside a refresh: with none running, this build matches the data at this
            # generation, and save() keeps it only if no write happened before it is stored
            consistent = not any(rt.refreshing for rt in self._rt.values())
            generation = self.store.generation()
            snap = self.builder.build(now, self._sources)
            self._snapshot = snap
            self.snapshot_restored = self.snapshot_stale = False
            try:
                if consistent:
                    warmstart.save(self.store, self._snapshot_key, generation, snap, now)
            except Exception:
                log.warning("could not save the snapshot in the cache", exc_info=True)
            return snap

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
    def refresh_all(self) -> list[RefreshOutcome]:
        """Refresh every source once, now, whatever its schedule (``once``, ``check``, tests)."""
        return [self.refresh(s.name) for s in self.config.sources]

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
        self.store.replace(src.name, rep, new_state)
        self.builder.count_truncated(src.name, truncated)
        keep_from = min(window.start, now.date() - dt.timedelta(days=KEEP_DAYS))
        self.store.prune(src.name, keep_from)
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


def _load_prices(config: Config) -> Callable[[str, str, int], float | None] | None:
    try:
        from exporter.pricing import PriceTable
    except ImportError:
        return None
    table = PriceTable.load({m: {str(k): v for k, v in p.items()} for m, p in config.pricing.items()})
    return table.cost


def build_app(
    config: Config,
    now: Callable[[], dt.datetime] = timing.utc_now,
    rng: random.Random | None = None,
    stale_ok: bool = False,
    one_shot: bool = False,
) -> App:
    return App(config, now=now, rng=rng, stale_ok=stale_ok, one_shot=one_shot)

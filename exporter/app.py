"""The engine: config, store, providers, scheduler and the current snapshot, wired together."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from exporter import warmstart
from exporter.attribution import Resolver
from exporter.config import Config
from exporter.exposition import clean_label_value
from exporter.model import TOKEN_TYPES, FetchResult, FetchWindow, cost_tuples
from exporter.providers import create_provider
from exporter.providers.base import PaidCallCapReached, Provider, ProviderContext, SourceError, Throttled
from exporter.scheduler import Scheduler, fetch_window, next_midnight, utc_now
from exporter.snapshot import Snapshot, SnapshotBuilder
from exporter.sources import SOURCES
from exporter.sources.base import SourceBase
from exporter.store import Replacement, SourceState, Store

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
class _Runtime:
    """What the process knows about a source beyond the store."""

    attempted: bool = False
    records: int = 0
    cap_reached_until: float | None = None
    refreshing: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _source_hash(src: SourceBase) -> str:
    """Hash of the settings that change what is fetched (all but the source type's ``FETCH_NEUTRAL`` keys)."""
    data = src.model_dump(mode="json", exclude=set(src.FETCH_NEUTRAL))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class App:
    def __init__(
        self,
        config: Config,
        now: Callable[[], dt.datetime] = utc_now,
        rng: random.Random | None = None,
        store: Store | None = None,
        stale_ok: bool = False,
        one_shot: bool = False,
    ) -> None:
        """``stale_ok``: start on a saved snapshot from an earlier hour of today (``run``; see warmstart).
        ``one_shot``: a command that refreshes once and exits (``check``, ``once``): no "next try" to announce."""
        self.config = config
        self.one_shot = one_shot
        self.now = now
        self.store = store or Store(config.cache_path)
        self.resolver = Resolver(config)
        self._sources = {s.name: s for s in config.sources}
        self._hashes = {s.name: _source_hash(s) for s in config.sources}
        self._providers: dict[str, Provider] = {}
        self._contexts: dict[str, ProviderContext] = {}
        self._rt = {s.name: _Runtime() for s in config.sources}
        self._snapshot_lock = threading.Lock()
        price = _load_prices(config)
        self.builder = SnapshotBuilder(
            config,
            self.store,
            {s.name: (SOURCES[s.type].provider, SOURCES[s.type].api, s.interval) for s in config.sources},
            price=price,
        )
        self.scheduler = Scheduler(self, now=now, rng=rng)
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

    # -- helpers -------------------------------------------------------------------------
    def config_hash(self, name: str) -> str:
        return self._hashes[name]

    def source(self, name: str) -> SourceBase:
        return self._sources[name]

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

    def _context(self, src: SourceBase) -> ProviderContext:
        ctx = self._contexts.get(src.name)
        if ctx is None:
            ctx = ProviderContext(
                src.name,
                team_tag_keys=list(self.config.attribution.team_tag_keys),
                on_call=functools.partial(self._record_call, src.name),
                check_cap=functools.partial(self._check_cap, src),
                logger=logging.getLogger(f"exporter.providers.{getattr(src, 'type', src.name)}"),
                scratch_dir=None
                if self.config.cache_path == ":memory:"
                else os.path.join(os.path.dirname(os.path.abspath(self.config.cache_path)), "tmp"),
            )
            # a password in an endpoint URL (http://user:pass@proxy) is a secret, and SDK errors quote the URL
            for value in src.model_dump(mode="json").values():
                for m in re.finditer(r"://[^/@:\s]*:([^/@\s]+)@", value if isinstance(value, str) else ""):
                    ctx.register_secret(m.group(1))
                    ctx.register_secret(urllib.parse.unquote(m.group(1)))
            self._contexts[src.name] = ctx
        return ctx

    def _record_call(self, name: str, operation: str, status: str, cost: float) -> None:
        self.store.record_call(name, self.now().date(), operation, status, cost)

    def _check_cap(self, src: SourceBase, cost: float) -> None:
        cap = src.max_api_cost_usd_per_day
        if cap is None:
            return
        now = self.now()
        spent = self.store.api_cost_on(src.name, now.date())
        if spent + cost > cap + 1e-9:
            until = next_midnight(now)
            self._rt[src.name].cap_reached_until = until.timestamp()
            msg = (
                f"paid-call cap reached: ${spent:.2f} of max_api_cost_usd_per_day ${cap:.2f} spent today; "
                f"no more paid calls until {until:%Y-%m-%d %H:%M} UTC"
            )
            log.warning("source %s: %s", src.name, msg)
            raise PaidCallCapReached(msg)

    def cap_reached(self, name: str) -> bool:
        until = self._rt[name].cap_reached_until
        now = self.now()
        if until is not None and until > next_midnight(now).timestamp():
            self._rt[name].cap_reached_until = until = None  # the clock went back a day or more: a new day's cap
        return until is not None and now.timestamp() < until

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
            until = self._rt[src.name].cap_reached_until
            self.store.put_state(replace(state, next_refresh=until))
            return RefreshOutcome(src.name, ok=False, skipped=True, error="paid-call cap reached for today")
        window = fetch_window(src, state, now, cold)
        started = time.monotonic()
        try:
            result = self._fetch(src, window)
            truncated = result.clean_labels(clean_label_value)
            rep, records, skipped = self._normalise(src, window, result)
        except Exception as e:
            duration = time.monotonic() - started
            return self._failed(src, state, now, duration, e)
        duration = time.monotonic() - started
        data_through = result.data_through.timestamp() if result.data_through else _data_through(rep)
        if data_through is not None:
            data_through = min(data_through, now.timestamp())
        new_state = replace(
            state,
            config_hash=self._hashes[src.name],
            last_attempt=now.timestamp(),
            last_success=now.timestamp(),
            last_error=None,
            last_duration=duration,
            data_through=data_through or state.data_through,
            fetched_through=window.end,
            consecutive_failures=0,
            next_refresh=self.scheduler.next_after_success(src, now),
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
        ctx = self._contexts.get(src.name)
        if isinstance(e, SourceError):
            msg = str(e)
        elif isinstance(e, TimeoutError):
            msg = f"refresh timed out after {src.timeout:g}s"
        else:
            msg = f"{e.__class__.__name__}: {e}"
        if ctx is not None:
            msg = ctx.scrub(msg)
        msg = msg[:2000]
        failures = state.consecutive_failures + 1
        if isinstance(e, PaidCallCapReached):
            nxt = self._rt[src.name].cap_reached_until or next_midnight(now).timestamp()
        else:
            retry_after = e.retry_after if isinstance(e, Throttled) else None
            nxt = self.scheduler.next_after_failure(src, now, failures, retry_after)
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

    def _provider(self, src: SourceBase) -> Provider:
        p = self._providers.get(src.name)
        if p is None:
            p = create_provider(src, self._context(src))
            self._providers[src.name] = p
        return p

    def _fetch(self, src: SourceBase, window: FetchWindow) -> FetchResult:
        """Run the provider's fetch in its own thread, so that a hung API cannot outlive the timeout."""
        ctx = self._context(src)
        deadline = time.monotonic() + src.timeout
        ctx.set_deadline(deadline)
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["result"] = self._provider(src).fetch(window)
            except BaseException as e:
                box["error"] = e

        t = threading.Thread(target=run, name=f"fetch-{src.name}", daemon=True)
        t.start()
        t.join(src.timeout)
        if t.is_alive():
            # the thread is abandoned; drop the provider so the next refresh gets fresh clients
            self._providers.pop(src.name, None)
            raise TimeoutError(f"refresh timed out after {src.timeout:g}s")
        if "error" in box:
            raise box["error"]
        result = box.get("result")
        if not isinstance(result, FetchResult):
            raise SourceError(f"provider returned {type(result).__name__}, not a FetchResult")
        return result

    def _normalise(
        self, src: SourceBase, window: FetchWindow, result: FetchResult
    ) -> tuple[Replacement, int, Counter[str]]:
        r = self.resolver
        skipped: Counter[str] = Counter({k: n for k, n in result.skipped.items() if n > 0})
        lo, hi = window.start, window.end
        costs = []
        for day, provider, account_id, service_name, amount, currency, team_tag, model in cost_tuples(result.costs):
            if not lo <= day <= hi:
                skipped["outside_window"] += 1
                continue
            usd = r.to_usd(amount, currency)
            if usd is None:
                bad = amount is None or not math.isfinite(amount)
                skipped["not_a_number" if bad else f"no_rate_{(currency or 'blank').upper()[:8]}"] += 1
                continue
            team = r.team(team_tag, provider, account_id, service_name, model)
            costs.append((day.isoformat(), provider, account_id, service_name, team, model or "", usd))
        usage = []
        for u in result.usage:
            if not lo <= u.day <= hi:
                skipped["outside_window"] += 1
                continue
            team = r.team(u.team_tag, u.provider, u.account_id, u.service_name, u.model)
            usage.append(
                (u.day.isoformat(), u.provider, u.account_id, u.service_name, team, u.model)
                + tuple(int(u.tokens.get(t, 0)) for t in TOKEN_TYPES)
                + (int(u.requests),)
            )
        hourly = None
        if result.hourly is not None:
            hourly = []
            for h in result.hourly:
                team = r.team(h.team_tag, h.provider, h.account_id, h.service_name, h.model)
                hourly.append(
                    (h.hour_start.timestamp(), h.provider, h.account_id, h.service_name, team, h.model)
                    + tuple(int(h.tokens.get(t, 0)) for t in TOKEN_TYPES)
                    + (int(h.requests),)
                )
        forecasts = None
        if result.forecasts is not None:
            forecasts = []
            for f in result.forecasts:
                usd = r.to_usd(f.remaining_amount, f.currency)
                if usd is None:
                    skipped[f"forecast_no_rate_{(f.currency or 'blank').upper()[:8]}"] += 1
                    continue
                forecasts.append((f.provider, f.account_id, usd))
        for reason, n in skipped.items():
            if reason.startswith(("no_rate", "forecast_no_rate")):
                log.warning(
                    "source %s: skipped %d amounts in a currency with no rate (%s); add it to currency_rates",
                    src.name,
                    n,
                    reason.rsplit("_", 1)[-1],
                )
            elif reason == "not_a_number":
                log.warning("source %s: skipped %d amounts that are not a finite number (NaN or infinite)", src.name, n)
        rep = Replacement(
            start=lo,
            end=hi,
            costs=costs,
            usage=usage,
            hourly=hourly,
            accounts=[(a.provider, a.account_id, a.account_name) for a in result.accounts],
            forecasts=forecasts,
        )
        return rep, len(costs) + len(usage), skipped

    # -- status ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What ``/status`` shows; cheap: the spend figures come from the published snapshot, not the store."""
        now = self.now()
        snap = self._snapshot  # one snapshot for the whole answer, even if a rebuild publishes another meanwhile
        sources = []
        for src in self.config.sources:
            st = self.store.get_state(src.name)
            rt = self._rt[src.name]
            cap = src.max_api_cost_usd_per_day
            sources.append(
                {
                    "name": src.name,
                    "type": src.type,  # type: ignore[attr-defined]
                    "provider": SOURCES[src.type].provider,
                    "up": st.up,
                    "refreshing": rt.refreshing,
                    "last_attempt": _iso(st.last_attempt),
                    "last_success": _iso(st.last_success),
                    "last_error": st.last_error,
                    "consecutive_failures": st.consecutive_failures,
                    "next_refresh": _iso(self.scheduler.due_at(src.name) or now.timestamp()),
                    "data_through": _iso(st.data_through),
                    "fetched_through": st.fetched_through.isoformat() if st.fetched_through else None,
                    "last_duration_seconds": st.last_duration,
                    "records_last_refresh": rt.records,
                    "records_skipped_last_refresh": json.loads(st.skipped_detail) if st.skipped_detail else {},
                    "interval_seconds": src.interval,
                    "api_cost_usd_today": round(self.store.api_cost_on(src.name, now.date()), 6),
                    "max_api_cost_usd_per_day": cap,
                    "paid_call_cap_reached": self.cap_reached(src.name),
                    "month_to_date_usd": round(snap.mtd_by_source.get(src.name, 0.0), 2),
                }
            )
        return {
            "ready": self.ready(),
            "cache": {"path": self.store.path, "persistent": self.store.persistent, "problem": self.store.problem},
            "snapshot": {
                "restored_from_cache": self.snapshot_restored,
                "built_at": _iso(snap.built_at),
                "series": snap.series,
                "bytes": len(snap.text),
            },
            "sources": sources,
            "budgets": self.budgets_status(snap),
        }

    def month_to_date(self, name: str) -> float:
        """The source's month-to-date in USD as ``/metrics`` serves it (the sum of its month-to-date series)."""
        return self._snapshot.mtd_by_source.get(name, 0.0)

    def budgets_status(self, snap: Snapshot | None = None) -> list[dict[str, Any]]:
        """The current snapshot's budgets: the figures ``/metrics`` serves."""
        snap = snap or self._snapshot
        return [
            {
                "name": b.name,
                "team": b.team,
                "amount_usd": b.amount_usd,
                "spent_usd": round(b.spent_usd, 2),
                "used_ratio": round(b.spent_usd / b.amount_usd, 4),
                "warning_ratio": b.warning_ratio,
            }
            for b in snap.budgets
        ]

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        self.scheduler.stop()
        for p in self._providers.values():
            try:
                p.close()
            except Exception:
                log.debug("closing a provider failed", exc_info=True)
        self.store.close()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def _data_through(rep: Replacement) -> float | None:
    days = [c[0] for c in rep.costs] + [u[0] for u in rep.usage]
    if not days:
        return None
    newest = dt.date.fromisoformat(max(days)) + dt.timedelta(days=1)
    return dt.datetime.combine(newest, dt.time(), tzinfo=dt.UTC).timestamp()


def _load_prices(config: Config) -> Callable[[str, str, int], float | None] | None:
    try:
        from exporter.pricing import PriceTable
    except ImportError:
        return None
    table = PriceTable.load({m: {str(k): v for k, v in p.items()} for m, p in config.pricing.items()})
    return table.cost


def build_app(
    config: Config,
    now: Callable[[], dt.datetime] = utc_now,
    rng: random.Random | None = None,
    stale_ok: bool = False,
    one_shot: bool = False,
) -> App:
    return App(config, now=now, rng=rng, stale_ok=stale_ok, one_shot=one_shot)

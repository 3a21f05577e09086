"""The guard: Alertmanager's notifications in, the configured actions out, each recorded and undoable.

``POST /-/guard/alertmanager`` (``exporter.web``) hands the payload to ``Guard.receive``, which answers at
once: for each firing alert and each rule that matches its labels it records the action in the cache
*before* anything runs (``Store.guard_claim``: "pending", or "duplicate" when the rule already acted on
that alert fingerprint, or "limited" past ``max_actions_per_day``) and queues the pending ones for one
worker thread. The worker plans the action (reads: the values it will change become the recorded
"previous" values), then, in enforce mode, writes (``exporter.guard_actions``) and records the result:
"applied", "dry_run" or "failed". A failure is a row in the cache and a log line; it never reaches
``/metrics`` other than as a count. Nothing is undone when an alert resolves: ``spend-exporter guard
undo ID`` restores the recorded previous values when a person decides to.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from exporter.config import Config, guard_source
from exporter.guard_actions import ActionError, Rule, Secrets, Webhook, make_action
from exporter.guardconfig import ACTION_PROVIDER
from exporter.sources.admin_api import AdminApiSource
from exporter.store import Store

log = logging.getLogger(__name__)

REPUBLISH = 0  # a job for the worker that only republishes the snapshot (action IDs start at 1)
MAX_PAYLOAD = 4 << 20
# An alert whose startsAt is this long after the guard acted on it fired again after resolving (re-sends, and
# an HA pair's copies, carry the first startsAt; Prometheus replicas' differ by an evaluation interval or so):
# it may act again, if the first action is no longer in force (a person undid it).
REARM_AFTER = 600.0  # bytes; Alertmanager's payload for a group of a few thousand alerts fits


class PayloadError(ValueError):
    """The body is not an Alertmanager webhook payload (version 4)."""


@dataclass(frozen=True)
class Alert:
    status: str
    labels: dict[str, str]
    fingerprint: str
    document: dict[str, Any]  # as received, for the webhook action
    starts_at: float | None = None  # unix time of startsAt: tells a new firing of the alert from a re-send


def _time(value: Any) -> float | None:
    """RFC 3339 (Alertmanager writes nanoseconds, Python reads microseconds) → unix time; None if not one."""
    if not isinstance(value, str):
        return None
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", value.strip())
    if not m:
        return None
    try:
        t = dt.datetime.fromisoformat(m[1] + (m[2] or "")[:7] + ("+00:00" if m[3] == "Z" else m[3]))
    except ValueError:
        return None
    return t.timestamp() if t.year > 1 else None  # 0001-01-01: Go's zero time


def parse_payload(body: bytes) -> list[Alert]:
    """The alerts of an Alertmanager webhook payload (version 4); ``PayloadError`` if it is not one."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise PayloadError("the body is not JSON") from None
    if not isinstance(data, dict) or data.get("version") != "4" or not isinstance(data.get("alerts"), list):
        raise PayloadError('not an Alertmanager webhook payload (want an object with "version": "4" and "alerts")')
    alerts = []
    for i, a in enumerate(data["alerts"]):
        labels = a.get("labels") if isinstance(a, dict) else None
        if (
            not isinstance(labels, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
            or not isinstance(a.get("status"), str)
            or not isinstance(a.get("fingerprint"), str)
            or not a["fingerprint"]
        ):
            raise PayloadError(f"alerts[{i}]: want status, labels (strings) and fingerprint")
        alerts.append(Alert(a["status"], labels, a["fingerprint"], a, _time(a.get("startsAt"))))
    return alerts


def matches(rule: Rule, labels: Mapping[str, str]) -> bool:
    """All of the rule's ``match`` labels are equal, and an alert of another provider never reaches a provider's
    action (its ``account_id`` would name a project or workspace of the other one)."""
    provider = ACTION_PROVIDER.get(rule.action)
    if provider is not None and labels.get("provider", provider) != provider:
        return False
    return all(labels.get(k) == v for k, v in rule.match.items())


class Guard:
    """The guard of one exporter: its rules, the cache's record of actions, and the worker that runs them."""

    def __init__(
        self,
        config: Config,
        store: Store,
        now: Callable[[], dt.datetime],
        on_change: Callable[[], Any] | None = None,
    ) -> None:
        """``on_change``: called after an action is recorded with its result (the engine republishes the
        snapshot, whose ``spend_guard_*`` families come from the record)."""
        self.cfg = config.guard
        self.config = config
        self.store = store
        self.now = now
        self.on_change = on_change
        self.rules = {r.name: r for r in self.cfg.rules}
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._warned_no_token = False
        self._documents: dict[int, dict[str, Any]] = {}  # the alerts queued for a webhook action, as received

    # -- the endpoint --------------------------------------------------------------------
    def authorised(self, header: str | None) -> bool:
        """``Authorization: Bearer <token>`` with the token in ``token_env`` or ``token_file`` (read now: a rotated
        token applies at once). Without a token configured and set, nothing is authorised."""
        token, missing = self._token()
        if not token:
            if not self._warned_no_token:
                self._warned_no_token = True
                log.warning("guard: a request to /-/guard/alertmanager was refused: no token (%s)", missing)
            return False
        scheme, _, presented = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode(), token.encode())

    def _token(self) -> tuple[str, str]:
        """The bearer token (empty if there is none), and why there is none."""
        if self.cfg.token_file:
            try:
                with open(self.cfg.token_file, encoding="utf-8") as f:
                    token = f.read(4096).strip()
            except (OSError, UnicodeDecodeError) as e:
                why = getattr(e, "strerror", None) or e.__class__.__name__
                return "", f"guard.token_file {self.cfg.token_file!r} cannot be read: {why}"
            return token, f"guard.token_file {self.cfg.token_file!r} is empty"
        if self.cfg.token_env:
            return os.environ.get(self.cfg.token_env, "").strip(), f"guard.token_env {self.cfg.token_env} is not set"
        return "", "guard.token_env is not configured"

    def receive(self, alerts: list[Alert]) -> list[dict[str, Any]]:
        """Record an action for each firing alert and matching rule; queue those that run. Returns at once."""
        out: list[dict[str, Any]] = []
        for alert in alerts:
            if alert.status != "firing":
                continue  # a resolved alert undoes nothing: a person decides (guard undo)
            for rule in self.cfg.rules:
                if not matches(rule, alert.labels):
                    continue
                action_id, result = self._claim(rule, alert)
                out.append({"id": action_id, "rule": rule.name, "fingerprint": alert.fingerprint, "result": result})
                if result == "pending":
                    self._documents[action_id] = alert.document
                    self._submit(action_id)
                else:
                    log.info(
                        "guard: rule %s, alert %s: %s",
                        rule.name,
                        alert.fingerprint,
                        "already acted on (duplicate)" if result == "duplicate" else "max_actions_per_day reached",
                    )
        if any(a["result"] != "pending" for a in out):
            self._submit(REPUBLISH)  # the counters moved: republish, in the worker (a build may take seconds)
        return out

    def _claim(self, rule: Rule, alert: Alert) -> tuple[int, str]:
        now = self.now().astimezone(dt.UTC)
        labels = alert.labels
        row = {
            "created_at": now.timestamp(),
            "day": now.date().isoformat(),
            "rule": rule.name,
            "action": rule.action,
            "mode": self.cfg.mode,
            "fingerprint": alert.fingerprint,
            "labels": json.dumps(labels, sort_keys=True),
            "provider": ACTION_PROVIDER.get(rule.action) or labels.get("provider", ""),
            "account_id": labels.get("account_id", ""),
            "model": labels.get("model", ""),
        }
        return self.store.guard_claim(row, self.cfg.max_actions_per_day, alert.starts_at, REARM_AFTER)

    def _submit(self, action_id: int) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="guard", daemon=True)
                self._worker.start()
        self._queue.put(action_id)

    def _work(self) -> None:
        while True:
            action_id = self._queue.get()
            try:
                if action_id is None:
                    return
                if action_id == REPUBLISH:
                    self._changed()
                else:
                    self.run(action_id)
            except Exception:
                log.exception("guard: action %s", action_id)
            finally:
                self._queue.task_done()

    def wait(self) -> None:
        """Until every queued action has run (tests, and a clean stop)."""
        self._queue.join()

    def close(self) -> None:
        with self._lock:
            worker = self._worker
        if worker is not None and worker.is_alive():
            self._queue.put(None)
            worker.join()

    def recover(self) -> None:
        """Actions left "pending" by a process that stopped while they ran: recorded as failed, and kept undoable
        (their planned changes may have been made)."""
        for row in self.store.guard_actions():
            if row["result"] == "pending":
                self.store.guard_update(
                    row["id"],
                    result="failed",
                    finished_at=self.now().timestamp(),
                    error="interrupted: the exporter stopped while the action ran; check the provider",
                )

    # -- running -------------------------------------------------------------------------
    def _source(self, rule: Rule) -> AdminApiSource | None:
        src = guard_source(self.config, rule.source, rule.action)
        return src if isinstance(src, AdminApiSource) else None

    def run(self, action_id: int) -> str:
        """Plan, then (enforce) apply one recorded action; record the result. Returns it."""
        (row,) = self.store.guard_actions(action_id)
        rule = self.rules.get(row["rule"])
        secrets = Secrets()
        dry = row["mode"] != "enforce"
        labels = json.loads(row["labels"])
        done: list[dict[str, Any]] = []
        result, error = "failed", None
        try:
            if rule is None:
                raise ActionError(f"rule {row['rule']} is no longer configured")
            action = make_action(rule, self._source(rule), secrets, write=not dry, now=self.now())
            try:
                plan = action.plan(labels)
                # the intent, with what will change and the values to restore, before any write
                self.store.guard_update(action_id, target=plan.target, changes=json.dumps(plan.changes, sort_keys=True))
                if dry:
                    result = "dry_run"
                    done = plan.changes
                    log.info(
                        "guard (dry run): rule %s would %s %s%s",
                        rule.name,
                        rule.action,
                        plan.target,
                        "".join(f"; {_describe(c)}" for c in plan.changes),
                    )
                elif isinstance(action, Webhook):
                    action.post(self._document(action_id, row))
                    result = "applied"
                else:
                    done = action.apply(plan)
                    result = "applied"
                    log.warning(
                        "guard: rule %s applied %s to %s%s",
                        rule.name,
                        rule.action,
                        plan.target,
                        "".join(f"; {_describe(c)}" for c in done),
                    )
            finally:
                action.close()
        except ActionError as e:
            done, error = e.done, secrets.scrub(str(e))[:1000]
        except Exception as e:  # an SDK or network surprise: recorded, never raised into the exporter
            error = secrets.scrub(f"{e.__class__.__name__}: {e}")[:1000]
        if error is not None:
            log.warning("guard: rule %s, action %d failed: %s", row["rule"], action_id, error)
        self.store.guard_update(
            action_id,
            result=result,
            error=error,
            changes=json.dumps(done, sort_keys=True),
            finished_at=self.now().timestamp(),
        )
        self._documents.pop(action_id, None)
        self._changed()
        return result

    def _document(self, action_id: int, row: Mapping[str, Any]) -> dict[str, Any]:
        alert = self._documents.get(action_id) or {
            "labels": json.loads(row["labels"]),
            "fingerprint": row["fingerprint"],
        }
        return {"rule": row["rule"], "guard_action_id": action_id, "mode": row["mode"], "alert": alert}

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("guard: republishing the snapshot failed")

    # -- undo ------------------------------------------------------------------------------
    def undo(self, action_id: int) -> tuple[bool, str]:
        """Restore the previous values an action recorded. (ok, what was done or why nothing was)."""
        rows = self.store.guard_actions(action_id)
        if not rows:
            return False, f"no guard action {action_id}"
        row = rows[0]
        changes = json.loads(row["changes"])
        if row["undone_at"] is not None:
            when = dt.datetime.fromtimestamp(row["undone_at"], dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return True, f"action {action_id} was already undone at {when}: nothing to do"
        if row["action"] == "webhook":
            return False, f"action {action_id} posted to a webhook: that cannot be undone here; ask its receiver"
        if row["result"] == "dry_run":
            return False, f"action {action_id} was a dry run: it changed nothing, there is nothing to undo"
        if row["result"] == "pending":
            return False, f"action {action_id} is still running: undo it once it has a result"
        if not changes:
            return False, f"action {action_id} changed nothing (result {row['result']}): there is nothing to undo"
        rule = self.rules.get(row["rule"])
        if rule is None:
            return False, f"rule {row['rule']} is no longer configured: its source and write key are unknown"
        secrets = Secrets()
        try:
            action = make_action(rule, self._source(rule), secrets, write=True, now=self.now())
            try:
                done = action.undo(changes) if not isinstance(action, Webhook) else []
            finally:
                action.close()
        except ActionError as e:
            msg = secrets.scrub(str(e))[:1000]
            self.store.guard_update(action_id, undo_detail=f"undo failed: {msg}")
            return False, f"undo of action {action_id} failed: {msg}"
        detail = "; ".join(done)
        self.store.guard_update(action_id, undone_at=self.now().timestamp(), undo_detail=detail)
        log.warning("guard: action %d undone: %s", action_id, detail)
        self._changed()
        return True, f"action {action_id} undone: {detail}"


def _describe(change: Mapping[str, Any]) -> str:
    if change.get("kind") == "openai_rate_limit":
        return ", ".join(f"{k} {change['previous'][k]} -> {v}" for k, v in change["new"].items())
    if change.get("kind") == "anthropic_api_key":
        return f"API key {change['api_key_id']} {change['previous']} -> {change['new']}"
    return json.dumps(change, sort_keys=True)

"""The guard's actions: what each reads, writes and restores, through the providers' official SDKs.

Each action is planned first (reads only: the current values, which become the "previous" values
recorded for ``guard undo``), then applied (writes), and can be undone from what was recorded. The
write calls use the AI source's ``write_key_env``, never its read-only usage key; a dry run plans with
the write key if there is one, else with the usage key, and writes nothing.

- ``openai_project_rate_limit``: ``client.admin.organization.projects.rate_limits`` (list the project's
  limits, find the model's, update its fields).
- ``anthropic_api_key_status``: the usage report (minute buckets of the last ``lookback``, by API key)
  finds the keys that used the model in the workspace; ``client.organization.api_keys`` reads their
  status and sets it to ``inactive``.
- ``webhook``: the alert, as JSON, POSTed to the URL in ``url_env`` (urllib, with a timeout).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from exporter.guardconfig import (
    AnthropicKeyStatusRule,
    OpenAIRateLimitRule,
    WebhookRule,
)
from exporter.sources.admin_api import AdminApiSource

REQUEST_TIMEOUT = 10.0  # seconds per request: an action runs in the guard's worker, never in a request handler
DEFAULT_WORKSPACE = "default"  # the exporter's account_id of Anthropic's default workspace (null in the reports)

Rule = OpenAIRateLimitRule | AnthropicKeyStatusRule | WebhookRule


class ActionError(Exception):
    """An action that could not be done; ``done`` holds the changes made (or perhaps made) before it failed.

    ``unsure``: a write whose answer never came (a timeout, a dropped connection) may have been made; the
    change is then recorded as done, so that ``guard undo`` can restore it (restoring a value that was never
    changed is harmless).
    """

    def __init__(self, message: str, done: list[dict[str, Any]] | None = None, unsure: bool = False) -> None:
        super().__init__(message)
        self.done = done or []
        self.unsure = unsure


@dataclass
class Plan:
    """What an action will change: a short description of its target, and each change with its previous value."""

    target: str
    changes: list[dict[str, Any]] = field(default_factory=list)


class Secrets:
    """Every secret an action has read from the environment, to be cut out of any message it shows."""

    def __init__(self) -> None:
        self.values: set[str] = set()

    def env(self, name: str, key: str) -> str:
        value = os.environ.get(name, "").strip()
        if not value:
            raise ActionError(f"environment variable {name} ({key}) is not set")
        self.values.add(value)
        return value

    def scrub(self, text: str) -> str:
        for v in sorted(self.values, key=len, reverse=True):
            if len(v) >= 4:
                text = text.replace(v, "<redacted>")
        return text


def _sdk_error(e: Exception) -> str:
    """An SDK exception as a short message (status and the API's own message; the caller scrubs it)."""
    status = getattr(e, "status_code", None)
    body = getattr(e, "body", None)
    detail = ""
    if isinstance(body, dict):
        inner = body["error"] if isinstance(body.get("error"), dict) else body
        detail = str(inner.get("message") or "")
    if status is not None:
        return f"HTTP {status}" + (f": {detail}" if detail else "")
    if e.__class__.__name__ in ("APIConnectionError", "APITimeoutError"):
        return f"no answer ({e.__class__.__name__}: timed out, or the connection dropped): it may have been made"
    return f"{e.__class__.__name__}: {e}"


# --------------------------------------------------------------------------- OpenAI


class OpenAIRateLimit:
    """``openai_project_rate_limit``: the alert's project (``account_id``) and model → the rule's limits."""

    def __init__(self, rule: OpenAIRateLimitRule, source: AdminApiSource, secrets: Secrets, write: bool) -> None:
        import openai

        self.rule = rule
        self.sdk = openai
        key = self._key(source, secrets, write)
        self.client = openai.OpenAI(
            admin_api_key=key,
            api_key="unused-admin-endpoints-only",  # keeps the SDK from reading OPENAI_API_KEY
            base_url=source.base_url,
            max_retries=1,
            timeout=min(source.request_timeout, REQUEST_TIMEOUT),
        )

    @staticmethod
    def _key(source: AdminApiSource, secrets: Secrets, write: bool) -> str:
        if source.write_key_env:
            return secrets.env(source.write_key_env, "write_key_env")
        if write:
            raise ActionError(f"source {source.name} has no write_key_env")
        return secrets.env(source.admin_key_env, "admin_key_env")  # a dry run only reads

    def close(self) -> None:
        self.client.close()

    def plan(self, labels: Mapping[str, str]) -> Plan:
        project, model = labels.get("account_id", ""), labels.get("model", "")
        if not project or not model:
            raise ActionError("the alert has no account_id (project) or no model label")
        limits = self.client.admin.organization.projects.rate_limits
        try:
            found = list(limits.list_rate_limits(project, limit=100))
        except self.sdk.OpenAIError as e:
            raise ActionError(f"listing the rate limits of project {project}: {_sdk_error(e)}") from None
        rl = _model_limit(found, model)
        if rl is None:
            raise ActionError(f"project {project} has no rate limit for model {model}")
        new = self.rule.params.limits()
        previous: dict[str, Any] = {}
        for f in new:
            value = getattr(rl, f, None)
            if value is None:
                raise ActionError(f"the rate limit of model {rl.model} in project {project} has no {f}")
            previous[f] = value
        change = {
            "kind": "openai_rate_limit",
            "project_id": project,
            "rate_limit_id": rl.id,
            "model": rl.model,
            "previous": previous,
            "new": new,
        }
        return Plan(f"project {project} model {rl.model} ({rl.id})", [change])

    def _set(self, change: Mapping[str, Any], values: Mapping[str, int]) -> None:
        limits = self.client.admin.organization.projects.rate_limits
        try:
            limits.update_rate_limit(change["rate_limit_id"], project_id=change["project_id"], **cast(Any, values))
        except self.sdk.OpenAIError as e:
            raise ActionError(
                f"updating rate limit {change['rate_limit_id']} of project {change['project_id']}: {_sdk_error(e)}",
                unsure=isinstance(e, self.sdk.APIConnectionError),  # APITimeoutError is one
            ) from None

    def apply(self, plan: Plan) -> list[dict[str, Any]]:
        done: list[dict[str, Any]] = []
        for change in plan.changes:
            try:
                self._set(change, change["new"])
            except ActionError as e:
                raise ActionError(str(e), done + ([change] if e.unsure else [])) from None
            done.append(change)
        return done

    def undo(self, changes: list[dict[str, Any]]) -> list[str]:
        out = []
        for change in changes:
            self._set(change, change["previous"])
            values = ", ".join(f"{k}={v}" for k, v in change["previous"].items())
            out.append(f"rate limit {change['rate_limit_id']} of project {change['project_id']} back to {values}")
        return out


def _model_limit(found: list[Any], model: str) -> Any:
    """The rate limit of ``model``: its own, else that of the longest model name it starts with.

    The usage API names dated snapshots (``gpt-4o-2024-08-06``), a project's limits may be set on the
    model's family (``gpt-4o``).
    """
    exact = [r for r in found if r.model == model]
    if exact:
        return exact[0]
    prefixes = [r for r in found if model.startswith(r.model + "-")]
    return max(prefixes, key=lambda r: len(r.model)) if prefixes else None


# --------------------------------------------------------------------------- Anthropic


class AnthropicKeyStatus:
    """``anthropic_api_key_status``: keys that used the alert's model in its workspace lately → ``inactive``."""

    def __init__(
        self,
        rule: AnthropicKeyStatusRule,
        source: AdminApiSource,
        secrets: Secrets,
        write: bool,
        now: dt.datetime,
    ) -> None:
        import anthropic

        from exporter.providers.anthropic import API_VERSION

        self.rule = rule
        self.sdk = anthropic
        self.now = now
        key = OpenAIRateLimit._key(source, secrets, write)
        # as the provider does: the Admin API takes the key in x-api-key, no Authorization header
        headers = {"x-api-key": key, "anthropic-version": API_VERSION, "Authorization": anthropic.omit}
        self.client = anthropic.Anthropic(
            api_key=key,
            base_url=source.base_url,
            max_retries=1,
            timeout=min(source.request_timeout, REQUEST_TIMEOUT),
            default_headers=cast(Mapping[str, str], headers),
        )

    def close(self) -> None:
        self.client.close()

    def burning_keys(self, workspace: str, model: str) -> list[str]:
        """API keys with tokens of ``model`` in ``workspace`` in the minute buckets of the last ``lookback``."""
        # the minutes of the lookback up to and with the current one (its bucket is partial, and may be empty yet)
        end = self.now.astimezone(dt.UTC).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        start = end - dt.timedelta(seconds=self.rule.params.lookback)
        params: dict[str, Any] = {
            "starting_at": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "ending_at": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "bucket_width": "1m",
            "group_by": ["api_key_id", "workspace_id", "model"],
            "models": [model],
            "limit": 1440,
        }
        if workspace != DEFAULT_WORKSPACE:
            params["workspace_ids"] = [workspace]
        keys: set[str] = set()
        page: str | None = None
        for _ in range(100):
            query = dict(params, page=page) if page else params
            body = self.client.get("/v1/organizations/usage_report/messages", cast_to=object, options={"params": query})
            if not isinstance(body, dict) or not isinstance(body.get("data"), list):
                raise ActionError("the usage report's answer is not a report")
            for bucket in body["data"]:
                for r in bucket.get("results") or ():
                    ws = r.get("workspace_id") or DEFAULT_WORKSPACE
                    used = sum(
                        int(r.get(k) or 0)
                        for k in ("uncached_input_tokens", "cache_read_input_tokens", "output_tokens")
                    )
                    if ws == workspace and r.get("model") == model and r.get("api_key_id") and used > 0:
                        keys.add(str(r["api_key_id"]))
            page = body.get("next_page") if body.get("has_more") else None
            if not page:
                break
        return sorted(keys)

    def plan(self, labels: Mapping[str, str]) -> Plan:
        workspace, model = labels.get("account_id", ""), labels.get("model", "")
        if not workspace or not model:
            raise ActionError("the alert has no account_id (workspace) or no model label")
        try:
            keys = self.burning_keys(workspace, model)
        except self.sdk.AnthropicError as e:
            raise ActionError(f"reading the usage report: {_sdk_error(e)}") from None
        if not keys:
            minutes = int(self.rule.params.lookback // 60)
            raise ActionError(f"no API key used {model} in workspace {workspace} in the last {minutes} minutes")
        changes = []
        for key_id in keys:
            try:
                key = self.client.organization.api_keys.retrieve(key_id)
            except self.sdk.AnthropicError as e:
                raise ActionError(f"reading API key {key_id}: {_sdk_error(e)}") from None
            if key.status != "active":
                continue  # already inactive (or archived, expired): nothing to change, nothing to restore
            changes.append(
                {"kind": "anthropic_api_key", "api_key_id": key_id, "name": key.name, "previous": key.status}
                | {"new": "inactive"}
            )
        target = f"workspace {workspace} model {model}: keys {', '.join(keys)}"
        return Plan(target, changes)

    def _set(self, key_id: str, status: str) -> None:
        try:
            self.client.organization.api_keys.update(key_id, status=cast(Any, status))
        except self.sdk.AnthropicError as e:
            raise ActionError(
                f"setting API key {key_id} {status}: {_sdk_error(e)}",
                unsure=isinstance(e, self.sdk.APIConnectionError),  # APITimeoutError is one
            ) from None

    def apply(self, plan: Plan) -> list[dict[str, Any]]:
        done: list[dict[str, Any]] = []
        for change in plan.changes:
            try:
                self._set(change["api_key_id"], change["new"])
            except ActionError as e:
                raise ActionError(str(e), done + ([change] if e.unsure else [])) from None
            done.append(change)
        return done

    def undo(self, changes: list[dict[str, Any]]) -> list[str]:
        out = []
        for change in changes:
            self._set(change["api_key_id"], change["previous"])
            out.append(f"API key {change['api_key_id']} back to {change['previous']}")
        return out


# --------------------------------------------------------------------------- webhook


class Webhook:
    """``webhook``: POST the alert (JSON) to the URL in ``url_env``; nothing to undo."""

    def __init__(self, rule: WebhookRule, secrets: Secrets) -> None:
        self.rule = rule
        self.secrets = secrets

    def close(self) -> None:
        pass

    def plan(self, labels: Mapping[str, str]) -> Plan:
        return Plan(f"POST the alert to ${self.rule.params.url_env}")

    def post(self, document: Mapping[str, Any]) -> None:
        url = self.secrets.env(self.rule.params.url_env, "url_env")
        self.secrets.values.add(url)  # a URL may carry a token: never shown
        if not url.startswith(("http://", "https://")):
            raise ActionError(f"${self.rule.params.url_env} is not an http(s) URL")
        req = urllib.request.Request(
            url,
            data=json.dumps(document).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "spend-exporter-guard"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=self.rule.params.timeout) as resp:
                resp.read(65536)
        except urllib.error.HTTPError as e:
            raise ActionError(f"the webhook answered HTTP {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ActionError(f"the webhook could not be reached: {reason.__class__.__name__}") from None


def make_action(
    rule: Rule, source: AdminApiSource | None, secrets: Secrets, write: bool, now: dt.datetime
) -> OpenAIRateLimit | AnthropicKeyStatus | Webhook:
    """The action of ``rule``; ``write``: keys for writing (enforce, undo), else for a dry run's reads."""
    if isinstance(rule, WebhookRule):
        return Webhook(rule, secrets)
    if source is None:
        raise ActionError(f"rule {rule.name}: no AI source for its action")
    if isinstance(rule, OpenAIRateLimitRule):
        return OpenAIRateLimit(rule, source, secrets, write)
    return AnthropicKeyStatus(rule, source, secrets, write, now)

"""Configuration: YAML → validated pydantic models.

Every error names its key path (``sources[2].interval: invalid duration
'soon'``) and all errors are reported at once. ``${VAR}`` and
``${VAR:-default}`` in string values are replaced from the environment.

The sources' models are declared by their types (``exporter.sources``), the keys' value types in
``exporter.config_types``; this module holds the rest of the file and the loading.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import BeforeValidator, Field, ValidationError, WithJsonSchema, field_validator, model_validator

from exporter.config_types import ENV_NAME_RE, ConfigModel, NonEmptyStr
from exporter.guardconfig import ACTION_PROVIDER, GUARD_ACTIONS, GuardConfig
from exporter.sources import SOURCES
from exporter.sources.base import SourceBase

DEFAULT_PORT = 9877

# --------------------------------------------------------------------------- sources

if TYPE_CHECKING:  # a union built at run time is no type to mypy: there, a source is a SourceBase
    SourceConfig = SourceBase
else:
    SourceConfig = Annotated[Union[tuple(s.config for s in SOURCES.values())], Field(discriminator="type")]
"""One source, of any type in ``exporter.sources.SOURCES``, told apart by its ``type`` key."""

SOURCE_TYPES: dict[str, type[SourceBase]] = {t: s.config for t, s in SOURCES.items()}
"""Source ``type`` → its config model."""

# --------------------------------------------------------------------------- the rest

StrOrList = Annotated[
    list[str],
    BeforeValidator(lambda v: [v] if isinstance(v, str) else v),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]


class RuleMatch(ConfigModel):
    provider: StrOrList | None = None
    account_id: StrOrList | None = None
    service_name: StrOrList | None = None
    model: StrOrList | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> RuleMatch:
        if not any(getattr(self, f) for f in ("provider", "account_id", "service_name", "model")):
            raise ValueError("match needs at least one of provider, account_id, service_name, model")
        return self


class AttributionRule(ConfigModel):
    match: RuleMatch
    team: NonEmptyStr
    labels: dict[str, str] = {}
    """Values of extra labels (``attribution.labels``) for the records this rule matches and whose tags lack them."""


# target labels Prometheus or common relabelling adds, and the exporter's own labels: an extra label of that name
# would clash with them (honor_labels off renames it exported_*; on, it overwrites the target's)
RESERVED_LABELS = {
    "customer": "a common target label (relabelling); use customer_id",
    "env": "a common target label (relabelling); use environment",
    "service": "a common target label (relabelling and the Kubernetes service discovery)",
    "region": "a common target label (relabelling)",
    "job": "a target label Prometheus sets",
    "namespace": "a target label the Prometheus Operator's ServiceMonitor sets (and the chart's alerts carry)",
    "pod": "a target label the Prometheus Operator's ServiceMonitor sets",
    "container": "a target label the Prometheus Operator's ServiceMonitor sets",
    "endpoint": "a target label the Prometheus Operator's ServiceMonitor sets",
    "instance": "a target label Prometheus sets",
    "provider": "already a label of the cost families",
    "account_id": "already a label of the cost families",
    "service_name": "already a label of the cost families",
    "team": "already a label of the cost families",
    "model": "already a label of the cost families",
    "token_type": "already a label of the AI families",
    "budget": "already a label of the budget families",
    "source": "already a label of the exporter's families",
    "le": "reserved by Prometheus for histogram buckets",
    "quantile": "reserved by Prometheus for summaries",
}
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def label_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an extra label, or None when it can."""
    if not LABEL_NAME_RE.match(name):
        return "not a Prometheus label name (letters, digits and _, not starting with a digit)"
    if name.startswith("__"):
        return "names starting with __ are reserved by Prometheus"
    why = RESERVED_LABELS.get(name)
    return f"collides with {name!r}: {why}" if why else None


class ExtraLabel(ConfigModel):
    name: str
    tag_keys: list[NonEmptyStr] = []
    """Tag (label) keys whose value becomes this label's, the first present wins; empty: only rules set it."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        why = label_name_problem(v)
        if why:
            raise ValueError(f"label name {v!r} is rejected: {why}")
        return v


class Attribution(ConfigModel):
    team_tag_keys: list[NonEmptyStr] = ["team", "Team"]
    labels: list[ExtraLabel] = []
    rules: list[AttributionRule] = []

    @model_validator(mode="after")
    def _labels_known(self) -> Attribution:
        names = [lab.name for lab in self.labels]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"labels: {', '.join(dup)} configured more than once")
        for i, r in enumerate(self.rules):
            unknown = sorted(set(r.labels) - set(names))
            if unknown:
                raise ValueError(
                    f"rules[{i}].labels: {', '.join(unknown)} not in attribution.labels "
                    f"(configured: {', '.join(names) or 'none'})"
                )
        return self

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(lab.name for lab in self.labels)


class BudgetMatch(ConfigModel):
    # other keys: extra labels of attribution.labels (checked by ``label_errors``, values as here)
    model_config = {**ConfigModel.model_config, "extra": "allow"}

    provider: StrOrList | None = None
    account_id: StrOrList | None = None
    service_name: StrOrList | None = None
    team: StrOrList | None = None
    model: StrOrList | None = None
    # the budget counts the API keys' scaled cost (spend_ai_key_cost_month_to_date_usd), not the cost series
    api_key_id: (
        Annotated[
            list[NonEmptyStr],
            BeforeValidator(lambda v: [v] if isinstance(v, str) else v),
            Field(min_length=1),
            WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
        ]
        | None
    ) = None


class Budget(ConfigModel):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    amount_usd: Annotated[float, Field(gt=0)]
    team: str | None = None
    """Owning team; also restricts the budget to that team's spend unless ``match.team`` is set."""
    warning_ratio: Annotated[float, Field(gt=0, le=1)] = 0.8
    match: BudgetMatch = BudgetMatch()
    include_shared: bool = False
    """Count the team's shares of the shared-cost pools (``allocation.shared``) instead of its pooled line items."""

    @model_validator(mode="after")
    def _shared_needs_a_team(self) -> Budget:
        if self.include_shared and self.team is None and self.match.team is None:
            raise ValueError("include_shared needs team or match.team: shares belong to teams")
        return self


class SharedPool(ConfigModel):
    """One pool of shared cost (``allocation.shared[]``), split across teams by ``exporter.allocation``."""

    name: Annotated[str, Field(min_length=1, max_length=128)]
    match: BudgetMatch
    split: Literal["proportional", "even", "weights"] = "proportional"
    weights: dict[NonEmptyStr, Annotated[float, Field(gt=0)]] | None = None
    to_teams: list[NonEmptyStr] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SharedPool:
        given = any(getattr(self.match, f) for f in ("provider", "account_id", "service_name", "team", "model"))
        if not given and not self.match.model_extra:
            raise ValueError(
                "match needs at least one of provider, account_id, service_name, team, model or an extra label"
            )
        if self.split == "weights" and not self.weights:
            raise ValueError("split: weights needs weights (team: number)")
        if self.split != "weights" and self.weights is not None:
            raise ValueError(f"weights is only for split: weights (this pool's split is {self.split})")
        return self


class Allocation(ConfigModel):
    shared: list[SharedPool] = []


class Config(ConfigModel):
    listen_address: str = f":{DEFAULT_PORT}"
    cache_path: str = "./data/spend-cache.sqlite"
    currency_rates: dict[Annotated[str, Field(pattern=r"^[A-Za-z]{3}$")], Annotated[float, Field(gt=0)]] = {}
    attribution: Attribution = Attribution()
    max_series_per_source: Annotated[int, Field(ge=1)] = 5000
    history_days: Annotated[int, Field(ge=70, le=1200)] = 400
    """Days the cache keeps, and how far back a source's history is fetched (as far as its API allows); at least
    70: the baselines, the previous month and the forecast need them."""
    sources: list[SourceConfig] = []
    budgets: list[Budget] = []
    pricing: dict[
        NonEmptyStr,
        dict[Literal["input", "output", "cache_read", "cache_write", "cache_write_1h"], Annotated[float, Field(ge=0)]],
    ] = {}
    """USD per 1M tokens by model and token type; overrides the genai-prices list prices (exporter/pricing.py)."""
    guard: GuardConfig = GuardConfig()
    allocation: Allocation = Allocation()
    revenue_file: NonEmptyStr | None = None
    """CSV ``customer_id,monthly_revenue_usd`` (exporter/revenue.py); must be readable at start (``file_errors``)."""

    @field_validator("currency_rates")
    @classmethod
    def _upper(cls, v: dict[str, float]) -> dict[str, float]:
        return {k.upper(): r for k, r in v.items()}

    @field_validator("listen_address")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen_address(v)
        return v


def parse_listen_address(v: str) -> tuple[str, int]:
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {v!r} (use host:port or :port)")
    host = host.strip("[]")
    return (host or "0.0.0.0", int(port))


# --------------------------------------------------------------------------- loading


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"


def _interpolate(node: Any, loc: tuple[Any, ...], env: dict[str, str], errors: list[str], failed: set[str]) -> Any:
    """Replace ``${VAR}`` references; a key whose value could not be built goes into ``failed``."""
    if isinstance(node, dict):
        return {k: _interpolate(v, (*loc, k), env, errors, failed) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, (*loc, i), env, errors, failed) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        where = _path(loc)

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            errors.append(f"{where}: environment variable {name} is not set")
            failed.add(where)
            return ""

        out = _ENV_RE.sub(sub, node)
        if "${" in _ENV_RE.sub("", node):
            # "${sk-...}": a value pasted where a name belongs; say so without echoing it
            errors.append(
                f"{where}: invalid environment variable reference: write ${{NAME}} or ${{NAME:-default}}, "
                "NAME made of letters, digits and _ (not starting with a digit)"
            )
            failed.add(where)
        return out
    return node


def _under(line: str, paths: set[str]) -> bool:
    """``line`` is an error about one of ``paths`` or a key inside it."""
    return any(line.startswith((p + ":", p + ".", p + "[")) for p in paths)


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Drop the discriminator tag pydantic inserts after a source's index."""
    out: list[Any] = []
    node = data
    for part in loc:
        if (
            isinstance(node, dict)
            and isinstance(part, str)
            and part not in node
            and (part in SOURCE_TYPES or part in GUARD_ACTIONS)
        ):
            continue  # the union tag ("aws", "webhook") is not a key in the file
        if isinstance(node, dict) and isinstance(part, str) and part not in node and "[" in part:
            continue  # pydantic's "function-after[...]" etc.
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def _describe(err: Any, data: Any) -> str:
    loc = _clean_loc(tuple(err["loc"]), data)
    typ = err["type"]
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if loc and loc[-1] == "[key]":  # pydantic's marker for a mapping key that failed, not its value
        loc = loc[:-1]
        msg = f"invalid key: {msg}"
    if typ == "extra_forbidden":
        return f"{_path(loc)}: unknown key"
    if typ == "missing":
        return f"{_path(loc)}: required key is missing"
    if typ in ("union_tag_invalid", "union_tag_not_found") and loc[:1] == ("guard",):
        if typ == "union_tag_not_found":
            return f"{_path((*loc, 'action'))}: required key is missing (one of {', '.join(GUARD_ACTIONS)})"
        tag = err.get("ctx", {}).get("tag")
        return f"{_path((*loc, 'action'))}: unknown guard action {tag!r} (expected one of {', '.join(GUARD_ACTIONS)})"
    if typ == "union_tag_invalid":
        tag = err.get("ctx", {}).get("tag")
        return f"{_path((*loc, 'type'))}: unknown source type {tag!r} (expected one of {', '.join(SOURCE_TYPES)})"
    if typ == "union_tag_not_found":
        return f"{_path((*loc, 'type'))}: required key is missing (one of {', '.join(SOURCE_TYPES)})"
    if typ == "literal_error":
        return f"{_path(loc)}: {msg}, got {err.get('input')!r}"
    return f"{_path(loc)}: {msg}"


def _duplicates(data: dict[str, Any], errors: list[str]) -> None:
    """Duplicate source, budget and pool names, checked on the raw tree so that the error names its key."""
    allocation = data.get("allocation")
    shared = allocation.get("shared") if isinstance(allocation, dict) else None
    for key, what, items in (
        ("sources", "source", data.get("sources")),
        ("budgets", "budget", data.get("budgets")),
        ("allocation.shared", "pool", shared),
    ):
        if not isinstance(items, list):
            continue
        seen: set[str] = set()
        for i, item in enumerate(items):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str):
                continue
            if name in seen:
                errors.append(f"{key}[{i}].name: duplicate {what} name {name!r}")
            seen.add(name)


def label_errors(cfg: Config) -> list[str]:
    """Budgets' and pools' ``match`` keys beyond the cost labels must be extra labels (``attribution.labels``)."""
    names = cfg.attribution.label_names
    out = []
    matches = [(f"budgets[{i}]", b.match) for i, b in enumerate(cfg.budgets)]
    matches += [(f"allocation.shared[{i}]", p.match) for i, p in enumerate(cfg.allocation.shared)]
    for where, m in matches:
        for key, value in (m.model_extra or {}).items():
            if key not in names:
                out.append(f"{where}.match.{key}: unknown key")
            elif not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
                out.append(f"{where}.match.{key}: expected a value or a list of values")
    return out


def guard_errors(cfg: Config, env: dict[str, str]) -> list[str]:
    """What the ``guard:`` section needs of the rest: a token, and an AI source with a write key per rule."""
    g = cfg.guard
    out: list[str] = []
    if g.rules and not g.token_env and not g.token_file:
        out.append(
            "guard.token_env: required key is missing: the guard endpoint takes no request without a token "
            "(or give guard.token_file)"
        )
    if g.mode == "enforce" and g.token_env and not env.get(g.token_env, "").strip():
        out.append(f"guard.token_env: environment variable {g.token_env} is not set: enforce mode needs the token")
    seen: set[str] = set()
    for i, rule in enumerate(g.rules):
        where = f"guard.rules[{i}]"
        if rule.name in seen:
            out.append(f"{where}.name: duplicate rule name {rule.name!r}")
        seen.add(rule.name)
        provider = ACTION_PROVIDER.get(rule.action)
        if provider is None:
            if rule.source is not None:
                out.append(f"{where}.source: the {rule.action} action uses no source")
            continue
        ai = [s for s in cfg.sources if s.type == provider]
        if rule.source is not None:
            src = next((s for s in cfg.sources if s.name == rule.source), None)
            if src is None or src.type != provider:
                out.append(f"{where}.source: no {provider} source named {rule.source!r}")
                continue
        elif len(ai) == 1:
            src = ai[0]
        else:
            out.append(
                f"{where}.source: required key is missing: "
                + (f"no {provider} source is configured" if not ai else f"{len(ai)} {provider} sources, name one")
            )
            continue
        if g.mode == "enforce" and not getattr(src, "write_key_env", None):
            out.append(
                f"{where}: source {src.name!r} has no write_key_env: enforce mode writes with its own key, "
                "never with the read-only usage key (admin_key_env)"
            )
    return out


def known_teams(cfg: Config) -> set[str]:
    """Teams the configuration names outside a pool's own keys: attribution rules, budgets, pools' ``to_teams``."""
    teams = {r.team for r in cfg.attribution.rules}
    for b in cfg.budgets:
        teams.update([b.team] if b.team else [])
        teams.update(b.match.team or [])
    for p in cfg.allocation.shared:
        teams.update(p.to_teams or [])
    return teams


def allocation_errors(cfg: Config) -> list[str]:
    """What ``allocation.shared`` needs of the rest: weights for known receiving teams, never the pool's own team."""
    out: list[str] = []
    known = known_teams(cfg)
    for i, pool in enumerate(cfg.allocation.shared):
        where = f"allocation.shared[{i}]"
        own = set(pool.match.team or [])
        for t in pool.to_teams or []:
            if t in own:
                out.append(f"{where}.to_teams: {t!r} is the pool's own team (match.team): it never receives a share")
        for t in pool.weights or {}:
            if t in own:
                out.append(f"{where}.weights.{t}: {t!r} is the pool's own team (match.team): it never receives a share")
            elif pool.to_teams is not None and t not in pool.to_teams:
                out.append(f"{where}.weights.{t}: unknown team {t!r}: not in to_teams {pool.to_teams}")
            elif pool.to_teams is None and t not in known:
                out.append(
                    f"{where}.weights.{t}: unknown team {t!r}: list the receiving teams in to_teams, or name the "
                    "team in attribution.rules or budgets"
                )
        if pool.weights and pool.to_teams is not None:
            for t in pool.to_teams:
                if t not in pool.weights and t not in own:
                    out.append(f"{where}.weights: no weight for team {t!r} of to_teams")
    return out


def guard_source(cfg: Config, rule_source: str | None, action: str) -> SourceBase | None:
    """The AI source a guard rule's action uses (``guard_errors`` has checked there is one)."""
    provider = ACTION_PROVIDER.get(action)
    if provider is None:
        return None
    ai = [s for s in cfg.sources if s.type == provider and (rule_source is None or s.name == rule_source)]
    return ai[0] if len(ai) == 1 else None


def parse_config(data: Any, env: dict[str, str] | None = None) -> Config:
    """Validate a parsed YAML document; raise ``ConfigError`` with every problem."""
    env = dict(os.environ) if env is None else env
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["(root): the configuration must be a mapping"])
    errors: list[str] = []
    failed: set[str] = set()
    written = data
    data = _interpolate(data, (), env, errors, failed)
    cfg: Config | None = None
    later: list[str] = []
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        later.extend(_describe(err, data) for err in e.errors(include_url=False))
    _duplicates(data, later)
    if cfg is not None:
        later.extend(guard_errors(cfg, env))
        later.extend(allocation_errors(cfg))
        later.extend(label_errors(cfg))
    # a key whose ${VAR} failed has already its error; what validation says of the half-built value only confuses
    errors.extend(line for line in later if not _under(line, failed))
    if errors or cfg is None:
        raise ConfigError(_hide_env_values(errors, written, env))
    return cfg


def _hide_env_values(errors: list[str], written: Any, env: dict[str, str]) -> list[str]:
    """Errors echo rejected values; one that came from ``${VAR}`` may be a secret: show the reference instead."""
    refs: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(k)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str):
            for m in _ENV_RE.finditer(node):
                if len(env.get(m.group(1), "")) >= 4:
                    refs[env[m.group(1)]] = f"${{{m.group(1)}}}"

    walk(written)
    for value in sorted(refs, key=len, reverse=True):
        errors = [e.replace(value, refs[value]) for e in errors]
    return errors


def file_errors(cfg: Config) -> list[str]:
    """The files the configuration names that cannot be read now: checked when the exporter starts and by
    ``check`` (not by ``parse_config``: a config is valid before the files it names are written)."""
    out = []
    if cfg.revenue_file is not None:
        try:
            with open(cfg.revenue_file, "rb"):
                pass
        except OSError as e:
            out.append(f"revenue_file: cannot read {cfg.revenue_file!r}: {e.strerror or e.__class__.__name__}")
    g = cfg.guard
    if g.mode == "enforce" and g.token_file is not None:
        # as token_env: a dry run refuses requests until the file is there; enforce mode needs the token at start
        try:
            with open(g.token_file, encoding="utf-8") as f:
                if not f.read(4096).strip():
                    out.append(f"guard.token_file: {g.token_file!r} is empty: enforce mode needs the token")
        except (OSError, UnicodeDecodeError) as e:
            why = getattr(e, "strerror", None) or e.__class__.__name__
            out.append(f"guard.token_file: cannot read {g.token_file!r}: {why}: enforce mode needs the token")
    return out


def load_config(path: str | Path, env: dict[str, str] | None = None) -> tuple[Config, dict[str, Any]]:
    """Load and validate ``path``; return the config and its raw (uninterpolated) tree."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            [f"{path}: cannot read: {e.__class__.__name__}: {getattr(e, 'strerror', None) or e}"]
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError([f"(root): invalid YAML{where}: {problem}"]) from None
    cfg = parse_config(raw, env)
    return cfg, raw if isinstance(raw, dict) else {}


_SECRET_KEY = re.compile(r"(secret|password|passwd|token|api_?key|private|credential_?value|auth_?header)", re.I)
REDACTED = "<redacted>"
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)([^/@\s]*)@")


def redacted(raw: dict[str, Any]) -> dict[str, Any]:
    """The config as written (``${VAR}`` references left as they are), secret-looking keys hidden."""

    def walk(node: Any, key: str = "") -> Any:
        if isinstance(node, dict):
            return {k: walk(v, str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, key) for v in node]
        if isinstance(node, str) and key.endswith("_env"):
            # the name of a variable is not a secret; anything else here is probably the value pasted by mistake
            return node if ENV_NAME_RE.match(node) or _ENV_RE.fullmatch(node) else REDACTED
        if isinstance(node, str) and _SECRET_KEY.search(key):
            return node if _ENV_RE.fullmatch(node) else REDACTED
        if isinstance(node, str) and "@" in node:
            # a password in a URL (https://user:pass@proxy) is a secret whatever the key's name
            return _URL_PASSWORD.sub(lambda m: m[0] if _ENV_RE.fullmatch(m[2]) else f"{m[1]}{REDACTED}@", node)
        return node

    out: dict[str, Any] = walk(copy.deepcopy(raw))
    return out


def json_schema() -> str:
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "spend-exporter configuration"
    return json.dumps(schema, indent=2, sort_keys=True)

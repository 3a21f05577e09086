"""Configuration: YAML → validated pydantic models.

Every error names its key path (``sources[2].interval: invalid duration
'soon'``) and all errors are reported at once. ``${VAR}`` and
``${VAR:-default}`` in string values are replaced from the environment.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

DEFAULT_PORT = 9877

_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h|d|w))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_NUMBER_RE = re.compile(r"^[-+]?\d+(?:\.\d+)?$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> float:
    """``6h``, ``15m``, ``1h30m``, ``90s``, ``500ms`` → seconds.

    A bare number (``15``) is refused: Prometheus durations carry a unit, and ``15`` could mean minutes as well
    as seconds.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r} (use e.g. 15m, 6h, 1d)")
    text = str(value).strip() if isinstance(value, int | float | str) else None
    if text is not None and _NUMBER_RE.match(text):
        if float(text) <= 0:
            raise ValueError(f"invalid duration {value!r}: must be greater than 0, with a unit (e.g. 15s)")
        raise ValueError(f"invalid duration {value!r}: a unit is required, e.g. '{text.lstrip('+')}s'")
    if text is not None and _DURATION_RE.match(text):
        total = sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))
        if total > 0:
            return total
        raise ValueError(f"invalid duration {value!r}: must be greater than 0")
    raise ValueError(f"invalid duration {value!r} (use e.g. 15m, 6h, 1d)")


def format_duration(seconds: float) -> str:
    s = int(seconds)
    if s != seconds:
        return f"{seconds}s"
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def _duration_validator(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        # pydantic prefixes "Value error, "; keep our text clean
        raise ValueError(str(e)) from None


Duration = Annotated[
    float,
    BeforeValidator(_duration_validator),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d|w))+$",
            "description": "A duration such as 15m, 6h or 1d.",
        }
    ),
]

NonEmptyStr = Annotated[str, Field(min_length=1)]

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env_name(value: str) -> str:
    if not _ENV_NAME_RE.match(value):
        # never echo the value: what lands here by mistake is most often the secret itself
        raise ValueError(
            "not a valid environment variable name (letters, digits and _, not starting with a digit): "
            "give the name of the variable that holds the secret, not the secret"
        )
    return value


EnvName = Annotated[
    str,
    AfterValidator(_env_name),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _ENV_NAME_RE.pattern,
            "description": "The name of an environment variable (not its value).",
        }
    ),
]
"""The name of an environment variable; every ``*_env`` key is one."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- sources


class SourceBase(_Model):
    FETCH_NEUTRAL: ClassVar[frozenset[str]] = frozenset(
        {"interval", "jitter", "timeout", "backoff_max", "max_api_cost_usd_per_day"}
    )
    """Keys that change when or how patiently a source is fetched, not what: changing one keeps the cache."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=64)]
    interval: Duration = 6 * 3600.0
    jitter: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    """Fraction of the interval by which each refresh is randomly delayed."""
    timeout: Duration = 300.0
    restatement_days: Annotated[int, Field(ge=0, le=60)] = 3
    max_api_cost_usd_per_day: Annotated[float, Field(ge=0)] | None = None
    backoff_max: Duration = 3600.0
    history_days: Annotated[int, Field(ge=1, le=400)] = 35
    """Days fetched on a cold cache besides the previous month (for baselines)."""


class AwsSource(SourceBase):
    FETCH_NEUTRAL = SourceBase.FETCH_NEUTRAL | {"throttle_retries", "throttle_backoff", "throttle_max_wait"}
    type: Literal["aws"]
    endpoint_url: str | None = None
    region: str = "us-east-1"
    account_id: str | None = None
    cost_metric: Literal["UnblendedCost", "AmortizedCost", "NetUnblendedCost", "NetAmortizedCost"] = "UnblendedCost"
    group_by_account: bool = False
    team_tag_key: NonEmptyStr = "team"
    include_credits: bool = False
    forecast: bool = True
    max_api_cost_usd_per_day: Annotated[float, Field(ge=0)] | None = 1.00
    profile: str | None = None
    bedrock_models: bool = True
    """One more query per account breaks Amazon Bedrock down by usage type to fill ``model``."""
    throttle_retries: Annotated[int, Field(ge=0, le=10)] = 4
    throttle_backoff: Duration = 1.0
    """First wait after a throttled call; doubled on each retry, each wait at most ``throttle_max_wait``."""
    throttle_max_wait: Duration = 30.0


class AzureSource(SourceBase):
    FETCH_NEUTRAL = SourceBase.FETCH_NEUTRAL | {"throttle_retries", "throttle_backoff", "throttle_max_wait"}
    type: Literal["azure"]
    scopes: Annotated[list[NonEmptyStr], Field(min_length=1)]
    cost_type: Literal["ActualCost", "AmortizedCost"] = "ActualCost"
    team_tag_key: NonEmptyStr = "team"
    credential: Literal["default", "cli", "environment", "managed_identity", "workload_identity"] = "default"
    base_url: str | None = None
    forecast: bool = True
    cost_column: Literal["PreTaxCost", "Cost"] = "PreTaxCost"
    openai_models: bool = True
    """One more query per scope breaks Azure OpenAI down by meter to fill ``model``."""
    throttle_retries: Annotated[int, Field(ge=0, le=10)] = 3
    throttle_backoff: Duration = 5.0
    """Wait after a 429 that names no retry-after time; doubled on each retry."""
    throttle_max_wait: Duration = 60.0
    """Longest wait honoured; a longer retry-after fails the refresh and the scheduler retries later."""


class OciTeamTag(_Model):
    namespace: NonEmptyStr
    key: NonEmptyStr


class OciSource(SourceBase):
    FETCH_NEUTRAL = SourceBase.FETCH_NEUTRAL | {"retry_max_attempts", "retry_base_delay", "retry_max_delay"}
    type: Literal["oci"]
    tenancy_id: NonEmptyStr
    config_file: str = "~/.oci/config"
    profile: str = "DEFAULT"
    auth: Literal["config_file", "instance_principal"] = "config_file"
    team_tag: OciTeamTag | None = None
    service_endpoint: str | None = None
    region: str | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Za-z]{3}$")] | None = None
    """Currency of the OCI subscription, used for items whose ``currency`` the Usage API leaves blank."""
    retry_max_attempts: Annotated[int, Field(ge=1, le=20)] = 5
    retry_base_delay: Duration = 1.0
    retry_max_delay: Duration = 30.0


class GcpBigQuerySource(SourceBase):
    FETCH_NEUTRAL = SourceBase.FETCH_NEUTRAL | {
        "price_usd_per_tib",
        "maximum_bytes_billed",
        "retry_deadline",
        "retry_base_delay",
        "retry_max_delay",
    }
    type: Literal["gcp_bigquery"]
    table: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+\.[A-Za-z0-9_]+\.[A-Za-z0-9_$-]+$")]
    project: str | None = None
    """Project that runs (and pays for) the query; defaults to the table's project."""
    location: str | None = None
    team_label_key: NonEmptyStr = "team"
    api_endpoint: str | None = None
    credentials: Literal["default", "anonymous"] = "default"
    price_usd_per_tib: Annotated[float, Field(ge=0)] = 6.25
    partition_margin_days: Annotated[int, Field(ge=0, le=31)] = 1
    """Partitions before the first day fetched that are still scanned (partitions are by export time)."""
    maximum_bytes_billed: Annotated[int, Field(ge=1)] | None = None
    retry_deadline: Duration = 60.0
    retry_base_delay: Duration = 1.0
    retry_max_delay: Duration = 10.0


class AdminApiSource(SourceBase):
    """Keys shared by the AI admin-API sources (``openai``, ``anthropic``)."""

    FETCH_NEUTRAL = SourceBase.FETCH_NEUTRAL | {"request_timeout", "max_retries", "max_retry_wait"}
    interval: Duration = 900.0
    admin_key_env: EnvName
    base_url: str | None = None
    request_timeout: Duration = 60.0
    """Timeout of one HTTP request (bounded by what is left of ``timeout``)."""
    max_retries: Annotated[int, Field(ge=0, le=10)] = 3
    """Retries of a throttled (429) request that says when to retry."""
    max_retry_wait: Duration = 60.0
    """Longest ``retry-after`` honoured; a longer one fails the refresh as throttled."""


class OpenAISource(AdminApiSource):
    type: Literal["openai"]
    admin_key_env: EnvName = "OPENAI_ADMIN_KEY"
    usage_endpoints: list[Literal["completions", "embeddings", "images", "audio_speeches", "audio_transcriptions"]] = [
        "completions"
    ]


class AnthropicSource(AdminApiSource):
    type: Literal["anthropic"]
    admin_key_env: EnvName = "ANTHROPIC_ADMIN_KEY"


SqlName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=255)]


class FocusSource(SourceBase):
    """FOCUS exports: local files through DuckDB, or (``engine: athena``) a table in S3 queried by Athena."""

    FETCH_NEUTRAL = SourceBase.FETCH_NEUTRAL | {
        "poll_interval",
        "throttle_retries",
        "throttle_backoff",
        "throttle_max_wait",
        "memory_limit",
        "threads",
    }
    type: Literal["focus"]
    interval: Duration = 3600.0
    paths: list[NonEmptyStr] = []
    cost_column: Literal["BilledCost", "EffectiveCost"] = "BilledCost"
    memory_limit: Annotated[str, Field(pattern=r"(?i)^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")] | None = "512MB"
    """DuckDB: memory of one refresh's query beyond which it spills to disk (null: DuckDB's 80% of RAM)."""
    threads: Annotated[int, Field(ge=1, le=256)] = 2
    """DuckDB: threads of one refresh's query."""
    engine: Literal["duckdb", "athena"] = "duckdb"
    database: SqlName | None = None
    table: SqlName | None = None
    workgroup: NonEmptyStr = "primary"
    output_location: str | None = None
    """s3://bucket/prefix/ for query results; not needed when the workgroup sets one."""
    region: NonEmptyStr = "us-east-1"
    endpoint_url: str | None = None
    partition_column: SqlName | None = "billing_period"
    """Partition holding the billing month as YYYY-MM (AWS Data Exports' layout); null to scan the whole table."""
    poll_interval: Duration = 1.0
    """Wait between two GetQueryExecution polls."""
    model_column: SqlName | None = None
    """Athena: the table's column holding the AI model (e.g. x_model), if it has one; else model is empty."""
    token_type_column: SqlName | None = None
    """Athena: the table's column holding the token type (e.g. x_tokentype); else token counts are input."""
    throttle_retries: Annotated[int, Field(ge=0, le=10)] = 4
    """Athena: retries of a throttled request (TooManyRequestsException, ThrottlingException) before it fails."""
    throttle_backoff: Duration = 1.0
    """Athena: first wait after a throttled request; doubled on each retry, each wait at most ``throttle_max_wait``."""
    throttle_max_wait: Duration = 30.0

    @model_validator(mode="after")
    def _engine_keys(self) -> FocusSource:
        if self.engine == "duckdb" and not self.paths:
            raise ValueError("paths: needed with engine duckdb (a list of files or globs)")
        if self.engine == "athena" and (not self.database or not self.table):
            raise ValueError("database and table: needed with engine athena")
        return self


SourceConfig = Annotated[
    Union[AwsSource, AzureSource, OciSource, GcpBigQuerySource, OpenAISource, AnthropicSource, FocusSource],
    Field(discriminator="type"),
]

SOURCE_TYPES: dict[str, type[SourceBase]] = {
    "aws": AwsSource,
    "azure": AzureSource,
    "oci": OciSource,
    "gcp_bigquery": GcpBigQuerySource,
    "openai": OpenAISource,
    "anthropic": AnthropicSource,
    "focus": FocusSource,
}

# --------------------------------------------------------------------------- the rest

StrOrList = Annotated[
    list[str],
    BeforeValidator(lambda v: [v] if isinstance(v, str) else v),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]


class RuleMatch(_Model):
    provider: StrOrList | None = None
    account_id: StrOrList | None = None
    service_name: StrOrList | None = None
    model: StrOrList | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> RuleMatch:
        if not any(getattr(self, f) for f in ("provider", "account_id", "service_name", "model")):
            raise ValueError("match needs at least one of provider, account_id, service_name, model")
        return self


class AttributionRule(_Model):
    match: RuleMatch
    team: NonEmptyStr


class Attribution(_Model):
    team_tag_keys: list[NonEmptyStr] = ["team", "Team"]
    rules: list[AttributionRule] = []


class BudgetMatch(_Model):
    provider: StrOrList | None = None
    account_id: StrOrList | None = None
    service_name: StrOrList | None = None
    team: StrOrList | None = None
    model: StrOrList | None = None


class Budget(_Model):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    amount_usd: Annotated[float, Field(gt=0)]
    team: str | None = None
    """Owning team; also restricts the budget to that team's spend unless ``match.team`` is set."""
    warning_ratio: Annotated[float, Field(gt=0, le=1)] = 0.8
    match: BudgetMatch = BudgetMatch()


class Config(_Model):
    listen_address: str = f":{DEFAULT_PORT}"
    cache_path: str = "./data/spend-cache.sqlite"
    currency_rates: dict[Annotated[str, Field(pattern=r"^[A-Za-z]{3}$")], Annotated[float, Field(gt=0)]] = {}
    attribution: Attribution = Attribution()
    max_series_per_source: Annotated[int, Field(ge=1)] = 5000
    sources: list[SourceConfig] = []
    budgets: list[Budget] = []
    pricing: dict[
        NonEmptyStr, dict[Literal["input", "output", "cache_read", "cache_write"], Annotated[float, Field(ge=0)]]
    ] = {}
    """USD per 1M tokens by model and token type; overrides exporter/pricing.yml."""

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
        if isinstance(node, dict) and isinstance(part, str) and part not in node and part in SOURCE_TYPES:
            continue  # the union tag ("aws") is not a key in the file
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
    if typ == "union_tag_invalid":
        tag = err.get("ctx", {}).get("tag")
        return f"{_path((*loc, 'type'))}: unknown source type {tag!r} (expected one of {', '.join(SOURCE_TYPES)})"
    if typ == "union_tag_not_found":
        return f"{_path((*loc, 'type'))}: required key is missing (one of {', '.join(SOURCE_TYPES)})"
    if typ == "literal_error":
        return f"{_path(loc)}: {msg}, got {err.get('input')!r}"
    return f"{_path(loc)}: {msg}"


def _duplicates(data: dict[str, Any], errors: list[str]) -> None:
    """Duplicate source and budget names, checked on the raw tree so that the error names its key."""
    for key, what in (("sources", "source"), ("budgets", "budget")):
        items = data.get(key)
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
            return node if _ENV_NAME_RE.match(node) or _ENV_RE.fullmatch(node) else REDACTED
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

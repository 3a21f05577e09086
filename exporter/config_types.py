"""The value types of configuration keys: durations, environment-variable names, non-empty strings.

The bottom of the configuration: ``exporter.sources`` (the source types) and ``exporter.config`` (the file
as a whole) build their models from these.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)

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

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env_name(value: str) -> str:
    if not ENV_NAME_RE.match(value):
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
            "pattern": ENV_NAME_RE.pattern,
            "description": "The name of an environment variable (not its value).",
        }
    ),
]
"""The name of an environment variable; every ``*_env`` key is one."""


class ConfigModel(BaseModel):
    """A part of the configuration: unknown keys are refused, and a loaded config is never changed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

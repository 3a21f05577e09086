"""Configuration: bad files through the CLI, interpolation, all errors at once, the JSON Schema.

Each file in ``tests/data/bad-configs/`` starts with one or more ``# expect: <fragment>`` lines, and may go on
with ``# expect-absent: <fragment>`` lines; ``spend-exporter check`` on it must exit 2, print every expected
fragment and none of the absent ones (a secret pasted in the wrong place, a second confusing error), with no
traceback. The CLI's ``main`` runs in this process for each file; one file also goes through a real interpreter.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from exporter.cli import main
from exporter.config import (
    REDACTED,
    SOURCE_TYPES,
    Config,
    ConfigError,
    load_config,
    parse_config,
    redacted,
)
from exporter.config_types import format_duration, parse_duration
from exporter.sources.focus import FocusSource

ROOT = Path(__file__).resolve().parent.parent
BAD = Path(__file__).resolve().parent / "data" / "bad-configs"
BAD_FILES = sorted(BAD.glob("*.yml"))
CLI = [sys.executable, "-m", "exporter.cli"]
PASTED_KEY = "sk-admin-abc123"  # what tests/data/bad-configs/admin-key-env-is-a-key.yml pastes


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEND_EXPORTER_TEST_")}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env or _env(), cwd=cwd or ROOT)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    """``exporter.cli.main(args)`` in this process, as ``python -m exporter.cli`` would run it.

    ``main`` points the root logger at the (captured) stderr and sets SDK loggers' levels: put them back, so that
    later tests in this worker (and pytest's own log capture) see logging as they expect.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {n: lg.level for n, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    capsys.readouterr()
    try:
        try:
            code = main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, lg in logging.Logger.manager.loggerDict.items():
            if isinstance(lg, logging.Logger):
                lg.setLevel(levels.get(name, logging.NOTSET))
    return Result(code, out.out, out.err)


def expectations(path: Path, kind: str = "expect") -> list[str]:
    """The ``# expect:`` (or ``# expect-absent:``) fragments of the comment lines that open ``path``."""
    out = []
    for line in path.read_text().splitlines():
        if not line.startswith("# expect"):
            break
        tag, _, fragment = line.removeprefix("# ").partition(":")
        if tag == kind:
            out.append(fragment.strip())
    return out


@pytest.fixture
def no_test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bad configs name unset ``SPEND_EXPORTER_TEST_*`` variables: make sure none is set."""
    for k in list(os.environ):
        if k.startswith("SPEND_EXPORTER_TEST_"):
            monkeypatch.delenv(k)


def assert_bad_config_output(path: Path, r: Result | subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: invalid configuration {path}:")
    for fragment in expectations(path):
        assert fragment in r.stderr, f"{fragment!r} not in:\n{r.stderr}"
    for fragment in expectations(path, "expect-absent"):
        assert fragment not in r.stderr, f"{fragment!r} in:\n{r.stderr}"


def test_there_are_enough_bad_configs() -> None:
    assert len(BAD_FILES) >= 30
    for p in BAD_FILES:
        assert expectations(p), f"{p.name} has no '# expect:' line"
        assert p.read_text().startswith("# expect:"), f"{p.name} does not start with '# expect:'"


@pytest.mark.usefixtures("no_test_env")
@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_bad_config_names_its_key(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_bad_config_output(path, cli_in_process(capsys, "check", "--config.file", str(path)))


def test_a_bad_config_through_the_real_interpreter() -> None:
    """End to end, as a user runs it: a secret pasted where a variable's name belongs is refused, not shown."""
    path = BAD / "admin-key-env-is-a-key.yml"
    r = run_cli("check", "--config.file", str(path), "--log.level", "debug")
    assert_bad_config_output(path, r)
    assert PASTED_KEY not in r.stderr + r.stdout


def test_all_errors_are_reported_at_once() -> None:
    raw = yaml.safe_load((BAD / "many-errors.yml").read_text())
    with pytest.raises(ConfigError) as e:
        parse_config(raw, env={})
    assert len(e.value.errors) == 6
    # one line per problem, each starting with its key path
    keys = sorted(line.split(":", 1)[0] for line in e.value.errors)
    assert keys == [
        "attribution.team_tag_keys[1]",
        "budgets[0].amount_usd",
        "max_series_per_source",
        "sources[0].interval",
        "sources[1].type",
        "sources[2].name",
    ]


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = cli_in_process(capsys, "check", "--config.file", str(tmp_path / "nope.yml"))
    assert r.returncode == 2
    assert f"{tmp_path / 'nope.yml'}: no such file" in r.stderr
    assert "Traceback" not in r.stderr


def test_unreadable_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "binary.yml"
    p.write_bytes(b"\xff\xfe\x00garbage")
    r = cli_in_process(capsys, "check", "--config.file", str(p))
    assert r.returncode == 2
    assert "cannot read" in r.stderr
    assert "Traceback" not in r.stderr


# --------------------------------------------------------------------------- interpolation


def test_env_interpolation_and_defaults() -> None:
    raw = {
        "cache_path": "${SPEND_DIR}/cache.sqlite",
        "max_series_per_source": "${MAX_SERIES:-250}",
        "sources": [
            {
                "name": "focus",
                "type": "focus",
                "paths": ["${SPEND_DIR}/${SUBDIR:-exports}/*.csv", "${EMPTY_DEFAULT:-}x.parquet"],
                "interval": "${INTERVAL}",
            }
        ],
    }
    cfg = parse_config(raw, env={"SPEND_DIR": "/srv/spend", "INTERVAL": "15m"})
    assert cfg.cache_path == "/srv/spend/cache.sqlite"
    assert cfg.max_series_per_source == 250
    src = cfg.sources[0]
    assert isinstance(src, FocusSource)
    assert src.paths == ["/srv/spend/exports/*.csv", "x.parquet"]
    assert src.interval == 900.0
    # a set variable wins over the default, even when it is empty
    cfg = parse_config(raw, env={"SPEND_DIR": "/d", "INTERVAL": "1h", "MAX_SERIES": "7", "SUBDIR": ""})
    assert cfg.max_series_per_source == 7
    assert cfg.sources[0].paths[0] == "/d//*.csv"  # type: ignore[union-attr]
    assert cfg.sources[0].interval == 3600.0


def test_unset_variables_are_all_reported_with_their_keys() -> None:
    raw = {
        "cache_path": "${NOPE_A}",
        "sources": [{"name": "f", "type": "focus", "paths": ["${NOPE_B}/x", "${NOPE_C:-ok}"]}],
    }
    with pytest.raises(ConfigError) as e:
        parse_config(raw, env={})
    assert e.value.errors == [
        "cache_path: environment variable NOPE_A is not set",
        "sources[0].paths[0]: environment variable NOPE_B is not set",
    ]


def test_an_unset_variable_is_the_only_error_of_its_key() -> None:
    raw = {
        "sources": [
            {"name": "o", "type": "openai", "admin_key_env": "${NOPE_KEY}"},
            {"name": "${NOPE_NAME}", "type": "anthropic"},
            {"name": "${NOPE_NAME}", "type": "anthropic"},
            {"name": "f", "type": "${NOPE_TYPE}", "paths": ["x"]},
            {"name": "g", "type": "focus", "paths": ["x"], "interval": "${NOPE_INTERVAL}"},
        ]
    }
    with pytest.raises(ConfigError) as e:
        parse_config(raw, env={})
    # not also "String should have at least 1 character", "duplicate source name ''", "unknown source type ''"...
    assert e.value.errors == [
        "sources[0].admin_key_env: environment variable NOPE_KEY is not set",
        "sources[1].name: environment variable NOPE_NAME is not set",
        "sources[2].name: environment variable NOPE_NAME is not set",
        "sources[3].type: environment variable NOPE_TYPE is not set",
        "sources[4].interval: environment variable NOPE_INTERVAL is not set",
    ]


def test_an_invalid_reference_is_an_error_that_does_not_echo_it() -> None:
    raw = {
        "cache_path": "/srv/${SPEND_DIR}/cache.sqlite",
        "sources": [
            {"name": "o", "type": "openai", "admin_key_env": "${sk-admin-Qw3rTy}"},
            {"name": "a", "type": "anthropic", "base_url": "https://u:${sk-ant-pw-9x}@proxy/", "admin_key_env": "K"},
            {"name": "f", "type": "focus", "paths": ["${1DIR}/x", "${}", "${UNCLOSED"]},
        ],
    }
    with pytest.raises(ConfigError) as e:
        parse_config(raw, env={"SPEND_DIR": "d"})
    hint = "invalid environment variable reference: write ${NAME} or ${NAME:-default}"
    assert [line.split(":", 1)[0] for line in e.value.errors] == [
        "sources[0].admin_key_env",
        "sources[1].base_url",
        "sources[2].paths[0]",
        "sources[2].paths[1]",
        "sources[2].paths[2]",
    ]
    assert all(hint in line for line in e.value.errors), e.value.errors
    text = "\n".join(e.value.errors)
    for secret in ("Qw3rTy", "sk-ant-pw-9x", "1DIR", "UNCLOSED"):
        assert secret not in text


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    if model in seen:
        return
    seen.add(model)
    for f in model.model_fields.values():
        stack: list[Any] = [f.annotation]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                _models(t, seen)
            stack.extend(typing.get_args(t))


def env_name_fields() -> list[tuple[str, Any]]:
    """Every ``*_env`` key of every configuration model: (Model.key, the field's type with its validators)."""
    models: set[type[BaseModel]] = set()
    for m in (Config, *SOURCE_TYPES.values()):
        _models(m, models)
    return sorted(
        (f"{m.__name__}.{name}", typing.Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation)
        for m in models
        for name, f in m.model_fields.items()
        if name.endswith("_env")
    )


def test_every_env_key_takes_a_name_not_a_value() -> None:
    fields = env_name_fields()
    assert {name for name, _ in fields} >= {"OpenAISource.admin_key_env", "AnthropicSource.admin_key_env"}
    for name, typ in fields:
        adapter = TypeAdapter(typ)
        for good in ("OPENAI_ADMIN_KEY", "_x", "a1"):
            assert adapter.validate_python(good) == good
        for value in (PASTED_KEY, "", "1ABC", "MY KEY", "sk_live_Abc=", "${X}"):
            with pytest.raises(ValidationError) as e:
                adapter.validate_python(value)
            (err,) = e.value.errors()
            assert "not a valid environment variable name" in err["msg"], (name, value)
            if value:
                assert value not in err["msg"], (name, value)


@pytest.mark.parametrize("source", ["openai", "anthropic"])
def test_a_key_pasted_as_admin_key_env_is_refused_without_echoing_it(source: str) -> None:
    raw = {"sources": [{"name": "ai", "type": source, "admin_key_env": PASTED_KEY}]}
    with pytest.raises(ConfigError) as e:
        parse_config(raw, env={PASTED_KEY: "x"})
    (line,) = e.value.errors
    assert line.startswith("sources[0].admin_key_env: not a valid environment variable name")
    assert PASTED_KEY not in line


def test_interpolation_through_the_cli(tmp_path: Path) -> None:
    data = tmp_path / "exports"
    data.mkdir()
    (data / "a.csv").write_text("ChargePeriodStart,BilledCost\n")
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        "cache_path: ${SPEND_EXPORTER_TEST_DIR}/cache.sqlite\n"
        "sources:\n"
        "  - {name: focus, type: focus, paths: ['${SPEND_EXPORTER_TEST_DIR}/exports/*.csv'],"
        " interval: '${SPEND_EXPORTER_TEST_INTERVAL:-2h}'}\n"
    )
    r = run_cli("check", "--config.file", str(cfg), env=_env(SPEND_EXPORTER_TEST_DIR=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert "focus" in r.stdout and "ok" in r.stdout
    assert (tmp_path / "cache.sqlite").exists()
    r = run_cli("check", "--config.file", str(cfg))
    assert r.returncode == 2
    assert "cache_path: environment variable SPEND_EXPORTER_TEST_DIR is not set" in r.stderr
    assert "sources[0].paths[0]: environment variable SPEND_EXPORTER_TEST_DIR is not set" in r.stderr


def test_redacted_keeps_references_not_values() -> None:
    raw = {
        "sources": [
            {"name": "a", "type": "aws", "endpoint_url": "https://ce:${SPEND_EXPORTER_TEST_PW}@proxy.internal"},
            {"name": "o", "type": "openai", "admin_key_env": "OPENAI_ADMIN_KEY"},
            {"name": "z", "type": "azure", "scopes": ["/s/1"], "base_url": "https://svc:hunter2-literal@proxy"},
        ],
        "my_token": "abc-literal-secret",
    }
    out = json.dumps(redacted(raw))
    assert "${SPEND_EXPORTER_TEST_PW}" in out
    assert "OPENAI_ADMIN_KEY" in out  # the name of a variable is not a secret
    assert "hunter2-literal" not in out
    assert "abc-literal-secret" not in out
    assert REDACTED in out
    assert raw["my_token"] == "abc-literal-secret"  # the input is not modified


def test_redacted_hides_an_env_key_holding_a_value() -> None:
    """Defence in depth: parse_config refuses these, but /config must not show one if it ever got through."""
    raw = {
        "sources": [
            {"name": "o", "type": "openai", "admin_key_env": PASTED_KEY},
            {"name": "a", "type": "anthropic", "admin_key_env": "ANTHROPIC_ADMIN_KEY"},
            {"name": "b", "type": "anthropic", "admin_key_env": "${SPEND_EXPORTER_TEST_KEY_NAME}"},
        ],
        "guard": {"token_env": "Bearer abc.def-ghi"},
    }
    out = redacted(raw)
    text = json.dumps(out)
    assert PASTED_KEY not in text and "abc.def-ghi" not in text
    assert out["sources"][0]["admin_key_env"] == REDACTED
    assert out["guard"]["token_env"] == REDACTED
    assert out["sources"][1]["admin_key_env"] == "ANTHROPIC_ADMIN_KEY"
    assert out["sources"][2]["admin_key_env"] == "${SPEND_EXPORTER_TEST_KEY_NAME}"


# --------------------------------------------------------------------------- durations and schema


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15m", 900),
        ("6h", 21600),
        ("1d", 86400),
        ("1h30m", 5400),
        ("90s", 90),
        ("500ms", 0.5),
        ("2w", 1209600),
        (" 1m ", 60),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "", "6", "h", "-1h", "1.5", "0m", True, 0, -3, "6 hours", 45, 1.5, None])
def test_invalid_durations(text: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (15, "invalid duration 15: a unit is required, e.g. '15s'"),
        (2.5, "invalid duration 2.5: a unit is required, e.g. '2.5s'"),
        ("15", "invalid duration '15': a unit is required, e.g. '15s'"),
        ("0s", "invalid duration '0s': must be greater than 0"),
        ("0h0m", "invalid duration '0h0m': must be greater than 0"),
        (0, "invalid duration 0: must be greater than 0, with a unit (e.g. 15s)"),
        (-5, "invalid duration -5: must be greater than 0, with a unit (e.g. 15s)"),
        ("soon", "invalid duration 'soon' (use e.g. 15m, 6h, 1d)"),
    ],
)
def test_invalid_duration_messages(value: object, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_duration(value)
    assert str(e.value) == message


def test_a_bare_number_is_refused_for_every_duration_key() -> None:
    """Timeouts and retry waits too, not only intervals: every Duration key reads the same way."""
    raw = {
        "sources": [
            {"name": "f", "type": "focus", "paths": ["x"], "interval": 15, "timeout": 30, "poll_interval": 1},
            {"name": "o", "type": "openai", "request_timeout": 60, "max_retry_wait": "60s"},
        ]
    }
    with pytest.raises(ConfigError) as e:
        parse_config(raw, env={})
    assert e.value.errors == [
        "sources[0].interval: invalid duration 15: a unit is required, e.g. '15s'",
        "sources[0].timeout: invalid duration 30: a unit is required, e.g. '30s'",
        "sources[0].poll_interval: invalid duration 1: a unit is required, e.g. '1s'",
        "sources[1].request_timeout: invalid duration 60: a unit is required, e.g. '60s'",
    ]


def test_format_duration_round_trips() -> None:
    for s in (900.0, 21600.0, 86400.0, 5400.0, 90.0, 604800.0):
        assert parse_duration(format_duration(s)) == s


def test_config_schema_is_valid_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    r = cli_in_process(capsys, "config-schema")
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    validator_cls = jsonschema.validators.validator_for(schema)
    assert validator_cls is jsonschema.Draft202012Validator
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    # the shipped demo config and the example from the docs validate; a broken one does not
    demo = yaml.safe_load((ROOT / "examples" / "demo-config.yml").read_text())
    validator.validate(demo)
    assert {"sources", "budgets", "attribution", "currency_rates", "max_series_per_source"} <= set(schema["properties"])
    errors = list(validator.iter_errors({"sources": [{"name": "x", "type": "focus", "interval": "soon"}]}))
    assert errors, "a source with no paths and a bad interval must not validate"
    assert list(validator.iter_errors({"listen_adress": ":1"})), "unknown keys must not validate"


def test_demo_config_loads() -> None:
    cfg, raw = load_config(ROOT / "examples" / "demo-config.yml")
    assert [s.name for s in cfg.sources] == ["focus-demo"]
    assert {b.name for b in cfg.budgets} == {"ai-platform", "data-platform", "total"}
    assert raw["sources"][0]["type"] == "focus"

"""Configuration: bad files through the real CLI, interpolation, all errors at once, the JSON Schema.

Each file in ``tests/data/bad-configs/`` starts with one or more ``# expect: <fragment>`` lines;
``spend-exporter check`` on it must exit 2 and print every fragment, with no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import pytest
import yaml

from exporter.config import (
    REDACTED,
    ConfigError,
    FocusSource,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
    redacted,
)

ROOT = Path(__file__).resolve().parent.parent
BAD = Path(__file__).resolve().parent / "data" / "bad-configs"
BAD_FILES = sorted(BAD.glob("*.yml"))
CLI = [sys.executable, "-m", "exporter.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEND_EXPORTER_TEST_")}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env or _env(), cwd=cwd or ROOT)


def expectations(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        if not line.startswith("# expect:"):
            break
        out.append(line.removeprefix("# expect:").strip())
    return out


@pytest.fixture(scope="module")
def bad_results() -> dict[str, subprocess.CompletedProcess[str]]:
    """Runs ``check`` on every bad config at once (a few CPUs' worth of interpreters)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = pool.map(lambda p: run_cli("check", "--config.file", str(p)), BAD_FILES)
        return {p.name: r for p, r in zip(BAD_FILES, results, strict=True)}


def test_there_are_enough_bad_configs() -> None:
    assert len(BAD_FILES) >= 30
    for p in BAD_FILES:
        assert expectations(p), f"{p.name} has no '# expect:' line"


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_bad_config_names_its_key(path: Path, bad_results: dict[str, subprocess.CompletedProcess[str]]) -> None:
    r = bad_results[path.name]
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: invalid configuration {path}:")
    for fragment in expectations(path):
        assert fragment in r.stderr, f"{fragment!r} not in:\n{r.stderr}"


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


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    r = run_cli("check", "--config.file", str(tmp_path / "nope.yml"))
    assert r.returncode == 2
    assert f"{tmp_path / 'nope.yml'}: no such file" in r.stderr
    assert "Traceback" not in r.stderr


def test_unreadable_config_file_exits_2(tmp_path: Path) -> None:
    p = tmp_path / "binary.yml"
    p.write_bytes(b"\xff\xfe\x00garbage")
    r = run_cli("check", "--config.file", str(p))
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
        (45, 45),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "", "6", "h", "-1h", "1.5", "0m", True, 0, -3, "6 hours"])
def test_invalid_durations(text: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    for s in (900.0, 21600.0, 86400.0, 5400.0, 90.0, 604800.0):
        assert parse_duration(format_duration(s)) == s


def test_config_schema_is_valid_json_schema(tmp_path: Path) -> None:
    r = run_cli("config-schema")
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

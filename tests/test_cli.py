"""The command line, run as a user runs it: ``once``, ``check`` and ``run`` in a subprocess.

Each subprocess runs on a fixed clock (``tests.clock``: libfaketime, starting at ``FIXED_NOW``), and the
FOCUS files are written relative to that day, so no figure depends on when the suite runs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.cli import write_atomic
from tests.clock import FIXED_NOW, fixed_clock_env
from tests.helpers import series
from tests.test_config import cli_in_process

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "exporter.cli"]


def cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=fixed_clock_env()
    )


def promtool_check(path: Path) -> subprocess.CompletedProcess[bytes]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH (make promtool-deps installs it)")
    return subprocess.run([promtool, "check", "metrics"], stdin=path.open("rb"), capture_output=True, timeout=60)


@pytest.fixture
def workdir(tmp_path: Path, focus: Any) -> Path:
    """A config with one good FOCUS source: 40 days up to the fixed clock's today, 10 USD a day."""
    today = FIXED_NOW.date()
    rows = [focus.daily(today - dt.timedelta(days=i), 10.0, ServiceName="Amazon EC2") for i in range(40)]
    focus.write(tmp_path / "exports" / "aws.csv", rows)
    (tmp_path / "good.yml").write_text(
        "cache_path: cache/spend.sqlite\n"
        "sources:\n"
        "  - {name: focus, type: focus, paths: ['exports/*.csv']}\n"
        "budgets:\n"
        "  - {name: total, amount_usd: 10000}\n"
    )
    (tmp_path / "broken.yml").write_text(
        "cache_path: cache/spend.sqlite\n"
        "sources:\n"
        "  - {name: focus, type: focus, paths: ['exports/*.csv']}\n"
        "  - {name: broken, type: focus, paths: ['nothing-here/*.csv']}\n"
    )
    return tmp_path


def month_to_date() -> float:
    return 10.0 * FIXED_NOW.day


# --------------------------------------------------------------------------- once


def test_once_writes_the_exposition_atomically(workdir: Path) -> None:
    out = workdir / "textfile" / "spend.prom"
    out.parent.mkdir()
    out.write_text("# stale content from the last run\n")
    before = out.stat().st_ino
    r = cli("once", "--config.file", "good.yml", "--output", str(out), cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    # replaced by rename, not rewritten in place: node_exporter never reads half a file
    assert out.stat().st_ino != before
    assert [p.name for p in out.parent.iterdir()] == ["spend.prom"], "no temporary file left behind"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    text = out.read_text()
    (mtd,) = series(text, "spend_cost_month_to_date_usd").values()
    assert mtd == pytest.approx(month_to_date())
    assert series(text, "spend_exporter_source_up") == {(("provider", "focus"), ("source", "focus")): 1.0}
    check = promtool_check(out)
    assert check.returncode == 0, check.stdout + check.stderr


def test_once_to_stdout(workdir: Path) -> None:
    r = cli("once", "--config.file", "good.yml", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("# HELP spend_cost_month_to_date_usd ")
    (mtd,) = series(r.stdout, "spend_cost_month_to_date_usd").values()
    assert mtd == pytest.approx(month_to_date())


def test_once_with_a_failing_source(workdir: Path) -> None:
    out = workdir / "spend.prom"
    r = cli("once", "--config.file", "broken.yml", "--output", str(out), cwd=workdir)
    assert r.returncode == 1
    assert "broken: no files match nothing-here/*.csv" in r.stderr
    assert "Traceback" not in r.stderr
    up = {dict(k)["source"]: v for k, v in series(out.read_text(), "spend_exporter_source_up").items()}
    assert up == {"focus": 1.0, "broken": 0.0}, "the exposition is still written, with the failure in it"


def test_write_atomic_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "spend.prom"
    target.write_bytes(b"old\n")
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["spend.prom"]
    write_atomic(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    write_atomic(tmp_path / "sub" / "dir" / "x.prom", b"x\n")  # creates the directory
    assert (tmp_path / "sub" / "dir" / "x.prom").read_bytes() == b"x\n"


# --------------------------------------------------------------------------- check


def test_check_prints_a_table(workdir: Path) -> None:
    r = cli("check", "--config.file", "good.yml", cwd=workdir)
    assert r.returncode == 0, r.stderr
    header, row = r.stdout.splitlines()
    assert header.split() == ["SOURCE", "STATUS", "RECORDS", "MONTH-TO-DATE", "USD", "DURATION"]
    cells = row.split()
    assert cells[:2] == ["focus", "ok"]
    assert int(cells[2]) > 0
    assert cells[3] == f"{month_to_date():,.2f}"
    assert cells[4].endswith("s") and float(cells[4][:-1]) >= 0


def test_check_exits_1_when_a_source_fails(workdir: Path) -> None:
    r = cli("check", "--config.file", "broken.yml", cwd=workdir)
    assert r.returncode == 1
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    assert rows["focus"][1] == "ok"
    assert rows["broken"][1:4] == ["FAILED", "0", "0.00"]
    assert "broken: no files match nothing-here/*.csv" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["check", "once"])
def test_one_shot_commands_say_what_failed_without_the_run_loop_wording(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """``check`` and ``once`` have no last good data to keep and no next try: the log says only what failed."""
    cfg = tmp_path / "broken.yml"
    cfg.write_text(
        f"cache_path: {tmp_path / 'cache.sqlite'}\n"
        f"sources:\n  - {{name: broken, type: focus, paths: ['{tmp_path / 'nothing-here' / '*.csv'}']}}\n"
    )
    extra = ["--output", str(tmp_path / "spend.prom")] if command == "once" else []
    r = cli_in_process(capsys, command, "--config.file", str(cfg), *extra)
    assert r.returncode == 1
    assert "source broken refresh failed: no files match" in r.stderr
    assert f"broken: no files match {tmp_path / 'nothing-here' / '*.csv'}" in r.stderr
    for wording in ("keeping the last good data", "next try", "in a row"):
        assert wording not in r.stderr, r.stderr


def test_bad_flags_exit_2(workdir: Path) -> None:
    assert cli("check", "--config.file", "good.yml", "--log.level", "loud", cwd=workdir).returncode == 2
    assert cli("frobnicate", cwd=workdir).returncode == 2
    r = cli("--version", cwd=workdir)
    assert r.returncode == 0 and r.stdout.startswith("spend-exporter ")


def test_json_logs(workdir: Path) -> None:
    r = cli("check", "--config.file", "broken.yml", "--log.format", "json", cwd=workdir)
    lines = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    assert lines, r.stderr
    assert all({"time", "level", "logger", "msg"} <= set(entry) for entry in lines)
    assert any(entry["level"] == "warning" and "broken" in entry["msg"] for entry in lines)


# --------------------------------------------------------------------------- run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def running(workdir: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "run", "--config.file", "good.yml", "--web.listen-address", f"127.0.0.1:{port}"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=fixed_clock_env(),
    )
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def wait_ready(proc: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited early with {proc.returncode}: {proc.communicate()[1]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    pytest.fail("the exporter did not become ready")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_and_stops_on_signal(running: tuple[subprocess.Popen[str], int], sig: signal.Signals) -> None:
    proc, port = running
    wait_ready(proc, port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    (mtd,) = series(text, "spend_cost_month_to_date_usd").values()
    assert mtd == pytest.approx(month_to_date())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        assert json.load(r)["sources"][0]["up"] is True
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"listening on http://127.0.0.1:{port}" in err
    assert "shutting down" in err
    assert "Traceback" not in err
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/-/healthy", timeout=2)


def test_run_refuses_a_bad_web_config(workdir: Path) -> None:
    (workdir / "web.yml").write_text("basic_auth_users:\n  alice: plaintext-password\n")
    r = cli(
        "run",
        "--config.file",
        "good.yml",
        "--web.listen-address",
        f"127.0.0.1:{free_port()}",
        "--web.config.file",
        "web.yml",
        cwd=workdir,
    )
    assert r.returncode == 2
    assert "--web.config.file" in r.stderr and "basic_auth_users.alice: not a bcrypt hash" in r.stderr
    assert "plaintext-password" not in r.stderr
    assert "Traceback" not in r.stderr


def test_run_refuses_a_busy_port(workdir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = cli("run", "--config.file", "good.yml", "--web.listen-address", f"127.0.0.1:{port}", cwd=workdir)
    assert r.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr


def test_run_rejects_a_bad_listen_address(workdir: Path) -> None:
    r = cli("run", "--config.file", "good.yml", "--web.listen-address", "localhost", cwd=workdir)
    assert r.returncode == 2
    assert "--web.listen-address: invalid listen address 'localhost'" in r.stderr


def test_installed_console_script(workdir: Path) -> None:
    script = Path(sys.executable).parent / "spend-exporter"
    if not script.exists():
        pytest.skip("the console script is not installed next to this interpreter")
    r = subprocess.run(
        [str(script), "check", "--config.file", "good.yml"],
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=60,
        env=fixed_clock_env(),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("SOURCE")
    assert os.path.exists(workdir / "cache" / "spend.sqlite")

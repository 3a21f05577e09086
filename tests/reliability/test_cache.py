"""Faults in the cache, and the snapshot saved in it for a fast restart.

- ``kill -9`` inside the store's write transaction, and while a provider is answering: after a
  restart the cache holds the old data or the new, never a mix, and no day is missing.
- A damaged cache file (garbage, truncated, a valid SQLite file of another schema, damage found
  after start), a read-only cache directory and a full disk (``RLIMIT_FSIZE``): one log line naming
  the path and the problem, no traceback, and an exporter that serves ``/metrics`` and refreshes.
- The saved snapshot is byte-identical to a fresh build, and is not used once the configuration,
  the data or the hour changed.

The faults run the real ``spend-exporter run`` in a subprocess, its clock started at ``FIXED_NOW`` by
libfaketime (``tests.clock``); what this process writes into the cache first is written on a clock fixed at
the same moment, so the windows, the month and the hour never depend on the date the suite runs. The kill
lands where it should because the process itself says where it is (a failpoint that stops inside the
transaction, an emulator that holds its reply), never by guessing a delay.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import select
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.app import App, build_app
from exporter.config import parse_config
from exporter.status import budgets_status, status_report
from exporter.store import Store
from exporter.timing import fetch_window
from tests.clock import FIXED_NOW, fixed_clock_env
from tests.emulators.ai_dataset import AIDataset, build_ai_dataset
from tests.emulators.openai_admin import DEFAULT_ADMIN_KEY, OpenAIAdminEmulator
from tests.emulators.server import Request, Response
from tests.helpers import series

ROOT = Path(__file__).resolve().parents[2]
DAY = dt.timedelta(days=1)
SERVICES = {"Amazon EC2": 10.0, "Amazon S3": 2.5}  # USD a day in the first export; the second doubles it

# Stops the refresh inside Store.replace's transaction, after every row is written and before COMMIT,
# says so on stdout and waits to be killed. Only this test's own engine code is wrapped.
FAILPOINT = r"""
import sys, threading
from exporter import store
replace, put_state = store.Store.replace, store.Store._put_state
inside = threading.local()
def held_replace(self, source, rep, state):
    inside.on = True
    try:
        return replace(self, source, rep, state)
    finally:
        inside.on = False
def held_put_state(c, s):
    put_state(c, s)
    if getattr(inside, "on", False):
        n = c.execute("SELECT COUNT(*) FROM cost").fetchone()[0]
        print(f"IN-TRANSACTION open={c.in_transaction} cost_rows={n}", flush=True)
        threading.Event().wait()
store.Store.replace = held_replace
store.Store._put_state = staticmethod(held_put_state)
from exporter.cli import main
sys.exit(main(sys.argv[1:]))
"""


def today() -> dt.date:
    """The day of ``FIXED_NOW``: the exporters started here start their clocks then (and run for minutes at most)."""
    return FIXED_NOW.date()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def export_rows(focus: Any, factor: float = 1.0, days: int = 45, filler: int = 0) -> list[dict[str, Any]]:
    """The two services of ``SERVICES``, plus ``filler`` services of 1 cent a day to make the refresh's writes big."""
    t = today()
    costs = {**SERVICES, **{f"filler-{j}": 0.01 for j in range(filler)}}
    return [
        focus.daily(t - i * DAY, cost * factor, ServiceName=svc) for i in range(days) for svc, cost in costs.items()
    ]


def write_config(tmp_path: Path, cache: Path, sources: list[dict[str, Any]] | None = None) -> Path:
    cfg = {
        "cache_path": str(cache),
        "sources": sources
        or [{"name": "focus", "type": "focus", "paths": [str(tmp_path / "exports" / "*.csv")], "interval": "1h"}],
        "budgets": [{"name": "total", "amount_usd": 100000}],
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def fill(config: Path) -> str:
    """One refresh of every source into the cache, then a clean close (the state a running exporter leaves).

    Returns the exposition it published. It runs at ``FIXED_NOW``, where the ``Exporter`` processes start.
    """
    app = build_app(parse_config(yaml.safe_load(config.read_text())), now=lambda: FIXED_NOW)
    try:
        assert all(o.ok for o in app.refresh_all())
        return app.exposition()
    finally:
        app.close()


def make_due(cache: Path) -> None:
    """As if the interval had passed: the next ``run`` refreshes at once."""
    conn = sqlite3.connect(cache)
    conn.execute("UPDATE source_state SET next_refresh = 0")
    conn.commit()
    conn.close()


def stored_costs(cache: Path) -> dict[tuple[str, str], float]:
    conn = sqlite3.connect(f"file:{cache}?mode=ro", uri=True)
    try:
        return {(d, s): c for d, s, c in conn.execute("SELECT day, service_name, cost_usd FROM cost")}
    finally:
        conn.close()


class Exporter:
    """``spend-exporter run`` in a subprocess, on 127.0.0.1, its clock starting at ``FIXED_NOW``."""

    def __init__(
        self,
        config: Path,
        prefix: list[str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        env: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        self.port = free_port()
        args = ["run", "--config.file", str(config), "--web.listen-address", f"127.0.0.1:{self.port}"]
        cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "exporter.cli", *args]
        self.proc = subprocess.Popen(
            [*(prefix or []), *cmd],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec_fn,
            env=fixed_clock_env({**os.environ, **(env or {})}),
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"exited with {self.proc.returncode}: {self.proc.communicate()[1]}")
            try:
                if self.get("/-/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail("the exporter did not become ready")

    def wait_line(self, marker: str) -> str:
        """The first stdout line containing ``marker`` (the process prints it when it gets there)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    pytest.fail(f"exited before {marker}: {self.proc.communicate()[1]}")
                if marker in line:
                    return line
        pytest.fail(f"never printed {marker}")

    def metrics_when(self, ok: Callable[[str], bool]) -> str:
        """``/metrics`` once ``ok`` holds for it (after a background refresh has been published)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            code, text = self.get("/metrics")
            assert code == 200
            if ok(text):
                return text
            time.sleep(0.05)
        pytest.fail("/metrics never showed what was expected")

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        assert code == 200
        return dict(json.loads(body))

    def stop(self) -> str:
        """SIGTERM; returns stderr after checking the exporter stopped cleanly and never printed a traceback."""
        self.proc.send_signal(signal.SIGTERM)
        _out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        assert "Traceback" not in err
        return err

    def kill(self) -> str:
        self.proc.kill()
        return self.proc.communicate(timeout=30)[1]


@pytest.fixture
def exporters() -> Iterator[list[Exporter]]:
    started: list[Exporter] = []
    yield started
    for e in started:
        if e.proc.poll() is None:
            e.kill()


def month_to_date(text: str) -> dict[str, float]:
    got = {dict(k)["service_name"]: v for k, v in series(text, "spend_cost_month_to_date_usd").items()}
    return {k: v for k, v in got.items() if k in SERVICES}


def expected_mtd(factor_from: dt.date | None = None, factor: float = 2.0) -> dict[str, float]:
    """Month to date of the exports; days from ``factor_from`` on come from the second export."""
    t = today()
    days = [t.replace(day=d) for d in range(1, t.day + 1)]
    return {
        svc: sum(cost * (factor if factor_from and d >= factor_from else 1.0) for d in days)
        for svc, cost in SERVICES.items()
    }


def log_lines(err: str, needle: str) -> list[str]:
    return [line for line in err.splitlines() if needle in line]


# --------------------------------------------------------------------------- kill -9


def test_kill_9_inside_the_write_transaction_keeps_the_old_data_whole(
    tmp_path: Path, focus: Any, exporters: list[Exporter]
) -> None:
    cache = tmp_path / "cache" / "spend.sqlite"
    config = write_config(tmp_path, cache)
    focus.write(tmp_path / "exports" / "aws.csv", export_rows(focus))
    fill(config)
    before = stored_costs(cache)
    assert {d for d, _ in before} == {(today() - i * DAY).isoformat() for i in range(45)}
    focus.write(tmp_path / "exports" / "aws.csv", export_rows(focus, factor=2.0))  # restated figures
    make_due(cache)

    e = Exporter(config, code=FAILPOINT)
    exporters.append(e)
    line = e.wait_line("IN-TRANSACTION")
    assert "open=True" in line  # every row of the refresh is written and not committed: kill now
    e.kill()
    assert e.proc.returncode == -signal.SIGKILL

    assert stored_costs(cache) == before, "the cache holds the old data, whole: no new row, no day lost"
    (tmp_path / "exports" / "aws.csv").unlink()  # the restarted exporter cannot refetch: it serves the cache
    e = Exporter(config)
    exporters.append(e)
    e.wait_ready()
    code, text = e.get("/metrics")
    assert code == 200
    assert month_to_date(text) == pytest.approx(expected_mtd())
    # its refresh fails (the export is gone): source_up goes to 0 and the cached figures stay
    text = e.metrics_when(lambda t: 0.0 in series(t, "spend_exporter_source_up").values())
    assert month_to_date(text) == pytest.approx(expected_mtd())
    err = e.stop()
    assert len(log_lines(err, f"cache file {cache} was not closed cleanly")) == 1


class HoldingEmulator(OpenAIAdminEmulator):
    """Holds its first reply once ``hold`` is set, until the test lets go: the refresh is in flight."""

    def __init__(self, ds: AIDataset) -> None:
        super().__init__(ds)
        self.hold = False
        self.held = threading.Event()
        self.release = threading.Event()

    def handle(self, request: Request) -> Response:
        if self.hold:
            self.held.set()
            self.release.wait(60)
        return super().handle(request)


def test_kill_9_while_the_provider_answers_then_restart_serves_the_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exporters: list[Exporter]
) -> None:
    now = FIXED_NOW
    ds = build_ai_dataset(now, days=40)
    monkeypatch.setenv("OPENAI_ADMIN_KEY_CACHE_TEST", DEFAULT_ADMIN_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    cache = tmp_path / "cache.sqlite"
    emu = HoldingEmulator(ds)
    with emu:
        source = {
            "name": "openai",
            "type": "openai",
            "admin_key_env": "OPENAI_ADMIN_KEY_CACHE_TEST",
            "base_url": emu.url + "/v1",
            "request_timeout": "10s",
            "interval": "1h",
            "history_days": 35,
        }
        config = write_config(tmp_path, cache, [source])
        fill(config)
        before = stored_costs(cache)
        assert before
        make_due(cache)
        emu.hold = True
        e = Exporter(config)
        exporters.append(e)
        assert emu.held.wait(60), "the refresh never reached the API"
        e.kill()
        emu.hold = False
        emu.release.set()
        assert stored_costs(cache) == before

        e = Exporter(config)
        exporters.append(e)
        e.wait_ready()
        _, text = e.get("/metrics")
        e.stop()
    got = Decimal(repr(sum(series(text, "spend_cost_month_to_date_usd").values())))
    want = ds.cost_sum("openai", start=now.date().replace(day=1), end=now.date())
    assert abs(got - want) < Decimal("0.01")
    assert series(text, "spend_exporter_source_up") == {(("provider", "openai"), ("source", "openai")): 1.0}


# --------------------------------------------------------------------------- damaged files


def _damage(cache: Path, how: str) -> tuple[str, ...]:
    """Damage the cache; returns what the log line may say the problem is."""
    if how == "garbage":
        cache.write_bytes(os.urandom(64) + b"not a database" * 4000)
        return ("file is not a database",)
    if how == "truncated":
        data = cache.read_bytes()
        cache.write_bytes(data[: len(data) // 2])
        return ("truncated: ", "database disk image is malformed")  # which depends on the pages cut off
    conn = sqlite3.connect(cache.with_name("other.sqlite"))  # another program's database at cache_path
    conn.execute("CREATE TABLE cost (id INTEGER PRIMARY KEY, amount TEXT)")
    conn.execute("INSERT INTO cost (amount) VALUES ('12.50')")
    conn.commit()
    conn.close()
    os.replace(cache.with_name("other.sqlite"), cache)
    return ("table cost has columns id, amount, not the cache schema's",)


@pytest.mark.parametrize("how", ["garbage", "truncated", "wrong_schema"])
def test_damaged_cache_is_moved_aside_and_the_exporter_serves(
    tmp_path: Path, focus: Any, exporters: list[Exporter], how: str
) -> None:
    cache = tmp_path / "cache.sqlite"
    config = write_config(tmp_path, cache)
    focus.write(tmp_path / "exports" / "aws.csv", export_rows(focus))
    fill(config)
    problem = _damage(cache, how)
    damaged = cache.read_bytes()

    e = Exporter(config)
    exporters.append(e)
    e.wait_ready()
    # Damage that SQLite notices on open is handled before the exporter listens; a truncated file whose first
    # pages survive may be found only by the quick_check that runs after a clean start, and then the exporter
    # serves the damaged file's figures, moves it aside, and is not ready again until it has refetched
    deadline = time.monotonic() + 30
    while True:
        moved = list(tmp_path.glob("cache.sqlite.corrupt-*"))  # first: the figures below are then the refetched ones
        code, text = e.get("/metrics")
        if (moved and month_to_date(text) and e.get("/-/ready")[0] == 200) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert code == 200
    assert month_to_date(text) == pytest.approx(expected_mtd())  # refetched into a new, empty cache
    assert e.status()["sources"][0]["up"] is True
    err = e.stop()
    lines = log_lines(err, f"cache file {cache}")
    assert len(lines) == 1, err
    assert "level=warn" in lines[0] and any(p in lines[0] for p in problem) and "moving it to" in lines[0]
    (aside,) = [p for p in tmp_path.glob("cache.sqlite.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    assert aside.read_bytes() == damaged, "the damaged file is kept, untouched, for inspection"


def test_damage_found_after_start_is_moved_aside_while_serving(
    tmp_path: Path, focus: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A file closed cleanly is checked after start; damage inside it is found then, and repaired in place."""
    cache = tmp_path / "cache.sqlite"
    config = write_config(tmp_path, cache)
    focus.write(tmp_path / "exports" / "aws.csv", export_rows(focus, days=400))
    fill(config)
    data = bytearray(cache.read_bytes())
    page = 4096
    Store(tmp_path / "empty.sqlite").close()
    schema_pages = len((tmp_path / "empty.sqlite").read_bytes()) // page  # sqlite_master may overflow page 1
    assert len(data) > (schema_pages + 4) * page
    data[schema_pages * page :] = b"\xa5" * (len(data) - schema_pages * page)  # the cost table's pages and indexes
    cache.write_bytes(bytes(data))

    reset = threading.Event()
    store = Store(cache)
    store.on_reset.append(reset.set)
    try:
        # either the check after start or the first read of a damaged page finds it
        store.query("SELECT COUNT(*), SUM(cost_usd) FROM cost")
        assert reset.wait(30)
        assert store.query("SELECT COUNT(*) FROM cost") == [(0,)]
        assert store.persistent
        store.put_state(store.get_state("focus"))  # and it is writable
    finally:
        store.close()
    assert len([r for r in caplog.records if "moving it to" in r.getMessage()]) == 1
    assert list(tmp_path.glob("cache.sqlite.corrupt-*"))


# --------------------------------------------------------------------------- unwritable cache


def _without_root_override() -> list[str]:
    """root ignores file modes: run the exporter without CAP_DAC_OVERRIDE so a read-only directory is one."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only directory cannot be made")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


def test_read_only_cache_directory_runs_in_memory_with_the_cached_data(
    tmp_path: Path, focus: Any, exporters: list[Exporter]
) -> None:
    cache_dir = tmp_path / "cache"
    cache = cache_dir / "spend.sqlite"
    config = write_config(tmp_path, cache)
    focus.write(tmp_path / "exports" / "aws.csv", export_rows(focus))
    fill(config)
    (tmp_path / "exports" / "aws.csv").unlink()  # no refetch possible: the figures can only come from the cache
    kept = cache.read_bytes()
    cache_dir.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        e = Exporter(config, prefix=_without_root_override())
        exporters.append(e)
        e.wait_ready()
        code, text = e.get("/metrics")
        status = e.status()
        err = e.stop()
    finally:
        cache_dir.chmod(0o755)
    assert code == 200
    assert month_to_date(text) == pytest.approx(expected_mtd())
    assert series(text, "spend_exporter_cache_persistent") == {(): 0.0}
    assert status["cache"]["persistent"] is False
    assert f"cache file {cache} cannot be written" in status["cache"]["problem"]
    lines = log_lines(err, f"cache file {cache}")
    assert len(lines) == 1, err
    assert "level=error" in lines[0] and "in-memory cache holding a copy of its data" in lines[0]
    assert cache.read_bytes() == kept
    assert sorted(p.name for p in cache_dir.iterdir()) == ["spend.sqlite"]


@pytest.mark.parametrize(
    ("limit_kib", "filler"),
    [(8, 0), (40, 300)],
    ids=["full_at_start", "full_during_refresh"],  # 8 KiB: not even the 32 KiB -shm file fits
)
def test_full_disk_carries_on_in_memory(
    tmp_path: Path, focus: Any, exporters: list[Exporter], limit_kib: int, filler: int
) -> None:
    cache = tmp_path / "cache.sqlite"
    config = write_config(tmp_path, cache)
    focus.write(tmp_path / "exports" / "aws.csv", export_rows(focus, filler=filler))
    fill(config)
    make_due(cache)
    focus.write(tmp_path / "exports" / "aws.csv", export_rows(focus, factor=2.0, filler=filler))
    cfg = parse_config(yaml.safe_load(config.read_text()))
    store = Store(cache)
    state = store.get_state("focus")
    store.close()
    window = fetch_window(cfg.sources[0], state, FIXED_NOW, cold=False)  # the exporter's: it starts at FIXED_NOW

    def small_disk() -> None:
        # no file may grow past the limit (Python ignores SIGXFSZ: the write fails with EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_kib * 1024, limit_kib * 1024))

    e = Exporter(config, preexec_fn=small_disk)
    exporters.append(e)
    e.wait_ready()
    want = expected_mtd(factor_from=window.start)  # the figures of the refresh that hit the full disk
    text = e.metrics_when(lambda t: month_to_date(t) == pytest.approx(want))
    status = e.status()
    err = e.stop()
    assert series(text, "spend_exporter_source_up") == {(("provider", "focus"), ("source", "focus")): 1.0}
    assert series(text, "spend_exporter_cache_persistent") == {(): 0.0}
    assert status["sources"][0]["up"] is True
    assert status["cache"]["persistent"] is False
    lines = log_lines(err, f"cache file {cache}")
    assert len(lines) == 1, err
    assert "level=error" in lines[0] and "cannot be written" in lines[0] and "in-memory cache" in lines[0]
    listening = err.index("listening on")
    assert (err.index(lines[0]) > listening) == (filler > 0), "40 KiB: the write of the refresh is what fails"


# --------------------------------------------------------------------------- the saved snapshot


def test_run_serves_the_snapshot_the_previous_process_published(
    tmp_path: Path, focus: Any, exporters: list[Exporter]
) -> None:
    cache = tmp_path / "cache.sqlite"
    config = write_config(tmp_path, cache)
    focus.write(tmp_path / "exports" / "aws.csv", export_rows(focus))
    published = fill(config)  # at FIXED_NOW, 12:00; the exporter starts seconds later, in the same hour
    e = Exporter(config)
    exporters.append(e)
    e.wait_ready()
    assert e.status()["snapshot"]["restored_from_cache"] is True
    assert e.get("/metrics") == (200, published)
    assert "Traceback" not in e.stop()


@pytest.fixture
def warm(tmp_path: Path, focus: Any, clock: Any) -> tuple[Path, dict[str, Any]]:
    focus.write(tmp_path / "exports" / "aws.csv", export_rows_at(focus, clock().date()))
    raw = {
        "cache_path": str(tmp_path / "cache.sqlite"),
        "sources": [{"name": "focus", "type": "focus", "paths": [str(tmp_path / "exports" / "*.csv")], "jitter": 0}],
        "budgets": [{"name": "total", "amount_usd": 1000}],
    }
    app = build_app(parse_config(raw), now=clock)
    app.refresh_all()
    app.close()
    return tmp_path, raw


def export_rows_at(focus: Any, t: dt.date) -> list[dict[str, Any]]:
    return [focus.daily(t - i * DAY, cost, ServiceName=svc) for i in range(45) for svc, cost in SERVICES.items()]


def fresh_build(app: App) -> bytes:
    return app.builder.build(app.now(), [s.name for s in app.config.sources]).text


def test_restart_serves_the_saved_snapshot_identical_to_a_fresh_build(
    warm: tuple[Path, dict[str, Any]], clock: Any
) -> None:
    _, raw = warm
    clock.advance(minutes=5)
    app = build_app(parse_config(raw), now=clock)
    try:
        assert app.snapshot_restored and not app.snapshot_stale
        assert app.snapshot.text == fresh_build(app)
        fresh = app.builder.build(app.now(), ["focus"])
        assert app.snapshot.openmetrics()[0] == fresh.openmetrics()[0]
        assert budgets_status(app.snapshot)[0]["spent_usd"] == pytest.approx(12.5 * clock().day)
        assert status_report(app)["snapshot"]["restored_from_cache"] is True
    finally:
        app.close()


def test_a_price_update_rebuilds_the_saved_snapshot(
    warm: tuple[Path, dict[str, Any]], clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The price table's version is in the snapshot key: a new genai-prices release is never served an old pricing."""
    from exporter import pricing, warmstart

    _, raw = warm
    cfg = parse_config(raw)
    installed = pricing.PriceTable.load(at=FIXED_NOW).version
    assert installed.startswith("genai-prices ")
    assert warmstart.snapshot_key(cfg) == warmstart.snapshot_key(cfg, installed)
    assert warmstart.snapshot_key(cfg, installed) != warmstart.snapshot_key(cfg, "genai-prices 99.0.0")
    assert warmstart.snapshot_key(cfg, installed) != warmstart.snapshot_key(cfg, installed + " + pricing")

    monkeypatch.setattr(pricing, "library_version", lambda: "genai-prices 99.0.0")  # as after an upgrade
    app = build_app(cfg, now=clock)
    try:
        assert app.prices.version == "genai-prices 99.0.0"
        assert not app.snapshot_restored
    finally:
        app.close()
    monkeypatch.undo()
    app = build_app(cfg, now=clock)  # back on the installed release: its own snapshot was replaced, so built again
    try:
        assert not app.snapshot_restored
    finally:
        app.close()


def test_restored_snapshot_carries_the_month_to_date_status_shows(
    warm: tuple[Path, dict[str, Any]], clock: Any
) -> None:
    _, raw = warm
    app = build_app(parse_config(raw), now=clock)
    try:
        assert app.snapshot_restored
        served = sum(series(app.exposition(), "spend_cost_month_to_date_usd").values())
        assert served == pytest.approx(12.5 * clock().day)
        assert app.snapshot.mtd_by_source == {"focus": pytest.approx(served)}
        assert status_report(app)["sources"][0]["month_to_date_usd"] == round(served, 2)
    finally:
        app.close()


def test_saved_snapshot_without_month_to_date_is_not_used(warm: tuple[Path, dict[str, Any]], clock: Any) -> None:
    """A snapshot saved before ``mtd_by_source`` existed would show 0 in /status: it is rebuilt instead."""
    from exporter import warmstart

    _, raw = warm
    key = warmstart.snapshot_key(parse_config(raw))
    store = Store(raw["cache_path"])
    try:
        saved = store.load_snapshot(key)
        assert saved is not None
        meta = json.loads(saved[0])
        del meta["mtd_by_source"]
        assert store.save_snapshot(key, store.generation(), json.dumps(meta), saved[1])
    finally:
        store.close()
    app = build_app(parse_config(raw), now=clock)
    try:
        assert not app.snapshot_restored
        assert status_report(app)["sources"][0]["month_to_date_usd"] == pytest.approx(12.5 * clock().day)
    finally:
        app.close()


@pytest.mark.parametrize(
    "change",
    [
        {"budgets": [{"name": "total", "amount_usd": 2000}]},
        {"attribution": {"rules": [{"match": {"provider": "aws"}, "team": "infra"}]}},
        {"currency_rates": {"EUR": 1.2}},
        {"max_series_per_source": 1},
        {"sources": "interval"},
    ],
    ids=["budget", "attribution", "currency_rates", "series_cap", "source_setting"],
)
def test_saved_snapshot_is_not_used_after_a_config_change(
    warm: tuple[Path, dict[str, Any]], clock: Any, change: dict[str, Any]
) -> None:
    _, raw = warm
    if change == {"sources": "interval"}:
        change = {"sources": [{**raw["sources"][0], "interval": "2h"}]}
    app = build_app(parse_config({**raw, **change}), now=clock)
    try:
        assert not app.snapshot_restored
        assert app.snapshot.text == fresh_build(app)
    finally:
        app.close()


def test_listen_address_is_not_part_of_the_key(warm: tuple[Path, dict[str, Any]], clock: Any) -> None:
    _, raw = warm
    app = build_app(parse_config({**raw, "listen_address": "127.0.0.1:19999"}), now=clock)
    try:
        assert app.snapshot_restored
    finally:
        app.close()


@pytest.mark.parametrize("write", ["state", "api_call", "prune"])
def test_saved_snapshot_is_not_used_after_the_data_changed(
    warm: tuple[Path, dict[str, Any]], clock: Any, write: str
) -> None:
    _, raw = warm
    store = Store(raw["cache_path"])
    if write == "state":
        st = store.get_state("focus")
        store.put_state(type(st)(**{**st.__dict__, "consecutive_failures": 1, "last_error": "boom"}))
    elif write == "api_call":
        store.record_call("focus", clock().date(), "read_files", "ok", 0.0)
    else:
        store.prune("focus", clock().date() - 10 * DAY)
    store.close()
    app = build_app(parse_config(raw), now=clock)
    try:
        assert not app.snapshot_restored
        assert app.snapshot.text == fresh_build(app)
    finally:
        app.close()


def test_saved_snapshot_of_an_earlier_hour(warm: tuple[Path, dict[str, Any]], clock: Any) -> None:
    _, raw = warm
    clock.advance(hours=2)
    app = build_app(parse_config(raw), now=clock)  # the library default: only this hour's
    try:
        assert not app.snapshot_restored
    finally:
        app.close()
    clock.advance(hours=1)
    app = build_app(parse_config(raw), now=clock, stale_ok=True)  # run: today's, rebuilt at once
    try:
        assert app.snapshot_restored and app.snapshot_stale
        app.rebuild_stale_snapshot()
        assert not app.snapshot_stale and app.snapshot.text == fresh_build(app)
    finally:
        app.close()
    clock.advance(days=1)
    app = build_app(parse_config(raw), now=clock, stale_ok=True)  # never another day's
    try:
        assert not app.snapshot_restored
    finally:
        app.close()


def test_snapshot_built_while_a_refresh_runs_is_not_saved(warm: tuple[Path, dict[str, Any]], clock: Any) -> None:
    """A build during a refresh may hold a view older than the data written: only the next one is kept."""
    _, raw = warm
    app = build_app(parse_config(raw), now=clock)
    try:
        assert app.snapshot_restored
        app._rt["focus"].refreshing = True
        app.store.record_call("focus", clock().date(), "read_files", "ok", 0.0)  # a write of that refresh
        app.rebuild_snapshot()
        app._rt["focus"].refreshing = False
    finally:
        app.close()
    app = build_app(parse_config(raw), now=clock)
    try:
        assert not app.snapshot_restored
        assert app.snapshot.text == fresh_build(app)
    finally:
        app.close()


@pytest.mark.parametrize("others", [0, 1])
def test_forgetting_a_source_keeps_the_others(tmp_path: Path, others: int) -> None:
    from exporter.store import Replacement, SourceState

    store = Store(tmp_path / "cache.sqlite")
    try:
        names = ["a", "b"][: others + 1]
        for name in names:
            rows = [(f"2025-03-{d:02d}", "aws", "1", "EC2", "t", "", 1.0) for d in range(1, 11)]
            usage = [("2025-03-01", "openai", "p", "api", "t", "gpt", 1, 2, 3, 4, 0, 5)]
            rep = Replacement(dt.date(2025, 3, 1), dt.date(2025, 3, 10), rows, usage, [], [("aws", "1", "x")], [])
            store.replace(name, rep, SourceState(source=name, config_hash="h"))
        store.forget_source("a")
        for table in ("cost", "usage", "accounts"):
            held = dict(store.query(f"SELECT source, COUNT(*) FROM {table} GROUP BY source"))
            assert held == ({"b": 10 if table == "cost" else 1} if others else {})
    finally:
        store.close()

"""docker-compose.yml and the Dockerfile, checked by structure (no Docker engine needed)."""

from __future__ import annotations

import datetime as dt
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from exporter.web import GUARD_PATH
from tests.clock import FIXED_NOW, fixed_clock_env
from tests.e2e.stack import ROOT
from tests.helpers import wait_ready

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


INSTR = _instructions(DOCKERFILE)
FINAL_STAGE = INSTR[max(i for i, (w, _) in enumerate(INSTR) if w == "FROM") :]


def mounts(service: str) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume of a service (short syntax)."""
    out = []
    for v in SERVICES[service].get("volumes", []):
        parts = v.split(":")
        out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def test_the_four_services_and_the_demo_data_job() -> None:
    assert {"exporter", "prometheus", "alertmanager", "grafana"} <= set(SERVICES)


@pytest.mark.parametrize("name", ["prometheus", "alertmanager", "grafana"])
def test_images_are_pinned(name: str) -> None:
    image = SERVICES[name]["image"]
    repo, _, tag = image.rpartition(":")
    assert repo and "/" not in tag, f"{image}: no tag"
    assert tag != "latest" and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{image}: pin an exact version"


def test_exporter_is_built_from_our_dockerfile() -> None:
    for name, svc in SERVICES.items():
        if "build" in svc:
            assert svc["build"] in (".", {"context": "."}), name
            assert svc["image"] == SERVICES["exporter"]["image"]
    assert "build" in SERVICES["exporter"]
    assert SERVICES["exporter"]["command"] == ["run", "--config.file", "/etc/spend-exporter/config.yml"]


def test_every_mounted_path_exists() -> None:
    named = set(COMPOSE.get("volumes") or {})
    for name in SERVICES:
        for source, _, _ in mounts(name):
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in named, f"{name}: volume {source} is not declared"
        for env in SERVICES[name].get("env_file", []):
            if isinstance(env, str) or env.get("required", True):
                path = env if isinstance(env, str) else env["path"]
                assert (ROOT / path).exists(), f"{name}: required env_file {path} does not exist"


def test_bind_mounts_are_read_only() -> None:
    for name in SERVICES:
        for source, target, ro in mounts(name):
            if source.startswith("."):
                assert ro, f"{name}: {source} -> {target} should be :ro"


def test_secrets_come_through_env_file() -> None:
    exporter = SERVICES["exporter"]
    assert exporter["env_file"], "the exporter's credentials come from an env_file"
    text = (ROOT / "docker-compose.yml").read_text()
    for key in ("OPENAI_ADMIN_KEY", "ANTHROPIC_ADMIN_KEY", "AWS_SECRET_ACCESS_KEY", "AZURE_CLIENT_SECRET"):
        assert f"{key}=" not in text and f"{key}:" not in text
    for svc in SERVICES.values():
        env = svc.get("environment") or {}
        assert not any(re.search(r"(?i)(password|secret|token|key)", k) for k in env), env


def _workdir() -> PurePosixPath:
    return PurePosixPath([a for w, a in FINAL_STAGE if w == "WORKDIR"][-1])


def test_cache_is_in_a_named_volume() -> None:
    demo = yaml.safe_load((ROOT / "examples" / "demo-config.yml").read_text())
    cache_dir = (_workdir() / demo["cache_path"]).parent
    targets = {PurePosixPath(t): s for s, t, _ in mounts("exporter")}
    assert cache_dir in targets, f"no volume at {cache_dir} for cache_path {demo['cache_path']}"
    assert targets[cache_dir] in (COMPOSE.get("volumes") or {}), "the cache must be a named volume"


def test_demo_data_lands_where_the_demo_config_reads_it() -> None:
    demo = yaml.safe_load((ROOT / "examples" / "demo-config.yml").read_text())
    (focus,) = [s for s in demo["sources"] if s["type"] == "focus"]
    out = SERVICES["demo-data"]["command"][SERVICES["demo-data"]["command"].index("--out") + 1]
    writer = {PurePosixPath(t): s for s, t, _ in mounts("demo-data")}
    reader = {PurePosixPath(t): s for s, t, _ in mounts("exporter")}
    assert writer[PurePosixPath(out)] == reader[PurePosixPath(out)]
    for pattern in focus["paths"]:
        assert (_workdir() / pattern).parent == PurePosixPath(out)
    depends = SERVICES["exporter"]["depends_on"]["demo-data"]
    assert depends["condition"] == "service_completed_successfully"
    script = SERVICES["demo-data"]["entrypoint"][-1]
    assert any(t == script for _, t, _ in mounts("demo-data"))


def test_config_mounted_where_the_command_reads_it() -> None:
    assert any(
        s == "./examples/demo-config.yml" and t == "/etc/spend-exporter/config.yml" for s, t, _ in mounts("exporter")
    )
    prom = SERVICES["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom
    assert any(t == "/etc/prometheus/prometheus.yml" for _, t, _ in mounts("prometheus"))
    assert any(s == "./prometheus/rules" and t == "/etc/prometheus/rules" for s, t, _ in mounts("prometheus"))
    am = SERVICES["alertmanager"]["command"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in am


def test_services_find_each_other() -> None:
    """The hostnames and ports in the shipped configs are the compose services'."""
    prom = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "spend-exporter"]
    demo = yaml.safe_load((ROOT / "examples" / "demo-config.yml").read_text())
    port = demo["listen_address"].rpartition(":")[2]
    assert job["static_configs"][0]["targets"] == [f"exporter:{port}"]
    assert f"127.0.0.1:{port}:{port}" in SERVICES["exporter"]["ports"]
    (am,) = prom["alerting"]["alertmanagers"]
    assert am["static_configs"][0]["targets"] == ["alertmanager:9093"]
    ds = yaml.safe_load((ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


def test_alertmanager_finds_its_templates_and_secrets() -> None:
    am = yaml.safe_load((ROOT / "prometheus" / "alertmanager.yml").read_text())
    targets = {t: s for s, t, _ in mounts("alertmanager")}
    for pattern in am["templates"]:
        directory = str(PurePosixPath("/etc/alertmanager") / pattern).rsplit("/", 1)[0]
        assert directory in targets
        assert list((ROOT / targets[directory]).glob(pattern.rsplit("/", 1)[1]))
    secret_dir = str(PurePosixPath(am["global"]["slack_api_url_file"]).parent)
    assert targets[secret_dir] == "./prometheus/alertmanager-secrets"


def _committed_only_readme(directory: Path, name: str) -> None:
    """``directory`` holds secrets that are never committed: its .gitignore ignores everything but itself and the
    README, and the README says what ``name`` holds."""
    ignore = [line.strip() for line in (directory / ".gitignore").read_text().splitlines() if line.strip()]
    assert ignore[0] == "*" and set(ignore[1:]) <= {"!.gitignore", "!README.md"}, ignore
    assert f"`{name}`" in (directory / "README.md").read_text(), f"{directory}/README.md does not describe {name}"


def _host_path(service: str, path: PurePosixPath) -> tuple[str, bool]:
    """The repository path a container path of ``service`` is bind-mounted from, and whether read-only."""
    for source, target, ro in mounts(service):
        if source.startswith(".") and path.is_relative_to(target):
            return str(PurePosixPath(source) / path.relative_to(target)), ro
    raise AssertionError(f"{service}: nothing of the repository is mounted at {path}")


def test_the_guard_receiver_reaches_the_exporter_with_a_token_from_a_file() -> None:
    """docs/guard.md: Alertmanager's spend-guard receiver posts to the exporter's guard path with a bearer token
    from a file; the exporter reads its token from a file too (guard.token_file), in dry run. Both files are
    mounted read-only from directories whose secrets are never committed."""
    am = yaml.safe_load((ROOT / "prometheus" / "alertmanager.yml").read_text())
    hooks = [
        w
        for r in am["receivers"]
        for w in r.get("webhook_configs", [])
        if urllib.parse.urlsplit(w["url"]).path == GUARD_PATH
    ]
    assert len(hooks) == 1, hooks
    (hook,) = hooks
    url = urllib.parse.urlsplit(hook["url"])
    demo = yaml.safe_load((ROOT / "examples" / "demo-config.yml").read_text())
    assert (url.scheme, url.hostname) == ("http", "exporter") and "exporter" in SERVICES
    assert str(url.port) == demo["listen_address"].rpartition(":")[2]
    assert hook["send_resolved"] is False, "a resolved alert undoes nothing"
    auth = hook["http_config"]["authorization"]
    assert auth.get("type", "Bearer") == "Bearer" and "credentials" not in auth
    am_file, am_ro = _host_path("alertmanager", PurePosixPath(auth["credentials_file"]))
    assert am_ro

    guard = demo["guard"]
    assert guard.get("mode", "dry_run") == "dry_run", "the demo's guard changes nothing"
    assert "token_env" not in guard
    token = PurePosixPath(guard["token_file"])
    exporter_file, exporter_ro = _host_path("exporter", token if token.is_absolute() else _workdir() / token)
    assert exporter_ro
    # make run reads the same relative path from the repository's root
    assert not token.is_absolute() and PurePosixPath(exporter_file) == PurePosixPath(".") / token

    # one token name, each container its own directory (the exporter does not see Alertmanager's other secrets)
    assert PurePosixPath(am_file).name == PurePosixPath(exporter_file).name
    am_dir, exporter_dir = (PurePosixPath(f).parent for f in (am_file, exporter_file))
    assert am_dir != exporter_dir
    assert str(exporter_dir) not in {s for s, _, _ in mounts("alertmanager")}
    assert str(am_dir) not in {s for s, _, _ in mounts("exporter")}
    for d in (am_dir, exporter_dir):
        _committed_only_readme(ROOT / d, PurePosixPath(am_file).name)
    # the recipe in the exporter's README writes the token into both files
    readme = (ROOT / exporter_dir / "README.md").read_text()
    for f in (am_file, exporter_file):
        assert f"> {PurePosixPath(f)}" in readme, f


def test_grafana_is_provisioned() -> None:
    targets = {t: s for s, t, _ in mounts("grafana")}
    assert targets["/etc/grafana/provisioning"] == "./grafana/provisioning"
    dp = yaml.safe_load((ROOT / "grafana" / "provisioning" / "dashboards" / "spend.yml").read_text())
    path = dp["providers"][0]["options"]["path"]
    assert targets[path] == "./grafana/dashboards"
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path + "/")
    assert (ROOT / "grafana" / "dashboards" / PurePosixPath(home).name).exists()


def _script(service: str) -> str:
    """A one-shot's ``sh -c`` script, continuation lines joined."""
    svc = SERVICES[service]
    assert svc["entrypoint"] == ["/bin/sh", "-c"], service
    return re.sub(r"\\\n\s*", " ", svc["command"][0])


def test_backfill_writes_the_blocks_before_prometheus_starts() -> None:
    """docs/backfill.md: the exporter's cache → ``backfill`` → promtool's blocks in Prometheus's volume → Prometheus."""
    assert SERVICES["prometheus"]["depends_on"]["backfill-blocks"]["condition"] == "service_completed_successfully"
    assert SERVICES["backfill-blocks"]["depends_on"]["backfill"]["condition"] == "service_completed_successfully"
    assert SERVICES["backfill"]["image"] == SERVICES["exporter"]["image"]
    assert SERVICES["backfill-blocks"]["image"] == SERVICES["prometheus"]["image"], "promtool of the same version"
    for name in ("backfill", "backfill-blocks"):
        assert SERVICES[name]["restart"] == "no", name

    # the backfill reads the exporter's config and cache, and waits for its first refresh
    backfill = shlex.split(_script("backfill").split("exec ", 1)[1])
    assert backfill[:2] == ["spend-exporter", "backfill"]
    opts = dict(zip(backfill[2::2], backfill[3::2], strict=True))
    exporter_targets = {t: s for s, t, _ in mounts("exporter")}
    backfill_targets = {t: s for s, t, _ in mounts("backfill")}
    config = opts["--config.file"]
    assert backfill_targets[config] == exporter_targets[config] == exporter_targets[SERVICES["exporter"]["command"][2]]
    demo = yaml.safe_load((ROOT / "examples" / "demo-config.yml").read_text())
    cache_dir = str((_workdir() / demo["cache_path"]).parent)
    assert backfill_targets[cache_dir] == exporter_targets[cache_dir]
    assert "/-/ready" in _script("backfill")

    # its labels are the live scrape's: the backfilled range and the live one are the same series
    prom = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "spend-exporter"]
    assert opts["--job"] == job["job_name"]
    assert [opts["--instance"]] == job["static_configs"][0]["targets"]

    # promtool reads the file the backfill wrote, and writes where Prometheus reads its TSDB
    out = _workdir() / opts["--output"]
    volume = backfill_targets[str(out.parent)]
    promtool = shlex.split(_script("backfill-blocks").split("\n", 1)[1].split("&&")[0])
    assert promtool[:4] == ["promtool", "tsdb", "create-blocks-from", "openmetrics"]
    assert any(a.startswith("--max-block-duration=") for a in promtool)
    src, dst = promtool[-2:]
    blocks_targets = {t: s for s, t, _ in mounts("backfill-blocks")}
    assert blocks_targets[str(PurePosixPath(src).parent)] == volume and PurePosixPath(src).name == out.name
    tsdb = next(a.split("=", 1)[1] for a in SERVICES["prometheus"]["command"] if a.startswith("--storage.tsdb.path="))
    assert blocks_targets[dst] == {t: s for s, t, _ in mounts("prometheus")}[tsdb]

    # once: the marker promtool leaves in Prometheus's volume stops it on the next `up`
    marker = "/prometheus/spend-backfill.done"
    assert f"touch {marker}" in _script("backfill-blocks") and dst == str(PurePosixPath(marker).parent)
    first = _script("backfill-blocks").splitlines()[0]
    assert first.startswith(f"[ -e {marker} ] &&") and "exit 0" in first


def test_prometheus_volume_is_first_mounted_by_a_prometheus_image() -> None:
    """A named volume takes the owner of the directory of the first image that mounts it: Prometheus's runs as
    nobody, so a container of another image must not mount it before (the backfill runs before Prometheus)."""
    volume = {t: s for s, t, _ in mounts("prometheus")}["/prometheus"]
    for name, svc in SERVICES.items():
        if any(s == volume for s, _, _ in mounts(name)):
            assert svc["image"] == SERVICES["prometheus"]["image"], name


def test_ports_are_published_on_loopback_only() -> None:
    for name, svc in SERVICES.items():
        for p in svc.get("ports", []):
            assert str(p).startswith("127.0.0.1:"), f"{name}: {p} is published on every interface"


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_is_slim_python_311() -> None:
    froms = [a.split()[0] for w, a in INSTR if w == "FROM"]
    assert froms and all(f == "python:3.11-slim" for f in froms)


def test_dockerfile_runs_as_non_root() -> None:
    users = [a for w, a in FINAL_STAGE if w == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_dockerfile_healthcheck_hits_healthy() -> None:
    (hc,) = [a for w, a in FINAL_STAGE if w == "HEALTHCHECK"]
    assert "/-/healthy" in hc and "CMD" in hc
    assert "curl" not in hc and "wget" not in hc, "the slim image has neither; use python"


def test_dockerfile_runs_the_exporter() -> None:
    entry = [a for w, a in FINAL_STAGE if w == "ENTRYPOINT"][-1]
    cmd = [a for w, a in FINAL_STAGE if w == "CMD"][-1]
    argv = yaml.safe_load(entry) + yaml.safe_load(cmd)  # exec form is a JSON array
    assert argv == ["spend-exporter", "run", "--config.file", "/etc/spend-exporter/config.yml"]
    assert "9877" in [a for w, a in FINAL_STAGE if w == "EXPOSE"][-1]


def test_dockerfile_installs_from_the_lock() -> None:
    """The image gets the versions CI passed with: uv.lock, synced with --locked, never a fresh resolution."""
    build = " ".join(a for w, a in INSTR if w in ("RUN", "COPY"))
    assert "uv.lock" in build
    syncs = [a for w, a in INSTR if w == "RUN" and "uv sync" in a]
    assert syncs and all("--locked" in a for a in syncs)
    assert not [a for w, a in INSTR if w == "RUN" and re.search(r"pip (install|wheel)\b.*spend-exporter|pip wheel", a)]


def test_dockerfile_copies_only_what_exists_and_dockerignore_keeps_secrets_out() -> None:
    for w, a in INSTR:
        if w == "COPY" and "--from" not in a:
            for src in shlex.split(a)[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "the build context is an allow-list"
    allowed = {line.lstrip("!").rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "uv.lock", "README.md", "exporter"}


def test_compose_file_names_no_host_path_outside_the_repository() -> None:
    for name in SERVICES:
        for source, _, _ in mounts(name):
            if source.startswith((".", "/")):
                assert Path(ROOT / source).resolve().is_relative_to(ROOT), f"{name}: {source}"


# --------------------------------------------------------------------------- non-root, read-only root filesystem


@pytest.mark.parametrize("name", ["exporter", "demo-data", "backfill"])
def test_our_containers_run_read_only_and_unprivileged(name: str) -> None:
    svc = SERVICES[name]
    assert svc.get("read_only") is True, f"{name}: the root filesystem should be read-only"
    assert any(str(t).split(":")[0] == "/tmp" for t in svc.get("tmpfs", [])), f"{name}: /tmp as a tmpfs"
    assert svc.get("cap_drop") == ["ALL"]
    assert "no-new-privileges:true" in svc.get("security_opt", [])
    # what they write is on volumes, never on a bind mount of the repository
    writable = [(s, t) for s, t, ro in mounts(name) if not ro]
    assert writable and all(not s.startswith((".", "/")) for s, _ in writable), writable


def test_the_image_declares_the_cache_volume_and_owns_it() -> None:
    demo = yaml.safe_load((ROOT / "examples" / "demo-config.yml").read_text())
    cache_dir = str((_workdir() / demo["cache_path"]).parent)
    volumes = [a for w, a in FINAL_STAGE if w == "VOLUME"]
    declared = {v.strip() for a in volumes for v in (yaml.safe_load(a) if a.startswith("[") else a.split())}
    assert cache_dir in declared, f"VOLUME {cache_dir} (the cache) is missing"
    uid = [a for w, a in FINAL_STAGE if w == "USER"][-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, "a numeric, non-system uid (Kubernetes runAsNonRoot checks it)"
    runs = " ".join(a for w, a in FINAL_STAGE if w == "RUN")
    assert re.search(rf"chown -R {uid}:\d+ {re.escape(str(_workdir()))}", runs), "the cache directory is the user's"
    env = " ".join(a for w, a in FINAL_STAGE if w == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "no .pyc written next to the (read-only) code"


def _read_only_except(writable: Path, script: str) -> list[str]:
    """A shell that sees every file system read-only except ``writable``, in a private mount namespace."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run(
        [unshare, "-m", "--propagation", "private", "true"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        pytest.skip(f"no mount namespaces here: {probe.stderr.strip()}")
    mounts_ro = (
        "for m in $(awk '{print $2}' /proc/self/mounts | sort -u); do case $m in "
        "/proc*|/sys*|/dev|/dev/pts|/mnt/*) ;; *) mount -o remount,ro,bind $m || exit 97;; esac; done"
    )
    return [
        unshare, "-m", "--propagation", "private", "sh", "-c",
        f"mount --bind {writable} {writable} && {mounts_ro} && mount -o remount,rw,bind {writable} "
        f"&& ! touch {writable.parent}/probe 2>/dev/null && exec {script}",
    ]  # fmt: skip


def test_the_exporter_writes_only_to_its_cache_volume(tmp_path: Path, focus: Any) -> None:
    """As in the image: the working directory and everything else read-only, the cache directory writable."""
    work = tmp_path / "spend-exporter"
    data = work / "data"
    data.mkdir(parents=True)
    today = FIXED_NOW.date()
    focus.write(
        work / "examples" / "data" / "a.csv", [focus.daily(today - dt.timedelta(days=i), 3.0) for i in range(40)]
    )
    (work / "config.yml").write_text(
        "cache_path: ./data/spend-cache.sqlite\n"
        "sources:\n  - {name: demo, type: focus, paths: ['examples/data/*.csv']}\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the exporter's clock starts at FIXED_NOW; libfaketime is preloaded into it alone: in unshare or sh, it would
    # hold a file open on /dev/shm, which could then not be remounted read-only
    faked = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(fixed_clock_env({}).items()))
    exe = f"env {faked} {sys.executable} -m exporter.cli"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(ROOT)}
    once = subprocess.run(
        _read_only_except(data, f"{exe} once --config.file config.yml --output data/spend.prom"),
        capture_output=True, text=True, timeout=120, cwd=work, env=env,
    )  # fmt: skip
    assert once.returncode == 0, once.stderr
    assert "Traceback" not in once.stderr
    assert "spend_cost_month_to_date_usd" in (data / "spend.prom").read_text()
    proc = subprocess.Popen(
        _read_only_except(data, f"{exe} run --config.file config.yml --web.listen-address 127.0.0.1:{port}"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work, env=env,
    )  # fmt: skip
    try:
        why = wait_ready(f"http://127.0.0.1:{port}", proc, 60)
        assert why is None, f"{why}: {proc.communicate()[1] if proc.poll() is not None else ''}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert b"spend_cost_month_to_date_usd" in r.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Read-only file system" not in err
    # nothing was written outside the cache directory
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file()) == sorted(
        ["config.yml", "examples/data/a.csv", *(f"data/{p.name}" for p in data.iterdir())]
    )

"""Every command in docs/deploying.md and the chart's README runs as written, or says why it cannot here.

`helm template` / `helm upgrade --install` are rendered with Helm's Go SDK (helm-python-sdk: the project's machines
have no helm binary), with the same release name, namespace, values files, `--set` and `--show-only`;
`promtool` and `amtool` commands run from the repository's root; `docker` and `kubectl` need Docker or a cluster
and are not run, but every file they name must exist, and a `kubectl ... deployment/NAME` must name a Deployment
that the doc's own `helm` command makes.
"""

from __future__ import annotations

import copy
import glob
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "docs" / "deploying.md", ROOT / "charts" / "spend-exporter" / "README.md"]
NOT_RUN_HERE = {"docker", "kubectl"}  # need Docker or a cluster: the doc says so
REPO_PATH = re.compile(r"^(?:charts|prometheus|grafana|examples|docs|tests|exporter)/")


def commands(text: str) -> list[str]:
    """The commands of every ```sh block, continuation lines joined, comments dropped."""
    out: list[str] = []
    for block in re.findall(r"^[ \t]*```sh\n(.*?)^[ \t]*```", text, re.S | re.M):
        pending = ""
        for line in block.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            out.append(pending + line)
            pending = ""
        assert not pending, f"a block ends on a continuation: {pending}"
    return out


def _set(values: dict[str, Any], assignment: str) -> None:
    """`--set a.b=c` as Helm reads it (true/false become booleans; no lists, no escapes: the docs use none)."""
    key, _, raw = assignment.partition("=")
    value: Any = {"true": True, "false": False}.get(raw, raw)
    *parents, last = key.split(".")
    node = values
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for k, v in other.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


def helm_render(args: list[str]) -> list[dict[str, Any]]:
    """`helm template|upgrade --install|install RELEASE CHART [flags]`, rendered as an install would render it."""
    sub, *rest = args
    if sub == "upgrade":
        assert rest[0] == "--install", args
        rest = rest[1:]
    else:
        assert sub in ("template", "install"), f"helm {sub}: not a command this test can check"
    positional: list[str] = []
    values: dict[str, Any] = {}
    sets: list[str] = []
    namespace, show_only = "default", None
    it = iter(rest)
    for a in it:
        if a in ("-n", "--namespace"):
            namespace = next(it)
        elif a in ("-f", "--values"):
            _merge(values, yaml.safe_load((ROOT / next(it)).read_text()))
        elif a == "--set":
            sets.append(next(it))
        elif a in ("-s", "--show-only"):
            show_only = next(it)
        elif a == ">":
            next(it)  # the file the output goes to
        elif a.startswith("-"):
            raise AssertionError(f"helm flag {a}: not one this test knows")
        else:
            positional.append(a)
    release, chart_path = positional
    for s in sets:
        _set(values, s)
    with helm.Chart.load(ROOT / chart_path) as chart:
        out = chart.render(values, name=release, namespace=namespace, is_install=True)
        if show_only:
            key = f"{chart.name}/{show_only}"
            assert key in out and out[key].strip(), f"--show-only {show_only}: renders nothing"
            out = {key: out[key]}
    docs = [d for name, text in out.items() if not name.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
    assert docs
    return docs


def _paths_exist(tokens: list[str]) -> None:
    for t in tokens:
        t = t.split("=", 1)[-1] if t.startswith("--") else t
        if REPO_PATH.match(t):
            assert glob.glob(str(ROOT / t)), f"{t} does not exist"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_runs_as_written(doc: Path) -> None:
    cmds = commands(doc.read_text())
    assert cmds
    rendered: list[dict[str, Any]] = []
    for cmd in cmds:
        tokens = shlex.split(cmd)
        _paths_exist(tokens)
        tool = tokens[0]
        if tool == "helm":
            rendered += helm_render(tokens[1:])
        elif tool in ("promtool", "amtool"):
            if shutil.which(tool) is None:
                pytest.skip(f"{tool} missing: make test-deps")
            res = subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, f"{cmd}\n{res.stdout}\n{res.stderr}"
        elif tool in NOT_RUN_HERE:
            m = re.search(r"\bdeployment/(\S+)", cmd)
            if m:
                deployments = {d["metadata"]["name"] for d in rendered if d["kind"] == "Deployment"}
                assert m.group(1) in deployments, f"{cmd}: the doc's helm commands make {deployments}"
        else:
            raise AssertionError(f"{cmd}: a command this test does not know how to check")


def test_the_doc_says_what_was_not_run() -> None:
    text = (ROOT / "docs" / "deploying.md").read_text()
    tools = {shlex.split(c)[0] for c in commands(text)}
    for tool in tools & NOT_RUN_HERE:
        assert f"`{tool}`" in text.split("## Build the image")[0], f"the doc does not say {tool} was not run"


def test_no_gnu_only_commands() -> None:
    for doc in DOCS:
        for cmd in commands(doc.read_text()):
            assert not re.search(r"\bsed\b|\bgrep -P\b|\breadlink -f\b", cmd), f"{doc.name}: {cmd}"

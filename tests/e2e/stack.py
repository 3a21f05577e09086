"""Helpers shared by the shipped-stack tests: finding the Prometheus tools and the dashboards' queries."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "grafana" / "dashboards"

# What Grafana puts in place of its built-in variables, for running a panel's query by hand.
BUILTINS = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s"}


def tool(*names: str) -> str:
    """Path of the first of ``names`` on PATH. Missing: skip, or fail when CI=true."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    msg = f"{' / '.join(names)} not found (Debian packages prometheus and prometheus-alertmanager; make promtool-deps)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    expr: str

    @property
    def id(self) -> str:
        return f"{self.dashboard}/{self.panel}/{self.ref}"


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    out: list[dict[str, Any]] = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def substitute(expr: str, value: str = ".*", intervals: dict[str, str] | None = None) -> str:
    """Replace ``$var`` / ``${var}`` / ``[[var]]``: Grafana's built-ins by a duration, the rest by ``value``."""
    builtins = {**BUILTINS, **(intervals or {})}

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return builtins.get(name, value)

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", sub, expr)


def dashboard_queries(intervals: dict[str, str] | None = None) -> list[Query]:
    """Every target's ``expr`` of every dashboard, with the variables set to ``.*`` (All)."""
    out = []
    for dash in load_dashboards().values():
        for p in panels(dash):
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append(Query(dash["uid"], p["title"], t["refId"], substitute(t["expr"], intervals=intervals)))
    return out

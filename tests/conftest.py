"""Shared fixtures for the engine tests: a clock the test moves by hand and a FOCUS file writer."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

FOCUS_COLUMNS = [
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ProviderName",
    "SubAccountId",
    "SubAccountName",
    "ServiceName",
    "BilledCost",
    "EffectiveCost",
    "BillingCurrency",
    "Tags",
    "ConsumedQuantity",
    "ConsumedUnit",
    "x_Model",
    "x_TokenType",
]


class Clock:
    """A mutable UTC clock: pass it as ``now=`` and move it with ``advance``/``set``."""

    def __init__(self, t: dt.datetime) -> None:
        self.t = t

    def __call__(self) -> dt.datetime:
        return self.t

    def advance(self, **delta: float) -> None:
        self.t += dt.timedelta(**delta)

    def set(self, t: dt.datetime) -> None:
        self.t = t


@pytest.fixture
def clock() -> Clock:
    return Clock(dt.datetime(2025, 3, 15, 10, 30, tzinfo=dt.UTC))


def _row(r: dict[str, Any]) -> dict[str, str]:
    """Fills the columns a test leaves out: a USD AWS row, EffectiveCost equal to BilledCost."""
    out = {c: "" for c in FOCUS_COLUMNS}
    out.update(ProviderName="AWS", SubAccountId="111111111111", ServiceName="Amazon EC2", BillingCurrency="USD")
    for k, v in r.items():
        out[k] = "" if v is None else v.isoformat() if isinstance(v, dt.date | dt.datetime) else str(v)
    if "EffectiveCost" not in r:
        out["EffectiveCost"] = out["BilledCost"]
    return out


def write_focus_csv(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Path:
    """Write a FOCUS CSV; dates and datetimes become ISO strings, everything else ``str()``."""
    if columns is None:
        columns = FOCUS_COLUMNS + sorted({k for r in rows for k in r} - set(FOCUS_COLUMNS))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(_row(r))
    return path


def daily(day: dt.date, cost: float, **cols: Any) -> dict[str, Any]:
    """One daily FOCUS row starting at 00:00 UTC on ``day``."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return {"ChargePeriodStart": start, "ChargePeriodEnd": start + dt.timedelta(days=1), "BilledCost": cost, **cols}


class Focus:
    """``focus.write(path, rows)`` and ``focus.daily(day, cost, **columns)`` for tests."""

    columns = FOCUS_COLUMNS
    write = staticmethod(write_focus_csv)
    daily = staticmethod(daily)


@pytest.fixture(scope="session")
def focus() -> Focus:
    return Focus()

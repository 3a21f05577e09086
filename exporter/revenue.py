"""``revenue_file``: each customer's monthly revenue, for unit economics (docs/allocation.md).

The file is CSV with a header naming at least ``customer_id`` and ``monthly_revenue_usd`` (other columns are
ignored, so an export from a billing system can be used as it is). A bad row (no customer_id, an amount that is
not a finite number of at least 0, a customer_id seen before) is logged with the file's name, its line number
and why, and left out; the good rows are kept. The file is read again when its mtime or size changes, at a
snapshot build; when it cannot be read any more, the last good figures stay (logged once).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from decimal import Decimal, InvalidOperation

log = logging.getLogger(__name__)

COLUMNS = ("customer_id", "monthly_revenue_usd")


def parse_revenue(text: str, name: str) -> tuple[dict[str, Decimal], list[str]]:
    """The customers' monthly revenue in ``text`` (the CSV file ``name``), and one message per bad row."""
    rows = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    errors: list[str] = []
    header: list[str] | None = None
    out: dict[str, Decimal] = {}
    first_line: dict[str, int] = {}
    for row in rows:
        line = rows.line_num
        if not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue  # blank lines and comments
        if header is None:
            header = [c.strip() for c in row]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                return {}, [f"{name}:{line}: the header has no column {', '.join(missing)} (it must name {COLUMNS})"]
            i_id, i_usd = header.index(COLUMNS[0]), header.index(COLUMNS[1])
            continue
        if len(row) != len(header):
            errors.append(f"{name}:{line}: {len(row)} fields, the header has {len(header)}")
            continue
        customer, raw = row[i_id].strip(), row[i_usd].strip()
        if not customer:
            errors.append(f"{name}:{line}: customer_id is empty")
            continue
        try:
            usd = Decimal(raw)
        except InvalidOperation:
            errors.append(f"{name}:{line}: monthly_revenue_usd {raw!r} is not a number")
            continue
        if not usd.is_finite() or usd < 0 or not math.isfinite(float(usd)):
            errors.append(f"{name}:{line}: monthly_revenue_usd {raw!r} must be a finite number of at least 0")
            continue
        if customer in out:
            errors.append(
                f"{name}:{line}: customer_id {customer!r} again (first on line {first_line[customer]}); "
                "this row is left out"
            )
            continue
        out[customer] = usd
        first_line[customer] = line
    if header is None:
        errors.append(f"{name}: empty (no header {','.join(COLUMNS)})")
    return out, errors


class RevenueFile:
    """The revenue file, read again when it changes (``current()``, at each snapshot build)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the last read
        self._revenue: dict[str, Decimal] = {}
        self._failing = False

    def current(self) -> dict[str, Decimal]:
        """Customer → monthly revenue in USD: the last good read of the file."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._seen:
                return self._revenue
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            if not self._failing:
                self._failing = True
                why = getattr(e, "strerror", None) or e
                log.error(
                    "revenue_file %s cannot be read (%s: %s); spend_customer_revenue_monthly_usd keeps the last "
                    "figures read (%d customers)",
                    self.path,
                    e.__class__.__name__,
                    why,
                    len(self._revenue),
                )
            return self._revenue
        revenue, errors = parse_revenue(text, self.path)
        for msg in errors:
            log.error("revenue_file %s; the good rows are kept", msg)
        if errors and not revenue and self._revenue:
            # not one good row (a wrong header, a file being written): keep the last good figures
            log.error("revenue_file %s has no good row; the last figures read are kept", self.path)
            self._seen = stamp
            return self._revenue
        if self._failing:
            log.info("revenue_file %s can be read again", self.path)
        self._failing = False
        self._seen = stamp
        self._revenue = revenue
        log.info("revenue_file %s: %d customers", self.path, len(revenue))
        return revenue

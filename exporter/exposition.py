"""The exposition: metric families rendered to the Prometheus text format and OpenMetrics.

The exporter renders once per refresh, never per scrape: a scrape only sends
bytes that are already built (``exporter.snapshot``). Rendering here is
byte-compatible with prometheus_client's ``generate_latest`` for gauges and
counters; the tests parse our output with prometheus_client's parsers and
run ``promtool check metrics`` on it.

A family's samples come in *fragments*, one per source, so that a refresh
of one source re-renders only that source's lines::

    # HELP spend_cost_daily_usd Cost of the newest complete UTC day ...
    # TYPE spend_cost_daily_usd gauge
    spend_cost_daily_usd{account_id="111111111111",model="",provider="aws",service_name="AWS Lambda",team="search"} 41.7
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

MAX_LABEL_VALUE_BYTES = 4096  # longer values are truncated (and counted by the caller)
TRUNCATION_MARK = "..."


def clean_label_value(v: str) -> tuple[str, bool]:
    """``v`` made safe to store and to expose, and whether it was truncated.

    Code points UTF-8 cannot encode (lone surrogates, e.g. from a JSON ``"\\udcff"`` escape or a
    ``surrogateescape`` decode of invalid bytes) become U+FFFD; a value longer than
    ``MAX_LABEL_VALUE_BYTES`` of UTF-8 is cut there, on a character boundary, and ends in "...".
    """
    if v.isascii():  # O(1) in CPython: the common case costs nothing
        if len(v) <= MAX_LABEL_VALUE_BYTES:
            return v, False
        return v[:MAX_LABEL_VALUE_BYTES] + TRUNCATION_MARK, True
    try:
        data = v.encode("utf-8")
    except UnicodeEncodeError:
        v = v.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        data = v.encode("utf-8")
    if len(data) <= MAX_LABEL_VALUE_BYTES:
        return v, False
    return data[:MAX_LABEL_VALUE_BYTES].decode("utf-8", "ignore") + TRUNCATION_MARK, True


def escape_label_value(v: str) -> str:
    if "\\" in v or '"' in v or "\n" in v:
        v = v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return v


def escape_help(v: str, openmetrics: bool = False) -> str:
    v = v.replace("\\", r"\\").replace("\n", r"\n")
    if openmetrics:
        v = v.replace('"', r"\"")
    return v


def rounded(v: float) -> float:
    """A sample of a sum of money, to 6 decimals: sums of the same floats in another order differ in the last bits."""
    v = round(v, 6)
    return 0.0 if v == 0 else v


def format_value(v: float) -> str:
    """Go's strconv.FormatFloat(v, 'g', -1, 64), as Prometheus writes numbers.

    Not prometheus_client's ``floatToGoString`` (the tests hold the two equal): it writes -0.0, and
    before 0.26 (pyproject allows 0.20) exponents of 10 and more as ``e+010``.
    """
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    if math.isnan(v):
        return "NaN"
    if v == 0:
        return "0.0"
    s = repr(float(v))
    mantissa, sep, exp = s.partition("e")
    if sep:
        exp_i = int(exp)
        return f"{mantissa}e{'+' if exp_i >= 0 else '-'}{abs(exp_i):02d}"
    dot = s.find(".")
    if v > 0 and dot > 6:
        # Go switches to exponents from 1e6 on; prometheus_client's floatToGoString does the same
        digits = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{digits}e+{dot - 1:02d}"
    return s


def render_samples(name: str, labelnames: Sequence[str], rows: Iterable[tuple[Sequence[str], float]]) -> bytes:
    """Sample lines for ``name``; each row is (label values in ``labelnames`` order, value)."""
    out: list[str] = []
    append = out.append
    if labelnames:
        prefix = name + "{"
        keys = [f'{ln}="' for ln in labelnames]
        n = len(keys)
        for values, value in rows:
            parts = [keys[i] + escape_label_value(values[i]) + '"' for i in range(n)]
            append(f"{prefix}{','.join(parts)}}} {format_value(value)}\n")
    else:
        for _, value in rows:
            append(f"{name} {format_value(value)}\n")
    return "".join(out).encode("utf-8", "replace")  # lone surrogates from bad input become "?"


@dataclass
class Family:
    """One metric family: its header and the already-rendered sample fragments."""

    name: str  # full sample name (counters end in _total)
    type: str  # gauge | counter
    help: str
    fragments: list[bytes] = field(default_factory=list)

    def header(self, openmetrics: bool) -> bytes:
        name = self.name
        if openmetrics and self.type == "counter" and name.endswith("_total"):
            name = name[: -len("_total")]
        return f"# HELP {name} {escape_help(self.help, openmetrics)}\n# TYPE {name} {self.type}\n".encode()


def render(families: Iterable[Family], openmetrics: bool = False) -> bytes:
    """The whole exposition. Families with no samples are still declared (HELP/TYPE only)."""
    chunks: list[bytes] = []
    for fam in families:
        chunks.append(fam.header(openmetrics))
        chunks.extend(fam.fragments)
    if openmetrics:
        chunks.append(b"# EOF\n")
    return b"".join(chunks)


def gzipped(data: bytes) -> bytes:
    # level 6: Prometheus scrapes are frequent; this is paid once per refresh
    return gzip.compress(data, compresslevel=6, mtime=0)

"""The landing page ``/``: ``/status`` (``exporter.status``) as two tables a person reads at a glance.

Sources with their status, the billing date their data reaches and their month to date; budgets with what is
spent, the month-end forecast and their state, the states of ``status.BUDGET_STATES`` marked by a word as well
as a colour. Every value that comes from the configuration or a provider (names, teams, errors) is
HTML-escaped; the page has no script and loads nothing.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

from exporter import __version__
from exporter.status import status_report

# the word each budget state shows (the colour alone would not tell a colour-blind reader, nor a printout)
STATE_TEXT = {
    "exceeded": "over limit",
    "warning": "warning",
    "forecast_exceeded": "forecast over limit",
    "ok": "ok",
}

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:1.5em 2em;color:#1f2328}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .4em}
nav a{margin-right:1em}.meta{color:#59636e;margin:.3em 0 0}
table{border-collapse:collapse;font-size:.92em}
th,td{border:1px solid #d1d9e0;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600;white-space:nowrap}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
time{font-variant-numeric:tabular-nums;white-space:nowrap}
.err{min-width:14em;max-width:40em;overflow-wrap:break-word;color:#82071e}
.up{color:#116329;font-weight:600;white-space:nowrap}.down{color:#b3261e;font-weight:600;white-space:nowrap}
td.name{white-space:nowrap}
tr.exceeded td{background:#ffebe9}tr.warning td{background:#fff8c5}tr.forecast_exceeded td{background:#fdf6ec}
.state{font-weight:600;white-space:nowrap}tr.ok .state{font-weight:400;color:#59636e}
tr.exceeded .state,.over{color:#b3261e}tr.warning .state{color:#7d4e00}tr.forecast_exceeded .state{color:#953800}
.note{color:#59636e;font-size:.85em;max-width:60em}
"""


def landing_page(app: Any) -> str:
    """The page, from the same report as ``/status``."""
    st = status_report(app)
    snap = st["snapshot"]
    ready = "ready" if st["ready"] else "not ready: waiting for the first refresh of every source"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>spend-exporter</title><style>{STYLE}</style></head>
<body><h1>spend-exporter {_e(__version__)}</h1>
<nav><a href="/metrics">Metrics</a><a href="/status">Status (JSON)</a><a href="/config">Config (redacted)</a>\
<a href="/-/ready">Ready</a></nav>
<p class="meta">{_time(st["now"], utc=True)} · {ready} · snapshot built {_time(snap["built_at"], utc=True)}, \
{snap["series"]:,} series</p>
<h2>Sources</h2>
{_sources(st["sources"])}
<p class="note">Data through: the end of the newest billing data the source holds, in UTC; 00:00 on a day means
every hour of the day before.</p>
<h2>Budgets</h2>
{_budgets(st["budgets"])}
<p class="note">Warning: spent has reached the budget's warning ratio of its limit; over limit: spent has reached
the limit; forecast over limit: the month-end forecast (month to date plus the remaining days at the mean of the
last 7 complete days) is above the limit. The same conditions as the alerts SpendBudgetWarning,
SpendBudgetExceeded and SpendBudgetForecastExceeded.</p>
</body></html>
"""


def _sources(sources: list[dict[str, Any]]) -> str:
    if not sources:
        return "<p>No source is configured.</p>"
    rows = []
    for s in sources:
        status = ("up" if s["up"] else "down") + (" (refreshing)" if s["refreshing"] else "")
        error = _e(s["last_error"] or "")
        if s["paid_call_cap_reached"]:
            error += (" " if error else "") + "(paid-call cap reached for today)"
        rows.append(
            f'<tr><td class="name">{_e(s["name"])}</td><td>{_e(s["type"])}</td>'
            f'<td class="{"up" if s["up"] else "down"}">'
            f"{status}</td><td>{_time(s['data_through'], seconds=False, none='no data yet')}</td>"
            f"<td>{_time(s['last_success'], none='never')}</td><td>{_time(s['next_refresh'])}</td>"
            f'<td class="num">{_money(s["month_to_date_usd"])}</td><td class="err">{error}</td></tr>'
        )
    return (
        "<table><thead><tr><th>Source</th><th>Type</th><th>Status</th><th>Data through (UTC)</th>"
        '<th>Last success (UTC)</th><th>Next refresh (UTC)</th><th class="num">Month to date (USD)</th>'
        "<th>Last error</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _budgets(budgets: list[dict[str, Any]]) -> str:
    if not budgets:
        return "<p>No budget is configured (<code>budgets:</code> in the config, docs/configuration.md).</p>"
    rows = []
    states = [b["state"] for b in budgets]
    for b in budgets:
        state = b["state"]
        over = " over" if b["forecast_usd"] > b["amount_usd"] else ""
        rows.append(
            f'<tr class="{state}"><td>{_e(b["name"])}</td><td>{_e(b["team"])}</td>'
            f'<td class="num">{_money(b["spent_usd"])}</td><td class="num">{_money(b["amount_usd"])}</td>'
            f'<td class="num">{_pct(b["used_ratio"])}</td><td class="num">{_pct(b["warning_ratio"])}</td>'
            f'<td class="num{over}">{_money(b["forecast_usd"])}</td>'
            f'<td class="num{over}">{_pct(b["forecast_ratio"])}</td>'
            f'<td class="state">{STATE_TEXT[state]}</td></tr>'
        )
    counts = [(n, STATE_TEXT[state]) for state in STATE_TEXT if state != "ok" and (n := states.count(state))]
    summary = (
        f"{sum(n for n, _ in counts)} of {len(budgets)} budgets need attention: "
        + ", ".join(f"{n} {t}" for n, t in counts)
        + "."
        if counts
        else f"All {len(budgets)} budgets are within their limits, warning ratios and forecasts."
    )
    return (
        f"<p>{summary}</p>"
        '<table><thead><tr><th>Budget</th><th>Team</th><th class="num">Spent (USD)</th><th class="num">Limit (USD)</th>'
        '<th class="num">Used</th><th class="num">Warning at</th><th class="num">Month-end forecast (USD)</th>'
        '<th class="num">Forecast / limit</th><th>State</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _money(usd: float) -> str:
    return f"{usd:,.2f}"


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.1f}%"


def _time(iso: str | None, seconds: bool = True, none: str = "", utc: bool = False) -> str:
    """A UTC time of ``/status`` (ISO 8601 with ``Z``) to the second (or minute), without its microseconds;
    ``utc``: followed by "UTC" (in a table the column's heading says it)."""
    if not iso:
        return _e(none)
    t = dt.datetime.fromisoformat(iso).astimezone(dt.UTC).replace(microsecond=0)
    shown = t.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return f'<time datetime="{t.strftime("%Y-%m-%dT%H:%M:%SZ")}">{shown}{" UTC" if utc else ""}</time>'

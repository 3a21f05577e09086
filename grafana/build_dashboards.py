#!/usr/bin/env python3
"""Writes grafana/dashboards/*.json, the five spend-exporter dashboards.

The JSON files are what Grafana provisions and what users import; this script
is how they are kept consistent (one datasource variable, the same chained
variables, USD units, stable uids). Edit here, then run it:

    .venv/bin/python grafana/build_dashboards.py           # rewrite the JSON files
    .venv/bin/python grafana/build_dashboards.py --check   # exit 1 if a file differs (CI)

The dashboards are built with grafana-foundation-sdk, Grafana's typed builders, pinned to the build for the
Grafana the stack runs (pyproject.toml's test extra); tests/test_dashboards.py validates what it writes against
Grafana's schema.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import barchart as bc
from grafana_foundation_sdk.builders import bargauge as bg
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus
from grafana_foundation_sdk.builders import stat as st
from grafana_foundation_sdk.builders import table as tb
from grafana_foundation_sdk.builders import timeseries as ts
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).resolve().parent / "dashboards"
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["spend", "spend-exporter", "finops"]

# Label filters for the chained variables.
F = 'provider=~"$provider", team=~"$team", model=~"$model"'
# an AI family's series against the cost families': the AI families have no extra labels (attribution.labels), so
# the cost side is summed over them and matched on these, as SpendAIBurnRateHigh does
AI_SERIES = "job, instance, provider, account_id, service_name, team, model"
F_AI = F + ', model!=""'
F_BUDGET = 'team=~"$team"'
# The exporter's own families label `provider` with the source's type (`focus`, `aws`, ...), not the billed
# provider of the cost families: they are filtered by source only.
F_SOURCE = 'source=~"$source"'

USD = "currencyUSD"

# --------------------------------------------------------------------------- billing dates
#
# docs/dashboards.md says how each chart maps a bar to a billing date, and why.
#
# At any moment of UTC day D+1, spend_cost_daily_usd is the cost of day D (live and backfilled alike). A panel
# whose query runs every 1d (DAILY) is evaluated at 00:00 UTC of each day D (Grafana aligns the steps of a range
# query to multiples of the step, and the dashboards' timezone is UTC); NEXT_DAY makes the selector read exactly
# UTC day D+1, in milliseconds, from there: [D+1 00:00:00.000, D+1 23:59:59.999]. last_over_time takes the
# newest figure of day D the gauge showed, restatements included; a sample exactly at 00:00 of D+2 (a backfill
# at a regular spacing has one) is day D+1's and stays out. The bar of today is empty: day D+1 has not begun.
NEXT_DAY = "[23h59m59s999ms] offset -1d23h59m59s999ms"
# Seen from 00:00 UTC of a month's last day: days 1 to 28 of the next month, in every month inside it, in which
# spend_cost_previous_month_usd is the month of that last day. The newest figure of those days is the month's.
NEXT_MONTH = "[27d23h59m59s999ms] offset -28d23h59m59s999ms"
# Keeps one point per month, at 00:00 UTC of the month's last day (its last billing date).
MONTH_END = "and on () day_of_month() == days_in_month()"
# The length in days of the previous UTC month: days_in_month of a moment in it (now minus the day of month).
PREV_MONTH_DAYS = "days_in_month(vector(time()) - 86400 * day_of_month())"
DAILY = "1d"

P = TypeVar("P", st.Panel, ts.Panel, bg.Panel, tb.Panel, bc.Panel)


# --------------------------------------------------------------------------- building blocks
#
# Each helper returns a builder of grafana-foundation-sdk (Grafana 11.3's typed builders), so a further option is
# one more call on it (``stat(...).color_mode(...)``), typed and checked against Grafana's own enums.

Panel = cogbuilder.Builder[dm.Panel]
Row = db.Row
Item = tuple[Panel | Row, int, int]  # a panel or a row, its width and its height in grid units


def target(
    expr: str, legend: str = "", *, instant: bool = False, table: bool = False, ref: str = "A"
) -> prometheus.Dataquery:
    q = prometheus.Dataquery().datasource(DS).ref_id(ref).expr(expr).legend_format(legend or "__auto")
    q = q.instant() if instant or table else q.range()
    return q.format(PromQueryFormat.TABLE) if table else q


def _targets(exprs: list[tuple[str, str]], **kw: Any) -> list[prometheus.Dataquery]:
    return [target(e, lg, ref=chr(ord("A") + i), **kw) for i, (e, lg) in enumerate(exprs)]


def _base(p: P, title: str, description: str, unit: str, targets: list[prometheus.Dataquery]) -> P:
    p.title(title).description(description).datasource(DS).targets(list(targets)).unit(unit)
    return p


def _reduce_last() -> cb.ReduceDataOptions:
    return cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def _override(name: str, *props: tuple[str, Any]) -> tuple[str, list[dm.DynamicConfigValue]]:
    return name, [dm.DynamicConfigValue(id_val=k, value=v) for k, v in props]


def _thresholds(steps: list[tuple[float | None, str]]) -> db.ThresholdsConfig:
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps([dm.Threshold(v, c) for v, c in steps])


def _value_map(texts: dict[str, tuple[str, str]]) -> list[dm.ValueMapping]:
    """A value mapping: value -> (text, colour)."""
    return [dm.ValueMap({v: dm.ValueMappingResult(text=t, color=c) for v, (t, c) in texts.items()})]


def stat(
    title: str,
    description: str,
    expr: str,
    unit: str = USD,
    decimals: int | None = 0,
    *,
    legend: str = "",
    text_mode: cm.BigValueTextMode = cm.BigValueTextMode.VALUE,
) -> st.Panel:
    p = _base(st.Panel(), title, description, unit, [target(expr, legend or title, instant=True)])
    p.color_scheme(db.FieldColor().mode(dm.FieldColorModeId.FIXED).fixed_color("blue"))
    if decimals is not None:
        p.decimals(decimals)
    return (
        p.reduce_options(_reduce_last())
        .color_mode(cm.BigValueColorMode.VALUE)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .text_mode(text_mode)
        .justify_mode(cm.BigValueJustifyMode.AUTO)
        .orientation(cm.VizOrientation.AUTO)
        .wide_layout(True)
        .show_percent_change(False)
        .percent_change_color_mode(cm.PercentChangeColorMode.STANDARD)
    )


def timeseries(
    title: str, description: str, exprs: list[tuple[str, str]], unit: str = USD, stack: bool = False
) -> ts.Panel:
    return (
        _base(ts.Panel(), title, description, unit, _targets(exprs))
        .draw_style(cm.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(20 if stack else 0)
        .show_points(cm.VisibilityMode.NEVER)
        .span_nulls(True)
        .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL if stack else cm.StackingMode.NONE).group("A"))
        .legend(
            cb.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.RIGHT)
            .calcs(["lastNotNull"])
            .sort_by("Last *")
            .sort_desc(True)
            .show_legend(True)
        )
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    )


def bargauge(
    title: str,
    description: str,
    expr: str,
    legend: str,
    unit: str = USD,
    thresholds: list[tuple[float | None, str]] | None = None,
    max_: float | None = None,
) -> bg.Panel:
    p = _base(bg.Panel(), title, description, unit, [target(expr, legend, instant=True)]).min(0)
    if max_ is not None:
        p.max(max_)
    return (
        p.thresholds(_thresholds(thresholds or [(None, "blue")]))
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        .orientation(cm.VizOrientation.HORIZONTAL)
        .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
        .show_unfilled(True)
        .value_mode(cm.BarGaugeValueMode.COLOR)
        .name_placement(cm.BarGaugeNamePlacement.LEFT)
        .sizing(cm.BarGaugeSizing.AUTO)
        .min_viz_width(8)
        .min_viz_height(16)
        .max_viz_height(300)
        .legend(
            cb.VizLegendOptions()
            .show_legend(False)
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
            .calcs([])
        )
        .reduce_options(_reduce_last())
    )


def table(
    title: str,
    description: str,
    columns: list[tuple[str, str, str]],
    hide: list[str] | None = None,
    sort: str | None = None,
    ascending: bool = False,
) -> tb.Panel:
    """Instant queries merged on their labels; ``columns`` is (expr, column title, unit)."""
    targets = [target(e, "", table=True, ref=chr(ord("A") + i)) for i, (e, _, _) in enumerate(columns)]
    p = _base(tb.Panel(), title, description, columns[0][2], targets)
    for i, (_, name, unit) in enumerate(columns):
        p.override_by_name(
            *_override(
                f"Value #{chr(ord('A') + i)}" if len(columns) > 1 else "Value",
                ("displayName", name),
                ("unit", unit),
                *([("decimals", 2)] if unit == USD else []),
            )
        )
    organize = {"excludeByName": {k: True for k in ["Time", "job", "instance", *(hide or [])]}}
    p.transformations(
        [
            *([dm.DataTransformerConfig(id_val="merge", options={})] if len(columns) > 1 else []),
            dm.DataTransformerConfig(id_val="organize", options=organize),
        ]
    )
    p.show_header(True).cell_height(cm.TableCellHeight.SM).frame_index(0)
    p.footer(cb.TableFooterOptions().show(False).reducer([]).count_rows(False))
    if sort:
        p.sort_by([cb.TableSortByFieldState().display_name(sort).desc(not ascending)])
    return p


def daily_bars(title: str, description: str, exprs: list[tuple[str, str]], stack: bool = True) -> ts.Panel:
    """One bar per UTC billing day: a range query every 1d (queries use NEXT_DAY), drawn as stacked bars."""
    return (
        timeseries(title, description, exprs, stack=stack)
        .interval(DAILY)  # the minimum step: Grafana never queries these more often than once a day
        .max_data_points(1000)  # so the step stays 1d up to 1000 days (the panel's width would set it otherwise)
        .draw_style(cm.GraphDrawStyle.BARS)
        .fill_opacity(80)
        .line_width(1)
        .bar_alignment(cm.BarAlignment.AFTER)  # the bar at 00:00 of day D is drawn over day D, to the next 00:00
        .span_nulls(False)
    )


def monthly_bars(title: str, description: str, expr: str, legend: str) -> bc.Panel:
    """One group of bars per billing month over the last 13 months: a bar chart over a range query every 1d
    that keeps only each month's last day (MONTH_END), the series joined on time, the month as the label."""
    return (
        _base(bc.Panel(), title, description, USD, [target(expr, legend)])
        .interval(DAILY)
        .max_data_points(1000)  # the step must stay 1d, or months whose last day falls between steps drop out
        .time_from("13M")
        .fill_opacity(80)
        .line_width(1)
        .gradient_mode(cm.GraphGradientMode.NONE)
        .decimals(0)
        .override_by_name(*_override("Time", ("unit", "time:YYYY-MM")))
        .transformations([dm.DataTransformerConfig(id_val="joinByField", options={"byField": "Time", "mode": "outer"})])
        .orientation(cm.VizOrientation.VERTICAL)
        .x_field("Time")
        .stacking(cm.StackingMode.NORMAL)
        .show_value(cm.VisibilityMode.NEVER)
        .group_width(0.7)
        .bar_width(0.9)
        .x_tick_label_rotation(0)
        .x_tick_label_spacing(0)
        .x_tick_label_max_length(0)
        .full_highlight(False)
        .legend(
            cb.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.RIGHT)
            .calcs(["mean"])
            .show_legend(True)
        )
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    )


def by_billing_day(by: str, selector: str = F) -> str:
    """The daily cost summed by ``by``, at 00:00 UTC of its billing day (see NEXT_DAY)."""
    return f"sum by ({by}) (last_over_time(spend_cost_daily_usd{{{selector}}}{NEXT_DAY}))"


def by_billing_month(by: str, selector: str = F) -> str:
    """Each month's cost summed by ``by``, at 00:00 UTC of the month's last day (see NEXT_MONTH)."""
    return f"sum by ({by}) (last_over_time(spend_cost_previous_month_usd{{{selector}}}{NEXT_MONTH}))\n{MONTH_END}"


def last_month_same_day(by: str = "", selector: str = F) -> str:
    """Month to date as it stood on the same day of last month, at the same time of day.

    Offsets are fixed durations and months are not, so the four possible lengths of the previous month are
    each tried and the one that is its length kept. On a day the previous month did not have (the 29th to the
    31st after a shorter month) the comparison is the whole previous month.
    """
    agg = f"sum by ({by})" if by else "sum"
    mtd = [
        f"({agg} (spend_cost_month_to_date_usd{{{selector}}} offset {n}d) and on () {PREV_MONTH_DAYS} == {n})"
        for n in (28, 29, 30, 31)
    ]
    alts = "\n  or ".join(mtd)
    return (
        f"(\n  {alts}\n) and on () day_of_month() <= {PREV_MONTH_DAYS}"
        f"\nor {agg} (spend_cost_previous_month_usd{{{selector}}}) and on () day_of_month() > {PREV_MONTH_DAYS}"
    )


def movers(title: str, description: str, by: str, offset: str, compared: str) -> Panel:
    """The ten series of ``by`` whose newest complete day moved most against the day ``offset`` before.

    A series with no cost on one of the two days counts as 0 there (a new service is a mover); the table stays
    empty until Prometheus holds the compared day at all, rather than calling every series new.
    """
    now = f"sum by ({by}) (spend_cost_daily_usd{{{F}}})"
    then = f"sum by ({by}) (spend_cost_daily_usd{{{F}}} offset {offset})"
    change = f"(({now}) or 0 * ({then})) - (({then}) or 0 * ({now}))"
    top = f"topk(10, abs({change}))\nand on () group(spend_cost_daily_usd offset {offset})"
    return table(
        title,
        description,
        [
            (f"{change}\nand {top}", "Change", USD),
            (f"{now}\nand {top}", "Newest day", USD),
            (f"{then}\nand {top}", compared, USD),
        ],
        sort="Change",
    )


def row(title: str) -> db.Row:
    return db.Row(title).collapsed(False)


# --------------------------------------------------------------------------- variables


def _datasource_var() -> db.DatasourceVariable:
    return (
        db.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .regex("")
        .hide(dm.VariableHide.DONT_HIDE)
        .include_all(False)
        .multi(False)
    )


def _query_var(name: str, label: str, metric: str, selector: str = "") -> db.QueryVariable:
    q = f"label_values({metric}{{{selector}}}, {name})" if selector else f"label_values({metric}, {name})"
    return (
        db.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(q)  # the classic string form, which every Grafana version reads
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)  # new teams and models appear without a reload
        .include_all(True)
        .all_value(".*")
        .multi(True)
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .options([])
        .regex("")
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .hide(dm.VariableHide.DONT_HIDE)
    )


Variable = db.DatasourceVariable | db.QueryVariable


def spend_variables() -> list[Variable]:
    return [
        _datasource_var(),
        _query_var("provider", "Provider", "spend_cost_month_to_date_usd"),
        _query_var("team", "Team", "spend_cost_month_to_date_usd", 'provider=~"$provider"'),
        _query_var("model", "Model", "spend_ai_tokens_month_to_date", 'provider=~"$provider", team=~"$team"'),
    ]


# --------------------------------------------------------------------------- layout


def layout(items: list[Item]) -> list[Panel | Row]:
    """Place (panel, width, height) left to right, wrapping at 24 columns; rows span the width. (The SDK's own
    placement lets a panel that does not fit run past column 24, so the positions are set here.)"""
    out: list[Panel | Row] = []
    x = y = row_h = 0
    for n, (panel, w, h) in enumerate(items, start=1):
        if isinstance(panel, db.Row):
            if x:
                y += row_h
            x, row_h = 0, 0
            panel.grid_pos(dm.GridPos(h=1, w=24, x=0, y=y))
            y += 1
        else:
            if x + w > 24:
                x, y, row_h = 0, y + row_h, 0
            panel.grid_pos(dm.GridPos(h=h, w=w, x=x, y=y))  # type: ignore[attr-defined]
            x += w
            row_h = max(row_h, h)
        panel.id(n)  # type: ignore[attr-defined]
        out.append(panel)
    return out


def dashboard(uid: str, title: str, description: str, variables: list[Variable], items: list[Item]) -> dm.Dashboard:
    d = (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .timezone("utc")
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .version(1)
        .refresh("5m")
        .time("now-7d", "now")
        .fiscal_year_start_month(0)
        .live_now(False)
        .annotation(
            db.AnnotationQuery()
            .built_in(1)
            .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .name("Annotations & Alerts")
            .type("dashboard")
        )
        .link(
            db.DashboardLink("Spend dashboards")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["spend"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
            .icon("external link")
            .target_blank(False)
            .tooltip("")
            .url("")
        )
        .variables(list(variables))
    )
    for p in layout(items):
        if isinstance(p, db.Row):
            d.with_row(p)
        else:
            d.with_panel(p)
    built = d.build()
    # The SDK gives every variable the interval variable's auto fields; Grafana 11.3's variable model has none of
    # them (its schema rejects them, tests/test_dashboards.py): the datasource and query variables go without.
    assert built.templating and built.templating.list_val
    for v in built.templating.list_val:
        v.auto = v.auto_min = v.auto_count = None
    return built


# --------------------------------------------------------------------------- the dashboards

TOKEN_TYPES = [("input", "Input"), ("output", "Output"), ("cache_read", "Cache read"), ("cache_write", "Cache write")]

BUDGET_STEPS: list[tuple[float | None, str]] = [(None, "green"), (0.8, "orange"), (1.0, "red")]


def overview() -> dm.Dashboard:
    anomaly = (
        f"spend_cost_daily_usd{{{F}}}"
        f" > spend_cost_daily_baseline_usd{{{F}}} + 3 * spend_cost_daily_baseline_stddev_usd{{{F}}}"
        f"\nand spend_cost_daily_usd{{{F}}} > 1.5 * spend_cost_daily_baseline_usd{{{F}}}"
    )
    data_through = stat(
        "Data through",
        "The end of the newest billing data each source holds (UTC): 2026-12-07 00:00 means every hour up to the "
        "end of 6 December. The daily figures are of the newest complete day before it. Per source, so not "
        "filtered by provider.",
        "spend_exporter_source_data_through_timestamp_seconds * 1000",
        unit="time:YYYY-MM-DD HH:mm",
        decimals=None,
        legend="{{source}}",
        text_mode=cm.BigValueTextMode.VALUE_AND_NAME,
    )
    panels: list[Item] = [
        (
            stat(
                "Month to date",
                "Spend this UTC month through the newest data.",
                f"sum(spend_cost_month_to_date_usd{{{F}}})",
            ),
            4,
            4,
        ),
        (
            stat(
                "Last month, same day",
                "Month to date as it stood on the same day of last month at the same time of day (the same "
                "lag of billing data); after the last day of a shorter month, the whole previous month.",
                last_month_same_day(),
            ),
            4,
            4,
        ),
        (
            stat(
                "Forecast, month end",
                "Month to date plus the remaining days at the mean of the last 7 complete days.",
                f"sum(spend_cost_forecast_month_end_usd{{{F}}})",
            ),
            4,
            4,
        ),
        (stat("Previous month", "The last complete UTC month.", f"sum(spend_cost_previous_month_usd{{{F}}})"), 4, 4),
        (
            stat(
                "Newest complete day",
                "Spend on the newest complete UTC day (yesterday, once the providers' data for it is in).",
                f"sum(spend_cost_daily_usd{{{F}}})",
            ),
            4,
            4,
        ),
        (data_through, 4, 4),
        (row("Budgets"), 24, 1),
        (
            bargauge(
                "Budget use",
                "Month-to-date spend as a share of each budget's monthly limit.",
                f"budget:spend_budget_used:ratio{{{F_BUDGET}}}",
                "{{budget}}",
                unit="percentunit",
                thresholds=BUDGET_STEPS,
                max_=1.2,
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Forecast against budget",
                "Each budget's month-end forecast beside its limit.",
                [
                    (f"sum by (budget) (spend_budget_forecast_usd{{{F_BUDGET}}})", "{{budget}} forecast"),
                    (f"sum by (budget) (spend_budget_limit_usd{{{F_BUDGET}}})", "{{budget}} limit"),
                ],
            ),
            8,
            8,
        ),
        (
            table(
                "Budgets",
                "Spent, forecast and limit of every budget.",
                [
                    (f"spend_budget_spent_usd{{{F_BUDGET}}}", "Spent", USD),
                    (f"spend_budget_forecast_usd{{{F_BUDGET}}}", "Forecast", USD),
                    (f"spend_budget_limit_usd{{{F_BUDGET}}}", "Limit", USD),
                    (f"budget:spend_budget_used:ratio{{{F_BUDGET}}}", "Used", "percentunit"),
                ],
                sort="Used",
            ),
            8,
            8,
        ),
        (row("Where it goes"), 24, 1),
        (
            bargauge(
                "Month to date by provider",
                "Spend this month per provider.",
                f"sum by (provider) (spend_cost_month_to_date_usd{{{F}}})",
                "{{provider}}",
            ),
            8,
            9,
        ),
        (
            daily_bars(
                "Daily spend by provider",
                "One bar per UTC billing day: the newest figure for that day, restatements included "
                "(docs/dashboards.md). Today has no bar until it is complete.",
                [(by_billing_day("provider"), "{{provider}}")],
            ),
            16,
            9,
        ),
        (
            table(
                "Top services, month to date",
                "The ten services with the most spend this month.",
                [
                    (
                        f"topk(10, sum by (provider, service_name) (spend_cost_month_to_date_usd{{{F}}}))",
                        "Month to date",
                        USD,
                    )
                ],
                sort="Month to date",
            ),
            12,
            9,
        ),
        (
            table(
                "Anomalies on the newest complete day",
                "Services whose newest complete day (yesterday, once the providers' data for it is in) is more than "
                "3 standard deviations and 1.5x above their 28-day mean (SpendDailyAnomaly also needs $50 and an "
                "hour). Today is not complete: it is never compared.",
                [
                    (anomaly, "Newest day", USD),
                    (f"spend_cost_daily_baseline_usd{{{F}}} and ({anomaly})", "28-day mean", USD),
                ],
                hide=["model"],
                sort="Newest day",
            ),
            12,
            9,
        ),
        (row("This month against last"), 24, 1),
        (
            timeseries(
                "Month to date against last month",
                "This month's spend so far beside last month's at the same day of month and time of day "
                "(after the last day of a shorter month: the whole previous month).",
                [
                    (f"sum(spend_cost_month_to_date_usd{{{F}}})", "this month"),
                    (last_month_same_day(), "last month, same day"),
                ],
            ),
            12,
            9,
        ),
        (
            monthly_bars(
                "Monthly spend by provider, 13 months",
                "One group per billing month: the month's cost per provider as it stood on the 28th of the "
                "month after (or now, for last month). The current month is not complete and has no bar.",
                by_billing_month("provider"),
                "{{provider}}",
            ),
            12,
            9,
        ),
        (row("Top movers"), 24, 1),
        (
            movers(
                "Top movers by service, day over day",
                "The ten services whose newest complete day moved most against the day before, up or down.",
                "provider, service_name",
                "1d",
                "Day before",
            ),
            12,
            9,
        ),
        (
            movers(
                "Top movers by service, week over week",
                "The ten services whose newest complete day moved most against the same weekday a week before.",
                "provider, service_name",
                "7d",
                "A week before",
            ),
            12,
            9,
        ),
    ]
    return dashboard(
        "spend-overview",
        "Spend / Overview",
        "What the organisation spends on cloud and AI APIs: month to date, forecast, budgets, providers, anomalies.",
        spend_variables(),
        panels,
    )


def teams() -> dm.Dashboard:
    panels: list[Item] = [
        (
            bargauge(
                "Month to date by team",
                "Spend this month attributed to each team (unallocated: no tag, no rule).",
                f"sum by (team) (spend_cost_month_to_date_usd{{{F}}})",
                "{{team}}",
            ),
            12,
            9,
        ),
        (
            bargauge(
                "Budget use by team",
                "Each budget's month-to-date spend as a share of its limit.",
                f"budget:spend_budget_used:ratio{{{F_BUDGET}}}",
                "{{budget}} ({{team}})",
                unit="percentunit",
                thresholds=BUDGET_STEPS,
                max_=1.2,
            ),
            12,
            9,
        ),
        (
            table(
                "Teams: this month and last",
                "Month to date, month-end forecast and the last complete month per team.",
                [
                    (f"sum by (team) (spend_cost_month_to_date_usd{{{F}}})", "Month to date", USD),
                    (f"sum by (team) (spend_cost_forecast_month_end_usd{{{F}}})", "Forecast", USD),
                    (f"sum by (team) (spend_cost_previous_month_usd{{{F}}})", "Previous month", USD),
                ],
                sort="Month to date",
            ),
            12,
            9,
        ),
        (
            bargauge(
                "Previous month by team",
                "The last complete UTC month per team.",
                f"sum by (team) (spend_cost_previous_month_usd{{{F}}})",
                "{{team}}",
            ),
            12,
            9,
        ),
        (
            daily_bars(
                "Daily spend by team",
                "One bar per UTC billing day and team: the newest figure for that day, restatements included "
                "(docs/dashboards.md). Today has no bar until it is complete.",
                [(by_billing_day("team"), "{{team}}")],
            ),
            24,
            9,
        ),
        (
            monthly_bars(
                "Monthly spend by team, 13 months",
                "One group per billing month: the month's cost per team as it stood on the 28th of the month "
                "after (or now, for last month). The current month is not complete and has no bar.",
                by_billing_month("team"),
                "{{team}}",
            ),
            24,
            9,
        ),
        (
            movers(
                "Top movers by team, day over day",
                "The ten teams whose newest complete day moved most against the day before, up or down.",
                "team",
                "1d",
                "Day before",
            ),
            12,
            9,
        ),
        (
            movers(
                "Top movers by team, week over week",
                "The ten teams whose newest complete day moved most against the same weekday a week before.",
                "team",
                "7d",
                "A week before",
            ),
            12,
            9,
        ),
        (
            table(
                "Services by team, month to date",
                "Each team's services, most expensive first.",
                [
                    (
                        f"topk(50, sum by (team, provider, service_name) (spend_cost_month_to_date_usd{{{F}}}))",
                        "Month to date",
                        USD,
                    )
                ],
                sort="Month to date",
            ),
            24,
            10,
        ),
    ]
    return dashboard(
        "spend-teams",
        "Spend / Teams",
        "Spend per team: month to date, services, budget use and the previous month.",
        spend_variables(),
        panels,
    )


def burn_rate_panel() -> ts.Panel:
    """The burn rate per series, and beside each the threshold SpendAIBurnRateHigh compares it with."""
    rate = f"spend_ai_burn_rate_usd_per_hour{{{F}}}"
    p = timeseries(
        "Burn rate by model",
        "USD an hour: the list-price cost of the last complete burn_window (15m by default) of minute usage, "
        "scaled to one hour and by the billed/list price ratio. Dashed: the threshold of SpendAIBurnRateHigh "
        "for that series, 4x its hourly baseline (28-day daily mean / 24) and at least $20 an hour; the alert "
        "fires when the rate stays above it for a minute.",
        [
            (rate, "{{provider}} {{account_id}} {{model}}"),
            (
                f"{rate} * 0\n+ on ({AI_SERIES}) group_left ()\n"
                f"clamp_min(4 * sum by ({AI_SERIES}) (spend_cost_daily_baseline_usd{{{F}}}) / 24, 20)\n"
                f"or {rate} * 0 + 20",
                "{{provider}} {{account_id}} {{model}} alert threshold",
            ),
        ],
    )
    return p.with_override(
        dm.MatcherConfig(id_val="byFrameRefID", options="B"),
        [dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})],
    )


def ai() -> dm.Dashboard:
    by_project = f"sum by (provider, account_id, team) (spend_cost_month_to_date_usd{{{F_AI}}})"
    panels: list[Item] = [
        (
            stat(
                "AI spend, month to date",
                "Spend this month on rows with a model.",
                f"sum(spend_cost_month_to_date_usd{{{F_AI}}})",
            ),
            6,
            4,
        ),
        (
            stat(
                "Last hour",
                "Estimated cost of the last complete hour (usage x price table).",
                f"sum(spend_ai_cost_last_hour_usd{{{F}}})",
                decimals=2,
            ),
            6,
            4,
        ),
        (
            stat(
                "Tokens, month to date",
                "All token types.",
                f"sum(spend_ai_tokens_month_to_date{{{F}}})",
                unit="short",
                decimals=None,
            ),
            6,
            4,
        ),
        (
            stat(
                "Requests, month to date",
                "Model requests this month.",
                f"sum(spend_ai_requests_month_to_date{{{F}}})",
                unit="short",
                decimals=None,
            ),
            6,
            4,
        ),
        (row("Cost"), 24, 1),
        (
            bargauge(
                "Cost by model, month to date",
                "Spend this month per model.",
                f"sum by (provider, model) (spend_cost_month_to_date_usd{{{F_AI}}})",
                "{{provider}} {{model}}",
            ),
            12,
            9,
        ),
        (
            table(
                "Cost by project, month to date",
                "Spend this month per project (OpenAI) or workspace (Anthropic), with its name where known.",
                [
                    (
                        f"{by_project}\n* on (provider, account_id) group_left (account_name)"
                        f" max by (provider, account_id, account_name) (spend_account_info)"
                        f"\nor on (provider, account_id, team) {by_project}",
                        "Month to date",
                        USD,
                    )
                ],
                sort="Month to date",
            ),
            12,
            9,
        ),
        (
            table(
                "Cost and tokens by model, month to date",
                "Each model's cost this month beside its tokens of each type, in their own columns: a price per "
                "token blended over input, output and cache tokens is not a price (cache reads cost a tenth of "
                "input, output several times it). Billed / list: the billed cost over the price table's "
                "estimate over the last 7 days (spend_ai_price_ratio; the highest of the model's projects): "
                "a type's price actually paid is its list price times it.",
                [
                    (f"sum by (provider, model) (spend_cost_month_to_date_usd{{{F_AI}}})", "Cost", USD),
                    *(
                        (
                            f'sum by (provider, model) (spend_ai_tokens_month_to_date{{{F}, token_type="{tt}"}})',
                            f"{name} tokens",
                            "short",
                        )
                        for tt, name in TOKEN_TYPES
                    ),
                    (
                        'max by (provider, model) (spend_ai_price_ratio{provider=~"$provider", model=~"$model"})',
                        "Billed / list",
                        "x",
                    ),
                ],
                sort="Cost",
            ),
            24,
            9,
        ),
        (
            timeseries(
                "Tokens by type",
                "Tokens this month per token type (input, output, cache reads and writes).",
                [(f"sum by (token_type) (spend_ai_tokens_month_to_date{{{F}}})", "{{token_type}}")],
                unit="short",
                stack=True,
            ),
            12,
            8,
        ),
        (row("Burn: the runaway detector"), 24, 1),
        (burn_rate_panel(), 12, 9),
        (
            timeseries(
                "Age of burn data",
                "Time since the end of the newest minute bucket behind the burn rate, per source. The window "
                "ends burn_delay (5m by default: the usage APIs publish minutes late) before the burn refresh, "
                "which runs every burn_interval (2m), so 5 to 8 minutes is normal. Past 3 burn windows the "
                "exporter withdraws the burn rate, and SpendAIBurnRateHigh cannot fire for that source.",
                [
                    (
                        'time() - spend_ai_burn_window_end_timestamp_seconds{provider=~"$provider"}',
                        "{{source}}",
                    )
                ],
                unit="s",
            ),
            12,
            9,
        ),
        (
            timeseries(
                "Last-hour cost by model",
                "Estimated cost of the last complete hour per project and model.",
                [
                    (
                        f"sum by (provider, account_id, model) (spend_ai_cost_last_hour_usd{{{F}}})",
                        "{{provider}} {{account_id}} {{model}}",
                    )
                ],
            ),
            12,
            9,
        ),
        (
            timeseries(
                "Last hour against hourly baseline",
                "Last-hour cost divided by the 28-day daily mean / 24. For AI spend known only by the hour "
                "(FOCUS files, cloud-billed models), SpendAIHourlyCostHigh fires above 4 (and $20 in the hour). "
                "Sources with minute usage (openai, anthropic) are watched by SpendAIBurnRateHigh instead: "
                "see Burn rate by model.",
                [
                    (
                        f"spend_ai_cost_last_hour_usd{{{F}}}\n/ on ({AI_SERIES}) group_left ()\n"
                        f"(sum by ({AI_SERIES}) (spend_cost_daily_baseline_usd{{{F}}}) / 24)",
                        "{{provider}} {{account_id}} {{model}}",
                    )
                ],
                unit="x",
            ),
            12,
            9,
        ),
        (
            table(
                "Tokens by model and type, month to date",
                "Tokens this month per model and token type.",
                [(f"sum by (provider, model, token_type) (spend_ai_tokens_month_to_date{{{F}}})", "Tokens", "short")],
                sort="Tokens",
            ),
            24,
            9,
        ),
    ]
    return dashboard(
        "spend-ai",
        "Spend / AI",
        "AI API spend: cost by model and project, tokens by type, cost per 1M tokens, the burn rate of the "
        "last minutes and the last-hour burn.",
        spend_variables(),
        panels,
    )


def exporter() -> dm.Dashboard:
    variables = [
        _datasource_var(),
        *spend_variables()[1:],
        # the exporter's families carry the source's type as `provider` (`focus` for a FOCUS file of AWS costs),
        # never the billed provider: the source panels are chosen by source, the cost panels by provider
        _query_var("source", "Source", "spend_exporter_source_up"),
    ]
    up = stat(
        "Sources up",
        "1 if the source's last refresh succeeded.",
        f"spend_exporter_source_up{{{F_SOURCE}}}",
        unit="none",
        decimals=0,
        legend="{{source}}",
        text_mode=cm.BigValueTextMode.VALUE_AND_NAME,
    ).mappings(_value_map({"0": ("down", "red"), "1": ("up", "green")}))
    cache = stat(
        "Cache",
        "Whether the cache is kept in its file at cache_path. In memory, the exporter serves on, but what it "
        "fetches is lost at the next restart (paid APIs are called again). SpendExporterCacheInMemory fires; "
        "/status shows why.",
        "spend_exporter_cache_persistent",
        unit="none",
        decimals=0,
        legend="{{instance}}",
        text_mode=cm.BigValueTextMode.AUTO,  # the instance's name shows when there are several
    ).mappings(_value_map({"0": ("in memory", "red"), "1": ("in its file", "green")}))
    for p in (up, cache):  # red when down, or in memory
        p.color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        p.thresholds(_thresholds([(None, "red"), (1, "green")]))
        p.color_mode(cm.BigValueColorMode.BACKGROUND)
    panels: list[Item] = [
        (up, 6, 5),
        (cache, 4, 5),
        (
            stat(
                "Unpriced AI tokens",
                "Tokens this month of models missing from the price table "
                "(not counted in the last-hour burn). Add them under pricing in the config.",
                f"sum(spend_exporter_unpriced_tokens{{{F_SOURCE}}}) or vector(0)",
                unit="short",
                decimals=None,
            ),
            4,
            5,
        ),
        (
            stat(
                "Series folded into __other__",
                "Series over max_series_per_source, summed into __other__.",
                'sum(spend_exporter_series_overflow{source=~"$source"})',
                unit="short",
                decimals=0,
            ),
            4,
            5,
        ),
        (table("Build", "Exporter version.", [("spend_exporter_build_info", "Up", "none")]), 6, 5),
        (row("Freshness"), 24, 1),
        (
            timeseries(
                "Age of data",
                "Time since the end of the newest billing bucket held. Billing APIs lag: "
                "a day or more is normal for the clouds, an hour for the AI usage APIs.",
                [(f"time() - spend_exporter_source_data_through_timestamp_seconds{{{F_SOURCE}}}", "{{source}}")],
                unit="s",
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Since last successful refresh",
                "SpendSourceDataStale fires past twice the interval (at least 12h).",
                [
                    (f"time() - spend_exporter_source_last_success_timestamp_seconds{{{F_SOURCE}}}", "{{source}}"),
                    (f"spend_exporter_source_interval_seconds{{{F_SOURCE}}}", "{{source}} interval"),
                ],
                unit="s",
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Refresh duration",
                "How long the last refresh of each source took.",
                [(f"spend_exporter_source_refresh_duration_seconds{{{F_SOURCE}}}", "{{source}}")],
                unit="s",
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Series exported by provider",
                "Cost series per provider: the exporter's cardinality.",
                [(f"count by (provider) (spend_cost_month_to_date_usd{{{F}}})", "{{provider}}")],
                unit="short",
            ),
            12,
            8,
        ),
        (row("Input left out"), 24, 1),
        (
            timeseries(
                "Records skipped by the last refresh",
                "Records each source's last refresh left out: an amount in a currency with no rate in "
                "currency_rates, not a finite number, or a row that could not be parsed. They are not in any "
                "figure; /status lists the reasons.",
                [(f"spend_exporter_source_records_skipped{{{F_SOURCE}}}", "{{source}}")],
                unit="short",
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Label values truncated, per hour",
                "Label values longer than 4096 bytes that were cut short (ending in ...) as records "
                "were ingested: series that differ only past the cut are summed together.",
                [
                    (
                        "sum by (source) "
                        '(increase(spend_exporter_label_values_truncated_total{source=~"$source"}[1h]))',
                        "{{source}}",
                    )
                ],
                unit="short",
            ),
            12,
            8,
        ),
        (row("Guard"), 24, 1),
        (
            timeseries(
                "Guard actions by result",
                "What the guard did with the alerts Alertmanager sent it, per rule and result: applied, "
                "dry_run (mode: dry_run, nothing changed), failed, limited (max_actions_per_day reached) or "
                "duplicate (an alert fingerprint it had already acted on). spend-exporter guard list shows each "
                "action; docs/guard.md says what each rule does.",
                [
                    (
                        "sum by (rule, action, result) (increase(spend_guard_actions_total[$__rate_interval]))",
                        "{{rule}} {{result}}",
                    )
                ],
                unit="short",
                stack=True,
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Guard actions in force",
                "1 while an action the guard applied is in force (a lowered rate limit, an inactive key). "
                "Nothing is undone when the alert resolves: a person decides, with spend-exporter guard undo ID.",
                [
                    (
                        "max by (rule, action, provider, account_id) (spend_guard_action_active)",
                        "{{rule}} {{provider}} {{account_id}}",
                    )
                ],
                unit="none",
            ),
            12,
            8,
        ),
        (row("Billing API calls"), 24, 1),
        (
            timeseries(
                "API requests",
                "Requests to the billing APIs per operation and status.",
                [
                    (
                        "sum by (source, operation, status) "
                        '(increase(spend_exporter_api_requests_total{source=~"$source"}[$__rate_interval]))',
                        "{{source}} {{operation}} {{status}}",
                    )
                ],
                unit="short",
                stack=True,
            ),
            12,
            8,
        ),
        (
            table(
                "API requests in range",
                "Requests in the selected time range per operation and status.",
                [
                    (
                        "sum by (source, operation, status) "
                        '(increase(spend_exporter_api_requests_total{source=~"$source"}[$__range]))',
                        "Requests",
                        "short",
                    )
                ],
                sort="Requests",
            ),
            12,
            8,
        ),
        (
            timeseries(
                "API cost, trailing 24h",
                "What the exporter's own paid calls cost over the last day "
                "(Cost Explorer $0.01 a request; BigQuery by bytes). SpendExporterAPICostHigh fires over $0.50.",
                [
                    (
                        'sum by (source) (increase(spend_exporter_api_cost_usd_total{source=~"$source"}[1d]))',
                        "{{source}}",
                    )
                ],
            ),
            12,
            8,
        ),
        (
            stat(
                "API cost in range",
                "What the exporter's own paid calls cost in the selected time range.",
                'sum(increase(spend_exporter_api_cost_usd_total{source=~"$source"}[$__range]))',
                decimals=2,
            ),
            12,
            8,
        ),
    ]
    return dashboard(
        "spend-exporter",
        "Spend / Exporter",
        "The exporter itself: source health, the cache, age of data, refresh duration, input left out, "
        "the guard's actions, billing API requests and their cost.",
        variables,
        panels,
    )


# Unallocated share: SpendUnallocatedHigh's threshold (prometheus/rules/spend-alerts.yml) turns the panels orange.
UNALLOCATED_STEPS: list[tuple[float | None, str]] = [(None, "green"), (0.2, "orange")]
# An empty extra label (a cost without the tag) shown as such rather than as a blank legend.
# label_replace arguments naming the series without ``label`` "(untagged)": for the Environments and Customers rows
# that come with attribution.labels.
UNTAGGED = '"{label}", "(untagged)", "{label}", ""'


def allocation() -> dm.Dashboard:
    """Who spends it (docs/allocation.md): direct and shared cost per team, the pools, the unallocated share,
    cost by environment, customers' cost and margin (the extra labels of ``attribution.labels``), and AI spend
    per API key."""
    f_team = 'team=~"$team"'
    f_key = 'provider=~"$provider", model=~"$model"'
    key_cost = f"sum by (provider, account_id, api_key_id, model) (spend_ai_key_cost_month_to_date_usd{{{f_key}}})"
    untagged = UNTAGGED.format(label="environment")
    env = f"label_replace(sum by (environment) (spend_cost_month_to_date_usd{{{F}}}), {untagged})"
    panels: list[Item] = [
        (row("Teams and shared costs"), 24, 1),
        (
            table(
                "Teams: direct and shared cost, month to date",
                "Direct: a team's cost outside every shared-cost pool. Shared: its shares of the pools "
                "(allocation.shared), split proportionally, evenly or by weights. Their sum is what the team is "
                "allocated; a pool's own line items are counted in its shares only.",
                [
                    (f"sum by (team) (spend_cost_direct_month_to_date_usd{{{f_team}}})", "Direct", USD),
                    (f"sum by (team) (spend_cost_shared_month_to_date_usd{{{f_team}}})", "Shared", USD),
                ],
                sort="Direct",
            ),
            12,
            9,
        ),
        (
            bargauge(
                "Shared-cost pools, month to date",
                "Each pool's cost this month: the sum of its teams' shares, to the cent.",
                "sum by (pool) (spend_cost_shared_month_to_date_usd)",
                "{{pool}}",
            ),
            12,
            9,
        ),
        (
            table(
                "Pool shares by team, month to date",
                "Each team's share of each pool.",
                [(f"sum by (pool, team) (spend_cost_shared_month_to_date_usd{{{f_team}}})", "Share", USD)],
                sort="Share",
            ),
            24,
            8,
        ),
        (row("Unallocated"), 24, 1),
        (
            bargauge(
                "Unallocated share",
                "The share of this month's spend that no team claims (team unallocated: untagged and no "
                "attribution rule). SpendUnallocatedHigh fires above 20% for 6 hours.",
                ":spend_cost_unallocated_share:ratio",
                "Unallocated",
                unit="percentunit",
                thresholds=UNALLOCATED_STEPS,
                max_=1,
            ),
            6,
            8,
        ),
        (
            timeseries(
                "Unallocated share over time",
                "The unallocated share of the month to date, as it moved: a jump is a new untagged account or a "
                "renamed tag key; it falls as tags and rules claim the costs. The recording rule's expression, "
                "so that a backfilled history (docs/backfill.md) shows too.",
                [
                    (
                        '(sum(spend_cost_month_to_date_usd{team="unallocated"}) or vector(0))\n'
                        "/ (sum(spend_cost_month_to_date_usd) > 0)",
                        "Unallocated share",
                    )
                ],
                unit="percentunit",
            ),
            9,
            8,
        ),
        (
            table(
                "Unallocated cost by account and service, month to date",
                "Where the unallocated spend is, most first: tag these resources or add an attribution rule. "
                "Services with nothing unallocated read 0.",
                [
                    (
                        "topk(20,\n  sum by (provider, account_id, service_name) "
                        '(spend_cost_month_to_date_usd{provider=~"$provider", team="unallocated"})\n'
                        "  or 0 * sum by (provider, account_id, service_name) "
                        '(spend_cost_month_to_date_usd{provider=~"$provider"})\n)',
                        "Month to date",
                        USD,
                    )
                ],
                sort="Month to date",
            ),
            9,
            8,
        ),
        (row("Environments"), 24, 1),
        (
            bargauge(
                "Month to date by environment",
                "Spend this month by the environment label (attribution.labels, from the env or environment "
                "tag): what staging and development cost beside production.",
                env,
                "{{environment}}",
            ),
            12,
            9,
        ),
        (
            table(
                "Cost by environment and service, month to date",
                "The 30 most expensive services of each environment this month: the staging and development "
                "ones are the candidates to stop at night and at weekends.",
                [
                    (
                        "label_replace(topk by (environment) (30, sum by (environment, provider, account_id, "
                        f"service_name, team) (spend_cost_month_to_date_usd{{{F}}})), {untagged})",
                        "Month to date",
                        USD,
                    )
                ],
                sort="Month to date",
            ),
            12,
            9,
        ),
        (row("Customers"), 24, 1),
        (
            table(
                "Customers by margin, negative first",
                "Revenue (revenue_file) against cost per customer (the customer_id label). Margin: the month's "
                "revenue less the month-end forecast cost (a month-to-date cost against a whole month's revenue "
                "would flatter every customer early in the month). A customer with cost and no revenue has a "
                "margin of minus its cost.",
                [
                    ("customer_id:spend_gross_margin_usd:revenue_minus_forecast", "Margin", USD),
                    ("customer_id:spend_gross_margin:ratio", "Margin %", "percentunit"),
                    ("customer_id:spend_customer_revenue_monthly_usd:sum", "Revenue", USD),
                    ("customer_id:spend_cost_month_to_date_usd:sum", "Cost, month to date", USD),
                    ("customer_id:spend_cost_forecast_month_end_usd:sum", "Cost, month-end forecast", USD),
                ],
                sort="Margin",
                ascending=True,
            ),
            24,
            10,
        ),
        (
            bargauge(
                "Customers by cost, month to date",
                "The 20 customers that cost most this month (costs tagged with a customer only).",
                "topk(20, customer_id:spend_cost_month_to_date_usd:sum)",
                "{{customer_id}}",
            ),
            12,
            10,
        ),
        (
            bargauge(
                "Negative margins",
                "Customers forecast to cost more this month than they pay, by the loss (month-end forecast cost "
                "less revenue), largest first.",
                "sort_desc(-(customer_id:spend_gross_margin_usd:revenue_minus_forecast < 0))",
                "{{customer_id}}",
                thresholds=[(None, "red")],
            ),
            12,
            10,
        ),
        (row("AI API keys"), 24, 1),
        (
            table(
                "AI spend by API key, month to date",
                "Usage by API key times the price, scaled so that a project's keys add up to its billed cost; "
                "the key's name from the Admin API's key list (spend_ai_key_info).",
                [
                    (
                        f"{key_cost}\n* on (provider, account_id, api_key_id) group_left (api_key_name)\n"
                        "  max by (provider, account_id, api_key_id, api_key_name) (spend_ai_key_info)\n"
                        f"or on (provider, account_id, api_key_id, model)\n{key_cost}",
                        "Month to date",
                        USD,
                    )
                ],
                sort="Month to date",
            ),
            14,
            10,
        ),
        (
            bargauge(
                "Top API keys by cost, month to date",
                "The 15 API keys that cost most this month, all models.",
                f"topk(15, sum by (provider, api_key_id) (spend_ai_key_cost_month_to_date_usd{{{f_key}}}))",
                "{{provider}} {{api_key_id}}",
            ),
            10,
            10,
        ),
    ]
    return dashboard(
        "spend-allocation",
        "Spend / Allocation",
        "Who spends it: each team's direct and shared cost, the shared-cost pools, the unallocated share, cost by "
        "environment, customers by cost and margin, and AI spend per API key.",
        spend_variables(),
        panels,
    )


DASHBOARDS = {
    "spend-overview.json": overview,
    "spend-teams.json": teams,
    "spend-ai.json": ai,
    "spend-exporter.json": exporter,
    "spend-allocation.json": allocation,
}


def render(build: Any) -> str:
    return json.dumps(build(), cls=JSONEncoder, indent=2) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if a JSON file is not what this script writes")
    args = ap.parse_args()
    stale = []
    for name, build in DASHBOARDS.items():
        path = OUT / name
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run .venv/bin/python grafana/build_dashboards.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The cardinality cap: ``max_series_per_source`` series at most per family and source.

Beyond the cap the heaviest series are kept and the rest are folded into one ``__other__``
series per provider (``spend_exporter_series_overflow`` counts them), so a source that
suddenly reports a million label sets cannot swamp Prometheus.
"""

from __future__ import annotations

from collections.abc import Callable

from exporter.forecast import BASELINE_DAYS, combined_stddev

OTHER = "__other__"

Rows = list[tuple[tuple[str, ...], dict[str, float]]]  # per series: label values, figures by family


def cost_weight(v: dict[str, float]) -> float:
    """How much a cost series matters: this month, last month, and a month at its baseline."""
    return (
        abs(v.get("spend_cost_month_to_date_usd", 0.0))
        + abs(v.get("spend_cost_previous_month_usd", 0.0))
        + abs(v.get("spend_cost_daily_baseline_usd", 0.0)) * BASELINE_DAYS
    )


def fold(
    rows: Rows,
    cap: int,
    weight: Callable[[dict[str, float]], float],
) -> tuple[Rows, int]:
    """Keep the ``cap - 1`` heaviest series and fold the rest into one ``__other__`` series per provider.

    Sums add up; the folded standard deviation is the root of the summed
    variances (the series are treated as independent).
    """
    if len(rows) <= cap:
        return rows, 0
    ranked = sorted(rows, key=lambda r: (-weight(r[1]), r[0]))
    kept = ranked[: max(cap - 1, 0)]
    folded: dict[tuple[str, ...], dict[str, float]] = {}
    for labels, vals in ranked[len(kept) :]:
        key = (labels[0], *(OTHER,) * (len(labels) - 1))  # extra labels (attribution.labels) fold too
        acc = folded.setdefault(key, {})
        for k, v in vals.items():
            if k == "spend_cost_daily_baseline_stddev_usd":
                acc[k] = combined_stddev(acc.get(k, 0.0), v)
            else:
                acc[k] = acc.get(k, 0.0) + v
    return kept + list(folded.items()), len(rows) - len(kept)

#!/usr/bin/env python3
"""Writes SYNTHETIC FinOps FOCUS files for the demo, the tests and the benchmarks.

Every figure here is made up by a seeded random generator: it is not anyone's
bill. The data covers aws, azure (in EUR), gcp, oci, openai and anthropic with
teams, AI models, token and request counts, 65 days up to yesterday (plus
hourly AI rows through the last complete hour), one anomalous day, and
current-month spend sized so that the demo budgets sit where the demo wants
them: ``ai-platform`` just past its 80% warning and ``data-platform`` over
its limit.

    python examples/generate_demo.py --out examples/data            # the demo
    python examples/generate_demo.py --out /tmp/big --series 100000  # benchmarks
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

# the exporter's price table, of the checkout this file is in (else the installed package: the compose demo)
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "exporter" / "pricing.py").is_file() and str(_CHECKOUT) not in sys.path:
    sys.path.insert(0, str(_CHECKOUT))
from exporter.pricing import PriceTable  # noqa: E402

HEADER = [
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BilledCost",
    "EffectiveCost",
    "ChargeCategory",
    "ChargeDescription",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ProviderName",
    "ServiceName",
    "SubAccountId",
    "SubAccountName",
    "Tags",
    "ConsumedQuantity",
    "ConsumedUnit",
    "x_Model",
    "x_TokenType",
]

# provider: (FOCUS ProviderName, currency, timestamp style, accounts, services)
CLOUDS = {
    "aws": (
        "AWS",
        "USD",
        "%Y-%m-%dT%H:%M:%SZ",
        [("111111111111", "prod"), ("222222222222", "staging")],
        ["Amazon Elastic Compute Cloud", "Amazon Simple Storage Service", "AWS Lambda", "Amazon RDS"],
    ),
    "azure": (
        "Microsoft",
        "EUR",
        "%Y-%m-%d %H:%M:%S",
        [("sub-0001", "Production"), ("sub-0002", "Analytics")],
        ["Virtual Machines", "Storage", "Azure Cosmos DB"],
    ),
    "gcp": (
        "Google Cloud",
        "USD",
        "%Y-%m-%dT%H:%M:%S.000Z",
        [("acme-prod", "Acme Prod"), ("acme-data", "Acme Data")],
        ["Compute Engine", "BigQuery", "Cloud Storage"],
    ),
    "oci": (
        "Oracle",
        "USD",
        "%Y-%m-%dT%H:%MZ",
        [("ocid1.tenancy.oc1..demo", "acme")],
        ["Compute", "Object Storage", "Database"],
    ),
}
TEAMS = ["search", "payments", "data", None]  # None: untagged → unallocated

# provider: (ProviderName, service, projects, models); billed at the exporter's list prices (exporter/pricing.py)
AI = {
    "openai": (
        "OpenAI",
        "chat",
        [("proj_search", "Search"), ("proj_ml", "ML Platform")],
        ["gpt-4o", "gpt-4o-mini"],
    ),
    "anthropic": (
        "Anthropic",
        "messages",
        [("wrkspc_ml", "ML Platform"), ("wrkspc_support", "Support bots")],
        ["claude-sonnet-4-5", "claude-haiku-4-5"],
    ),
}
AI_TEAM = {"proj_search": "search", "proj_ml": "ml-platform", "wrkspc_ml": "ml-platform", "wrkspc_support": None}

# Allocation (docs/allocation.md): the tagged cloud rows also carry an `env` tag (by account: the staging
# waste) and most a `customer` tag; the team `platform` runs shared infrastructure (a pool in the demo config).
ENV = {
    "111111111111": "prod",
    "222222222222": "staging",
    "sub-0001": "prod",
    "sub-0002": "dev",
    "acme-prod": "prod",
    "acme-data": "staging",
    "ocid1.tenancy.oc1..demo": "prod",
}
CUSTOMERS = ["acme-corp", "globex", "initech", "umbrella", "hooli"]
# revenue_file: each customer's monthly revenue as a multiple of its cost over the last 30 days (initech
# costs more than it pays); wayne-ent pays and has no tagged cost.
REVENUE_MULTIPLE = {"acme-corp": 2.5, "globex": 1.8, "initech": 0.6, "umbrella": 1.3, "hooli": 3.0}
REVENUE_NO_COST = {"wayne-ent": 1500.0}
# the shared platform's series: (provider, account, service, USD a day, roughly)
PLATFORM = [
    ("aws", ("111111111111", "prod"), "Amazon Elastic Kubernetes Service", 90.0),
    ("aws", ("111111111111", "prod"), "Amazon RDS", 140.0),
    ("gcp", ("acme-prod", "Acme Prod"), "Cloud SQL", 60.0),
]
REVENUE_FILE = "revenue/customers.csv"  # under --out; not *.csv of --out itself, which the FOCUS source reads

AI_BUDGET_RATIO = 0.82  # of the ai-platform budget: past the 80% warning, under the limit
DATA_BUDGET_RATIO = 1.10  # of the data-platform budget: exceeded
AI_BUDGET_USD = 5000.0
DATA_BUDGET_USD = 3000.0


@dataclass
class Row:
    values: dict[str, str]
    day: dt.date
    team: str | None
    provider: str
    usd: float  # cost in USD, for sizing budgets


def _ts(t: dt.datetime, fmt: str) -> str:
    return t.strftime(fmt)


def generate(
    out: Path,
    now: dt.datetime | None = None,
    days: int = 65,
    series: int | None = None,
    seed: int = 42,
    eur_rate: float = 1.08,
) -> dict[str, int]:
    """Write the files into ``out``; return row counts per file."""
    now = now or dt.datetime.now(dt.UTC)
    rnd = random.Random(seed)
    today = now.date()
    yesterday = today - dt.timedelta(days=1)
    first = yesterday - dt.timedelta(days=days - 1)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}

    # --- clouds: one row per day per series (the anomaly: yesterday, aws Lambda, team search)
    combos = []
    for prov, (_, _, _, accounts, services) in CLOUDS.items():
        for acct in accounts:
            for svc in services:
                for team in TEAMS:
                    combos.append((prov, acct, svc, team))
    if series:
        base = combos
        combos = []
        i = 0
        while len(combos) < series:
            prov, acct, svc, team = base[i % len(base)]
            combos.append((prov, acct, f"{svc} #{i // len(base)}" if i >= len(base) else svc, team))
            i += 1
    rows: list[Row] = []
    customer_of: dict[int, str] = {}  # id(row) → its customer tag
    for i, (prov, (acct_id, acct_name), svc, team) in enumerate(combos):
        pname, cur, fmt, _, _ = CLOUDS[prov]
        level = rnd.uniform(5, 120)
        # not drawn from rnd, so that every figure of the demo stays what it was before these tags
        customer = CUSTOMERS[i % 7] if i % 7 < len(CUSTOMERS) and team and not series else None
        for d in range(days):
            day = first + dt.timedelta(days=d)
            cost = level * rnd.uniform(0.85, 1.15) * (0.8 if day.weekday() >= 5 else 1.0)
            if day == yesterday and prov == "aws" and svc == "AWS Lambda" and team == "search" and not series:
                cost = level * 9  # the anomalous day: a misconfigured Lambda
            start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
            tags = json.dumps({"team": team}) if team else ""
            if team and not series:
                tag = {"team": team, "env": ENV[acct_id]} | ({"customer": customer} if customer else {})
                tags = json.dumps(tag)
            if team == "payments" and prov == "azure":
                # key case and spaces vary in real exports
                tags = json.dumps({" Team ": team, "env": ENV[acct_id] if not series else "prod"})
            rows.append(
                Row(
                    {
                        "BillingAccountId": acct_id,
                        "BillingAccountName": acct_name,
                        "BillingCurrency": cur,
                        "BilledCost": f"{cost:.4f}",
                        "EffectiveCost": f"{cost * 0.93:.4f}",
                        "ChargeCategory": rnd.choice(["Usage", "usage", "USAGE"]),
                        "ChargeDescription": f"{svc} usage",
                        "ChargePeriodStart": _ts(start, fmt),
                        "ChargePeriodEnd": _ts(start + dt.timedelta(days=1), fmt),
                        "ProviderName": pname,
                        "ServiceName": svc,
                        "SubAccountId": acct_id,
                        "SubAccountName": acct_name,
                        "Tags": tags or rnd.choice(["", "NULL", "{}"]),
                        "ConsumedQuantity": "NULL",
                        "ConsumedUnit": "",
                        "x_Model": "",
                        "x_TokenType": "",
                    },
                    day,
                    team,
                    prov,
                    cost * (eur_rate if cur == "EUR" else 1.0),
                )
            )
            if customer:
                customer_of[id(rows[-1])] = customer
        if not series and team == "payments" and prov == "aws":
            # a credit: negative cost
            day = first + dt.timedelta(days=days // 2)
            start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
            rows.append(
                Row(
                    {
                        **rows[-1].values,
                        "BilledCost": "-25.00",
                        "EffectiveCost": "-25.00",
                        "ChargeCategory": "Credit",
                        "ChargePeriodStart": _ts(start, fmt),
                        "ChargePeriodEnd": _ts(start + dt.timedelta(days=1), fmt),
                    },
                    day,
                    team,
                    prov,
                    -25.0,
                )
            )

    if not series:
        rows += _platform_rows(first, days, random.Random(seed + 1))

    # --- AI: daily rows, then hourly rows for yesterday and today through the last complete hour
    ai_rows: list[Row] = []
    last_hour = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)
    hourly_from = dt.datetime.combine(yesterday, dt.time(), tzinfo=dt.UTC)
    prices = PriceTable.load(at=now)
    for prov, (pname, svc, projects, models) in AI.items():
        for proj_id, proj_name in projects:
            for model in models:
                tokens_per_hour = rnd.uniform(2e5, 2e6)
                periods: list[tuple[dt.datetime, dt.timedelta]] = []
                for d in range(days - 1):
                    day = first + dt.timedelta(days=d)
                    periods.append((dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC), dt.timedelta(days=1)))
                t = hourly_from
                while t <= last_hour:
                    periods.append((t, dt.timedelta(hours=1)))
                    t += dt.timedelta(hours=1)
                for start, length in periods:
                    hours = length.total_seconds() / 3600
                    tin = int(tokens_per_hour * hours * rnd.uniform(0.8, 1.2))
                    tout = tin // 4
                    tcache = tin // 3
                    for tt, n in (("input", tin), ("output", tout), ("cache_read", tcache)):
                        cost = _list_cost(prices, prov, model, tt, n)
                        ai_rows.append(
                            Row(
                                {
                                    "BillingAccountId": f"org-{prov}",
                                    "BillingAccountName": f"{pname} organisation",
                                    "BillingCurrency": "USD",
                                    "BilledCost": f"{cost:.6f}",
                                    "EffectiveCost": f"{cost:.6f}",
                                    "ChargeCategory": "Usage",
                                    "ChargeDescription": f"{model}, {tt}",
                                    "ChargePeriodStart": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                    "ChargePeriodEnd": (start + length).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                    "ProviderName": pname,
                                    "ServiceName": svc,
                                    "SubAccountId": proj_id,
                                    "SubAccountName": proj_name,
                                    "Tags": "",
                                    "ConsumedQuantity": str(n),
                                    "ConsumedUnit": "Tokens",
                                    "x_Model": model,
                                    "x_TokenType": tt,
                                },
                                start.date(),
                                AI_TEAM[proj_id],
                                prov,
                                cost,
                            )
                        )
                    ai_rows.append(
                        Row(
                            {
                                **ai_rows[-1].values,
                                "BilledCost": "0",
                                "EffectiveCost": "0",
                                "ChargeDescription": f"{model}, requests",
                                "ConsumedQuantity": str(max(tin // 2000, 1)),
                                "ConsumedUnit": "Requests",
                                "x_TokenType": "",
                            },
                            start.date(),
                            AI_TEAM[proj_id],
                            prov,
                            0.0,
                        )
                    )

    if not series:
        month_start = today.replace(day=1)
        # size this month's spend to the demo budgets (see demo-config.yml)
        _scale_tokens(
            [r for r in ai_rows if r.day >= month_start and r.team == "ml-platform"],
            AI_BUDGET_RATIO * AI_BUDGET_USD,
            prices,
        )
        _scale(
            [r for r in rows if r.day >= month_start and r.team == "data"],
            DATA_BUDGET_RATIO * DATA_BUDGET_USD,
        )

    by_file: dict[str, list[Row]] = {}
    for r in rows + ai_rows:
        by_file.setdefault(r.provider, []).append(r)
    for prov, prov_rows in by_file.items():
        path = out / f"{prov}-focus.csv"
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=HEADER)
            w.writeheader()
            for r in prov_rows:
                w.writerow(r.values)
        os.replace(tmp, path)
        counts[path.name] = len(prov_rows)
    if not series:
        _write_revenue(out / REVENUE_FILE, [r for r in rows if id(r) in customer_of], customer_of, yesterday)
        counts[REVENUE_FILE] = len(REVENUE_MULTIPLE) + len(REVENUE_NO_COST)
    (out / "SYNTHETIC-DATA.txt").write_text(
        "Every file here is SYNTHETIC demo data written by examples/generate_demo.py. It is not a real bill.\n"
    )
    # the AI providers' files also as Parquet, as the AWS and Azure FOCUS exports write them
    for prov in AI:
        csv_path = out / f"{prov}-focus.csv"
        _to_parquet(csv_path, out / f"{prov}-focus.parquet")
        csv_path.unlink()
        counts[f"{prov}-focus.parquet"] = counts.pop(csv_path.name)
    return counts


def _platform_rows(first: dt.date, days: int, rnd: random.Random) -> list[Row]:
    """The shared platform's daily rows (team platform), from a generator of their own: the other rows'
    figures do not move."""
    out = []
    for prov, (acct_id, acct_name), svc, level in PLATFORM:
        pname, cur, fmt, _, _ = CLOUDS[prov]
        for d in range(days):
            day = first + dt.timedelta(days=d)
            cost = level * rnd.uniform(0.9, 1.1)
            start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
            values = {
                **dict.fromkeys(HEADER, ""),
                "BillingAccountId": acct_id,
                "BillingAccountName": acct_name,
                "BillingCurrency": cur,
                "BilledCost": f"{cost:.4f}",
                "EffectiveCost": f"{cost * 0.93:.4f}",
                "ChargeCategory": "Usage",
                "ChargeDescription": f"{svc} usage",
                "ChargePeriodStart": _ts(start, fmt),
                "ChargePeriodEnd": _ts(start + dt.timedelta(days=1), fmt),
                "ProviderName": pname,
                "ServiceName": svc,
                "SubAccountId": acct_id,
                "SubAccountName": acct_name,
                "Tags": json.dumps({"team": "platform", "env": ENV[acct_id]}),
                "ConsumedQuantity": "NULL",
            }
            out.append(Row(values, day, "platform", prov, cost))
    return out


def _write_revenue(path: Path, rows: list[Row], customer_of: dict[int, str], yesterday: dt.date) -> None:
    """revenue_file: each customer's monthly revenue, a multiple of its cost over the 30 days to yesterday."""
    since = yesterday - dt.timedelta(days=29)
    cost = dict.fromkeys(REVENUE_MULTIPLE, 0.0)
    for r in rows:
        if r.day >= since:
            cost[customer_of[id(r)]] += r.usd
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["customer_id", "monthly_revenue_usd"])
        for c, k in REVENUE_MULTIPLE.items():
            w.writerow([c, f"{cost[c] * k:.2f}"])
        for c, usd in REVENUE_NO_COST.items():
            w.writerow([c, f"{usd:.2f}"])
    os.replace(tmp, path)


def _scale(rows: list[Row], target: float) -> None:
    total = sum(r.usd for r in rows)
    if total <= 0:
        return
    k = target / total
    for r in rows:
        for col in ("BilledCost", "EffectiveCost"):
            r.values[col] = f"{float(r.values[col]) * k:.6f}"
        r.usd *= k


def _list_cost(prices: PriceTable, provider: str, model: str, token_type: str, n: int) -> float:
    """``n`` tokens at the list price the exporter uses: the demo's AI bill is exactly list price."""
    est = prices.estimate(provider, model, {token_type: n})
    if est.unpriced_tokens:
        raise SystemExit(f"the price table has no {token_type} price for {provider} {model}")
    return est.usd


def _scale_tokens(rows: list[Row], target: float, prices: PriceTable) -> None:
    """Size AI spend by the tokens used, so that cost stays tokens × list price (requests follow)."""
    total = sum(r.usd for r in rows)
    if total <= 0:
        return
    k = target / total
    for r in rows:
        n = round(int(r.values["ConsumedQuantity"]) * k)
        r.values["ConsumedQuantity"] = str(max(n, 1) if r.values["ConsumedUnit"] == "Requests" else n)
        if r.values["ConsumedUnit"] != "Tokens":
            continue
        r.usd = _list_cost(prices, r.provider, r.values["x_Model"], r.values["x_TokenType"], n)
        r.values["BilledCost"] = r.values["EffectiveCost"] = f"{r.usd:.6f}"


def _to_parquet(src: Path, dst: Path) -> None:
    import duckdb

    con = duckdb.connect()
    tmp = dst.with_suffix(".parquet.tmp")
    con.execute(
        "COPY (SELECT * REPLACE (CAST(BilledCost AS DOUBLE) AS BilledCost, "
        "CAST(EffectiveCost AS DOUBLE) AS EffectiveCost, "
        "CAST(ChargePeriodStart AS TIMESTAMPTZ) AS ChargePeriodStart, "
        "CAST(ChargePeriodEnd AS TIMESTAMPTZ) AS ChargePeriodEnd) "
        f"FROM read_csv('{src}', all_varchar = true, header = true)) TO '{tmp}' (FORMAT parquet)"
    )
    con.close()
    os.replace(tmp, dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="examples/data", help="directory to write into")
    ap.add_argument("--days", type=int, default=65)
    ap.add_argument("--series", type=int, default=None, help="number of cloud series (benchmarks)")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    counts = generate(Path(args.out), days=args.days, series=args.series, seed=args.seed)
    for name, n in sorted(counts.items()):
        print(f"wrote {n:>9} rows  {Path(args.out) / name}")


if __name__ == "__main__":
    main()

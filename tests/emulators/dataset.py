"""The one synthetic dataset every emulator serves.

Deterministic for a given ``today``: tests compute the sums they expect in
``/metrics`` from these rows, and the emulators render the same rows in each
provider's wire format. Amounts are ``Decimal`` with cents so that "equal to
the cent" is exact.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from decimal import Decimal


@dataclass(frozen=True)
class CloudRow:
    """One day's cost of one service, account and team tag on one cloud."""

    day: dt.date
    provider: str  # aws | azure | oci | gcp
    account_id: str
    account_name: str
    service_name: str
    team: str | None  # the team tag/label value; None when untagged
    amount: Decimal  # in ``currency``
    currency: str = "USD"
    model: str = ""  # Bedrock / Azure OpenAI / Vertex AI model where the usage names one
    extra: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    """Provider-specific detail: aws ``record_type`` and ``usage_type``; gcp ``sku`` and
    ``credit`` (a negative Decimal string); oci ``compartment``; azure ``meter``; and on every cloud
    ``tag:<key>`` for tags (labels) other than the team's (``environment`` on every row, ``customer`` on
    some: the extra labels' tests)."""


ACCOUNTS = {
    "aws": [("111111111111", "prod"), ("222222222222", "staging")],
    "azure": [
        ("00000000-0000-0000-0000-000000000001", "sub-prod"),
        ("00000000-0000-0000-0000-000000000002", "sub-eu"),
    ],
    "oci": [("ocid1.tenancy.oc1..aaaatest", "acme-tenancy")],
    "gcp": [("proj-alpha", "Alpha"), ("proj-beta", "Beta")],
}

SERVICES = {
    "aws": [
        ("Amazon Elastic Compute Cloud - Compute", "", {"usage_type": "BoxUsage:m5.large"}),
        ("Amazon Simple Storage Service", "", {"usage_type": "TimedStorage-ByteHrs"}),
        ("AWS Lambda", "", {"usage_type": "Lambda-GB-Second"}),
        ("Amazon Bedrock", "anthropic.claude-3-5-sonnet", {"usage_type": "USE1-Claude3.5Sonnet-input-tokens"}),
    ],
    "azure": [
        ("Virtual Machines", "", {"meter": "D2s v3"}),
        ("Storage", "", {"meter": "Hot LRS Data Stored"}),
        ("Azure OpenAI", "gpt-4o", {"meter": "gpt-4o-0806-Inp-glbl Tokens"}),
    ],
    "oci": [
        ("COMPUTE", "", {"compartment": "prod"}),
        ("OBJECT_STORAGE", "", {"compartment": "shared"}),
        ("DATABASE", "", {"compartment": "prod"}),
    ],
    "gcp": [
        ("Compute Engine", "", {"sku": "N1 Predefined Instance Core running in Americas"}),
        ("BigQuery", "", {"sku": "Analysis"}),
        ("Vertex AI", "gemini-1.5-pro", {"sku": "Gemini 1.5 Pro Text Input - Predictions"}),
    ],
}

TEAMS = ["search", "payments", None]


def extra_tags(service_index: int, team_index: int) -> dict[str, str]:
    """Tags beside the team's on a generated row: an environment always, a customer on some rows."""
    tags = {"tag:environment": "prod" if service_index % 2 == 0 else "staging"}
    if team_index == 0:
        tags["tag:customer"] = "acme" if service_index < 2 else "globex"
    return tags


@dataclass
class Dataset:
    today: dt.date
    cloud: list[CloudRow]

    def rows(self, provider: str) -> list[CloudRow]:
        return [r for r in self.cloud if r.provider == provider]

    def days(self) -> list[dt.date]:
        return sorted({r.day for r in self.cloud})


def build_dataset(today: dt.date, days: int = 70, seed: int = 7) -> Dataset:
    """Rows for ``days`` days up to and including ``today`` (today is partial)."""
    rnd = random.Random(seed)
    rows: list[CloudRow] = []
    start = today - dt.timedelta(days=days - 1)
    for provider, accounts in ACCOUNTS.items():
        for ai, (acct, acct_name) in enumerate(accounts):
            currency = "EUR" if provider == "azure" and ai == 1 else "USD"
            for si, (service, model, extra) in enumerate(SERVICES[provider]):
                for ti, team in enumerate(TEAMS):
                    base = 5 + 40 * rnd.random() * (si + 1) / (ti + 1)
                    for d in range(days):
                        day = start + dt.timedelta(days=d)
                        amount = base * (0.85 + 0.3 * rnd.random())
                        if day == today:
                            amount *= 0.4  # the day is not over
                        ex = dict(extra)
                        ex.update(extra_tags(si, ti))
                        if provider == "aws":
                            ex["record_type"] = "Usage"
                        if provider == "gcp" and d % 10 == 0:
                            ex["credit"] = str(-Decimal(round(amount * 0.1, 2)).quantize(Decimal("0.01")))
                        rows.append(
                            CloudRow(
                                day=day,
                                provider=provider,
                                account_id=acct,
                                account_name=acct_name,
                                service_name=service,
                                team=team,
                                amount=Decimal(str(round(amount, 2))),
                                currency=currency,
                                model=model,
                                extra=ex,
                            )
                        )
        if provider == "aws":
            # a credit every 7 days: excluded unless include_credits is set
            for d in range(0, days, 7):
                day = start + dt.timedelta(days=d)
                rows.append(
                    CloudRow(
                        day=day,
                        provider="aws",
                        account_id=accounts[0][0],
                        account_name=accounts[0][1],
                        service_name="Amazon Elastic Compute Cloud - Compute",
                        team="search",
                        amount=Decimal("-12.50"),
                        extra={"record_type": "Credit", "usage_type": "BoxUsage:m5.large"},
                    )
                )
    return Dataset(today=today, cloud=rows)

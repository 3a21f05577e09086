"""A usage schedule on a clock, served by the AI admin emulators in minute, hour and day buckets.

Each ``Stream`` (provider, account, API key, model) has a schedule of rates: from a time on, so many
tokens a minute of each type. ``Scenario.rows_between`` gives the usage rows the emulators aggregate
(``AIUsageRow``, one per stream and minute), as the usage API would show them at the scenario's clock:

- **The publication delay.** A minute's usage is not visible before its minute ends, and fills in over
  the next ``delay``: at ``now`` a minute that ended ``e`` seconds ago shows ``min(e / delay, 1)`` of
  its tokens (rounded down). Both providers' usage APIs publish minute buckets late and fill the newest
  ones in over time (docs/providers/openai.md, anthropic.md): a reader that takes the newest minutes at
  face value sees a drop that never happened.
- **Exact rates.** Rates are ``Fraction`` tokens a minute; minute ``k`` (counted from the epoch) holds
  ``floor(rate·(k+1)) − floor(rate·k)`` tokens, so any whole hour holds exactly ``60·rate`` tokens and
  a window's tokens are known exactly (``tokens``).

``runaway_schedule`` is the issue's story: a project at $10/h of gpt-4o output that jumps to $475/h at T0.
The emulators serve costs and projects from their ``AIDataset`` as before; only usage comes from here.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from tests.emulators.ai_dataset import BILLING_PRICES, GPT4O, LABS, MILLION, AIUsageRow

UTC = dt.UTC
MINUTE = dt.timedelta(minutes=1)
TOKEN_FIELDS = ("input", "output", "cache_read", "cache_write_5m", "cache_write_1h")


@dataclass(frozen=True)
class Stream:
    """One (provider, account, API key, model) and its rates: ``(from, tokens a minute by type)``, sorted."""

    provider: str
    account_id: str | None
    api_key_id: str
    model: str
    endpoint: str  # openai: completions; anthropic: messages
    schedule: tuple[tuple[dt.datetime, dict[str, Fraction]], ...]
    requests_per_minute: Fraction = Fraction(0)

    def rates_at(self, t: dt.datetime) -> dict[str, Fraction]:
        rates: dict[str, Fraction] = {}
        for since, r in self.schedule:
            if since <= t:
                rates = r
        return rates


def per_minute(model: str, usd_per_hour: Decimal | int | str, token_type: str = "output") -> dict[str, Fraction]:
    """Tokens a minute of ``token_type`` that cost ``usd_per_hour`` at the dataset's billing price."""
    price = Fraction(BILLING_PRICES[model][token_type]) / Fraction(MILLION)
    return {token_type: Fraction(Decimal(usd_per_hour)) / price / 60}


def _count(rate: Fraction, k: int) -> int:
    return math.floor(rate * (k + 1)) - math.floor(rate * k)


class Scenario:
    """Streams on a clock, with the usage API's publication delay (see the module's docstring)."""

    def __init__(
        self,
        streams: Sequence[Stream],
        clock: Callable[[], dt.datetime],
        *,
        start: dt.datetime,
        delay: dt.timedelta = dt.timedelta(minutes=5),
    ) -> None:
        """``start``: no usage before it (keeps day buckets cheap); ``delay``: how long a minute takes to fill."""
        self.streams = list(streams)
        self.clock = clock
        self.start = start.replace(second=0, microsecond=0)
        self.delay = delay

    @property
    def now(self) -> dt.datetime:
        return self.clock()

    def minute_tokens(self, stream: Stream, minute: dt.datetime) -> dict[str, int]:
        """Every token of ``stream`` in the minute starting at ``minute``, fully published."""
        k = int(minute.timestamp()) // 60
        rates = stream.rates_at(minute)
        out = {f: _count(rates.get(f, Fraction(0)), k) for f in TOKEN_FIELDS}
        out["requests"] = _count(stream.requests_per_minute, k)
        return out

    def visible(self, minute: dt.datetime, now: dt.datetime) -> Fraction:
        """Share of the minute starting at ``minute`` that the usage API shows at ``now``."""
        ended = (now - (minute + MINUTE)).total_seconds()
        if ended <= 0:
            return Fraction(0)
        if not self.delay:
            return Fraction(1)
        return min(Fraction(int(ended * 1000), int(self.delay.total_seconds() * 1000)), Fraction(1))

    def rows_between(self, provider: str, endpoint: str, start: dt.datetime, end: dt.datetime) -> list[AIUsageRow]:
        """Usage rows, one per stream and minute in [start, end), as visible at the clock's time."""
        now = self.now
        m = max(start, self.start).replace(second=0, microsecond=0)
        if m < start:
            m += MINUTE
        stop = min(end, now)
        out: list[AIUsageRow] = []
        streams = [s for s in self.streams if s.provider == provider and s.endpoint == endpoint]
        while m < stop:
            share = self.visible(m, now)
            if share:
                for s in streams:
                    full = self.minute_tokens(s, m)
                    n = {f: math.floor(v * share) for f, v in full.items()}
                    if not any(n.values()):
                        continue
                    out.append(
                        AIUsageRow(
                            hour=m,  # the row's minute: the emulators only sum rows inside a bucket
                            provider=s.provider,
                            account_id=s.account_id,
                            api_key_id=s.api_key_id,
                            model=s.model,
                            endpoint=s.endpoint,
                            input=n["input"],
                            output=n["output"],
                            cache_read=n["cache_read"],
                            cache_write_5m=n["cache_write_5m"],
                            cache_write_1h=n["cache_write_1h"],
                            requests=n["requests"],
                        )
                    )
            m += MINUTE
        return out

    def cost(self, start: dt.datetime, end: dt.datetime, *, account_id: str | None = None) -> Decimal:
        """USD billed for every token in the minutes [start, end), fully published, at the billing prices."""
        total = Decimal(0)
        m = start
        while m < end:
            for s in self.streams:
                if account_id is not None and s.account_id != account_id:
                    continue
                if m < self.start:
                    continue
                for f, n in self.minute_tokens(s, m).items():
                    if n and f != "requests":
                        total += Decimal(n) * BILLING_PRICES[s.model][f] / MILLION
            m += MINUTE
        return total


def runaway_schedule(
    t0: dt.datetime,
    *,
    account_id: str = LABS,
    api_key_id: str = "key_labs_D4",
    model: str = GPT4O,
    before: str = "10",
    after: str = "475",
) -> Stream:
    """The seed's loop: ``account_id`` burns $``before``/h of ``model`` output, then $``after``/h from ``t0``."""
    return Stream(
        "openai",
        account_id,
        api_key_id,
        model,
        "completions",
        ((dt.datetime(2000, 1, 1, tzinfo=UTC), per_minute(model, before)), (t0, per_minute(model, after))),
        requests_per_minute=Fraction(6),
    )

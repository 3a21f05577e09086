"""The fault matrix: every provider's emulator × every fault, through the real engine and the real SDKs.

For each (provider, fault), on a fake clock and without sleeping:

1. a first refresh succeeds and ``/metrics`` shows the dataset's month-to-date, to the cent;
2. the fault is switched on and the scheduler's next due refresh fails: ``/metrics`` keeps the
   last good figures, ``spend_exporter_source_up`` is 0 and ``/status`` names the problem, with
   no credential canary anywhere (exposition, status, logs);
3. the scheduler backs off: 30 s after the first failure, 60 s after the second (``BACKOFF_BASE``
   doubled), sooner than the 6 h interval and not before it is due;
4. the emulator heals and the next due refresh, run by the scheduler, succeeds by itself;
5. a failure on page 3 of 5 publishes nothing and leaves the store as it was.

Every refresh re-fetches the whole window (``restatement_days: 60``) so that each one reads
the same five pages; jitter is 0 so that the schedule is exact.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import random
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from exporter.app import App
from exporter.cli import assemble
from exporter.config import parse_config
from exporter.scheduler import Scheduler
from exporter.status import status_report
from exporter.timing import BACKOFF_BASE
from tests.emulators.ai_dataset import AIDataset, build_ai_dataset
from tests.emulators.anthropic_admin import AnthropicAdminEmulator
from tests.emulators.athena import AthenaEmulator, has_page_token
from tests.emulators.aws_ce import AwsCostExplorerEmulator
from tests.emulators.azure_cost import AzureCostEmulator
from tests.emulators.bigquery import BigQueryEmulator
from tests.emulators.dataset import CloudRow, Dataset, build_dataset
from tests.emulators.oci_usage import OciUsageEmulator
from tests.emulators.openai_admin import OpenAIAdminEmulator
from tests.emulators.server import Emulator, Fault, Request
from tests.helpers import CENT, month_to_date, series, use_az_stub, use_static_aws_credentials, write_oci_key


@functools.lru_cache(maxsize=8)
def mtd(text: str, provider: str) -> dict[tuple[str, str, str, str], float]:
    """``month_to_date`` of an exposition, parsed once: each case reads the same few texts many times."""
    return month_to_date(text, provider)


def source_up(text: str, source: str, family: str = "spend_exporter_source_up") -> float:
    """``spend_exporter_source_*`` of one source, read without parsing the whole exposition again."""
    prefix = family + "{"
    (line,) = [ln for ln in text.splitlines() if ln.startswith(prefix) and f'source="{source}"' in ln]
    return float(line.rsplit(" ", 1)[1])


NOW = dt.datetime(2026, 11, 5, 12, 0, tzinfo=dt.UTC)  # early in the month: a short window keeps 76 cases fast
TODAY = NOW.date()
MONTH_START = TODAY.replace(day=1)
WINDOW_DAYS = (TODAY - dt.date(2026, 10, 1)).days + 1  # every refresh fetches 1 October (previous month) to today
INTERVAL = 6 * 3600.0
TIMEOUT = 20.0  # the refresh timeout, except in the timeout case
# the timeout case: the emulator answers 0.5 s after it. A good refresh takes 0.2-0.5 s alone, but its first one
# builds the SDK's clients, and beside another pytest worker that took 1.2 s once (aws, 2026-12-07): 2.5 s of room
SHORT_TIMEOUT = 2.5
EUR_RATE = Decimal("1.08")
PAGES = 5
ONE_DAY = dt.timedelta(days=1)
CANARY = "canary-7f3a9c"  # every credential carries this prefix, and nothing else may

Key = tuple[str, ...]


@pytest.fixture(scope="module")
def cloud() -> Dataset:
    return build_dataset(TODAY)


@pytest.fixture(scope="module")
def ai() -> AIDataset:
    return build_ai_dataset(NOW)


@dataclass
class OciKey:
    config_file: Path
    public_pem: bytes
    secrets: list[str]


@pytest.fixture(scope="module")
def oci_key(tmp_path_factory: pytest.TempPathFactory) -> OciKey:
    """A throwaway API key, encrypted with a canary pass phrase."""
    phrase = f"{CANARY}-oci-pass-phrase"
    config, pem, public = write_oci_key(tmp_path_factory.mktemp("oci"), "ocid1.tenancy.oc1..aaaatest", phrase)
    body = pem.decode().splitlines()[4]  # a line of the encrypted key itself
    return OciKey(config, public, [phrase, body])


def page_size(items: int) -> int:
    """The page size that spreads ``items`` over ``PAGES`` pages."""
    size = -(-items // PAGES)
    assert size * (PAGES - 1) < items <= size * PAGES
    return size


# -- one rig per provider: its emulator, credentials, source config and expected figures --------------


class Rig:
    """Sets up one provider: ``start`` returns the running emulator; ``source`` is its config."""

    name: str
    provider: str
    secrets: list[str]
    emu: Emulator

    def make_emulator(self) -> Emulator:
        raise NotImplementedError

    def reset(self) -> None:
        """Back to the emulator's defaults after another test used it."""

    def source(self) -> dict[str, Any]:
        raise NotImplementedError

    def expected(self) -> dict[Key, Decimal]:
        """Month-to-date from the dataset, keyed as ``observed`` keys the exposition."""
        raise NotImplementedError

    def observed(self, text: str) -> dict[Key, float]:
        return dict(mtd(text, self.provider))

    @staticmethod
    def has_page_token(req: Request) -> bool:
        """The request asks for a page after the first."""
        raise NotImplementedError

    def throttle(self, variant: str) -> None:
        """Switch the emulator to another throttling form (``variant`` of ``throttle:<variant>``)."""
        raise AssertionError(f"{self.name} has no throttling variant {variant!r}")


def _cloud_mtd(rows: Any, rate: Callable[[str], Decimal] = lambda c: Decimal(1)) -> dict[Key, Decimal]:
    out: dict[Key, Decimal] = defaultdict(Decimal)
    for r in rows:
        if MONTH_START <= r.day <= TODAY:
            out[(r.account_id, r.service_name, r.team or "unallocated", r.model)] += r.amount * rate(r.currency)
    return dict(out)


class AwsRig(Rig):
    name = provider = "aws"
    account = "111111111111"

    def __init__(self, cloud: Dataset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self.cloud = cloud
        secret = f"{CANARY}-aws-secret-access-key"
        token = f"{CANARY}-aws-session-token"
        use_static_aws_credentials(monkeypatch, tmp_path, "AKIATESTFAULTMATRIX1", secret, region="us-east-1")
        monkeypatch.setenv("AWS_SESSION_TOKEN", token)
        self.secrets = [secret, token]

    def make_emulator(self) -> Emulator:
        # the main query: a group per day, service and team (4 × 3)
        return AwsCostExplorerEmulator(self.cloud, page_size=page_size(WINDOW_DAYS * 12), caller_account=self.account)

    def reset(self) -> None:
        assert isinstance(self.emu, AwsCostExplorerEmulator)
        self.emu.throttle_error = AwsCostExplorerEmulator.throttle_error

    def source(self) -> dict[str, Any]:
        return {
            "type": "aws",
            "endpoint_url": self.emu.url,
            "account_id": self.account,
            "forecast": False,
            "throttle_retries": 2,
            "throttle_backoff": "10ms",
            "throttle_max_wait": "50ms",
        }

    def expected(self) -> dict[Key, Decimal]:
        out: dict[Key, Decimal] = defaultdict(Decimal)
        for r in self.cloud.rows("aws"):
            if r.extra.get("record_type") == "Usage" and MONTH_START <= r.day <= TODAY:
                out[(self.account, r.service_name, r.team or "unallocated", r.model)] += r.amount
        return dict(out)

    @staticmethod
    def has_page_token(req: Request) -> bool:
        return b'"NextPageToken"' in req.body

    def throttle(self, variant: str) -> None:
        assert isinstance(self.emu, AwsCostExplorerEmulator)
        self.emu.throttle_error = variant


class AzureRig(Rig):
    name = provider = "azure"

    def __init__(self, cloud: Dataset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self.cloud = cloud
        self.token = f"{CANARY}-azure-arm-access-token"
        self.secrets = [self.token]
        use_az_stub(monkeypatch, tmp_path, self.token)

    def make_emulator(self) -> Emulator:
        # per subscription: a row per day, service and team (3 × 3)
        return AzureCostEmulator(self.cloud, token=self.token, page_size=page_size(WINDOW_DAYS * 9))

    def source(self) -> dict[str, Any]:
        return {
            "type": "azure",
            "base_url": self.emu.url,
            "credential": "cli",
            "scopes": sorted({f"/subscriptions/{r.account_id}" for r in self.cloud.rows("azure")}),
            "forecast": False,
            "openai_models": False,
            "throttle_retries": 2,
            "throttle_backoff": "10ms",
            "throttle_max_wait": "1s",
        }

    def expected(self) -> dict[Key, Decimal]:
        # without the Azure OpenAI breakdown the model label stays empty
        out: dict[Key, Decimal] = defaultdict(Decimal)
        for (acct, svc, team, _), v in _cloud_mtd(
            self.cloud.rows("azure"), lambda c: EUR_RATE if c == "EUR" else Decimal(1)
        ).items():
            out[(acct, svc, team, "")] += v
        return dict(out)

    @staticmethod
    def has_page_token(req: Request) -> bool:
        return bool(req.q("$skiptoken"))


class OciRig(Rig):
    name = provider = "oci"

    def __init__(self, cloud: Dataset, key: OciKey) -> None:
        self.cloud = cloud
        self.key = key
        self.secrets = key.secrets

    def make_emulator(self) -> Emulator:
        # an item per day, service and team (3 × 3)
        return OciUsageEmulator(self.cloud, page_size=page_size(WINDOW_DAYS * 9), public_key_pem=self.key.public_pem)

    def source(self) -> dict[str, Any]:
        return {
            "type": "oci",
            "tenancy_id": "ocid1.tenancy.oc1..aaaatest",
            "config_file": str(self.key.config_file),
            "team_tag": {"namespace": "Ops", "key": "team"},
            "service_endpoint": self.emu.url,
            "retry_max_attempts": 2,
            "retry_base_delay": "5ms",
            "retry_max_delay": "20ms",
        }

    def expected(self) -> dict[Key, Decimal]:
        return _cloud_mtd(self.cloud.rows("oci"))

    @staticmethod
    def has_page_token(req: Request) -> bool:
        return bool(req.q("page"))


class GcpRig(Rig):
    name = "gcp"
    provider = "gcp"
    secrets: list[str] = []  # anonymous credentials: BigQuery's emulator takes no secret

    def __init__(self, cloud: Dataset) -> None:
        self.cloud = cloud

    def make_emulator(self) -> Emulator:
        # a row per day, project, service and team (2 × 3 × 3)
        return BigQueryEmulator(self.cloud, now=NOW, page_size=page_size(WINDOW_DAYS * 18))

    def reset(self) -> None:
        assert isinstance(self.emu, BigQueryEmulator)
        self.emu.throttle_status = 403
        self.emu.jobs.clear()

    def source(self) -> dict[str, Any]:
        assert isinstance(self.emu, BigQueryEmulator)
        return {
            "type": "gcp_bigquery",
            "table": self.emu.table,
            "api_endpoint": self.emu.url,
            "credentials": "anonymous",
            "retry_deadline": "200ms",
            "retry_base_delay": "10ms",
            "retry_max_delay": "50ms",
        }

    def expected(self) -> dict[Key, Decimal]:
        assert isinstance(self.emu, BigQueryEmulator)
        out: dict[Key, Decimal] = defaultdict(Decimal)
        for (_day, project, service, team, model), amount in self.emu.expected(MONTH_START, TODAY).items():
            out[(project, service, team or "unallocated", model)] += amount
        return dict(out)

    @staticmethod
    def has_page_token(req: Request) -> bool:
        return bool(req.q("pageToken"))

    def throttle(self, variant: str) -> None:
        assert isinstance(self.emu, BigQueryEmulator)
        self.emu.throttle_status = int(variant)


# FOCUS ProviderName of the clouds in the export: two providers, USD and EUR, models and untagged rows, and about as
# many rows as the largest other emulator serves (~1,000), so that a good refresh stays well under the 1 s timeout
FOCUS_PROVIDER_NAMES = {"azure": "Microsoft", "oci": "Oracle"}
_BOUND = re.compile(r"chargeperiodstart (>=|<) TIMESTAMP '([0-9: -]+)'")


class AthenaRig(Rig):
    """``focus`` with ``engine: athena``: boto3's Athena client → ``AthenaEmulator``. The table is the
    dataset's Azure and OCI rows as one FOCUS export; the emulator answers each query with its aggregation over
    the days the query's ``chargeperiodstart`` bounds name (it runs no SQL)."""

    name = "focus_athena"
    provider = "focus"
    access_key = "AKIATESTFAULTATHENA1"

    def __init__(self, cloud: Dataset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self.cloud = cloud
        secret = f"{CANARY}-athena-secret-access-key"
        token = f"{CANARY}-athena-session-token"
        use_static_aws_credentials(monkeypatch, tmp_path, self.access_key, secret, region="us-east-1")
        monkeypatch.setenv("AWS_SESSION_TOKEN", token)
        self.secrets = [secret, token]

    def export(self) -> list[CloudRow]:
        return [r for r in self.cloud.cloud if r.provider in FOCUS_PROVIDER_NAMES]

    def rows(self, lo: dt.date, hi: dt.date) -> list[tuple[str | None, ...]]:
        """The query's result rows for the days in [lo, hi): ``build_query``'s GROUP BY over the dataset."""
        amounts: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
        names: dict[tuple[Any, ...], str] = {}
        for r in self.export():
            if lo <= r.day < hi:
                key = (r.day, FOCUS_PROVIDER_NAMES[r.provider], r.account_id, r.service_name, r.team, r.currency)
                amounts[key + (r.model,)] += r.amount
                names[key + (r.model,)] = r.account_name
        # columns as in tests.emulators.athena.COLUMNS; unit, token type, hour and quantity are NULL (no usage rows)
        return [
            (str(day), *key, None, None, None, str(amount), None, names[(day, *key)], f"{day + ONE_DAY} 00:00:00.000")
            for (day, *key), amount in amounts.items()
        ]

    def results(self, query: str) -> list[tuple[str | None, ...]]:
        bounds = {op: dt.date.fromisoformat(ts[:10]) for op, ts in _BOUND.findall(query)}
        assert set(bounds) == {">=", "<"}, "the query must bound chargeperiodstart on both sides"
        return self.rows(bounds[">="], bounds["<"])

    def make_emulator(self) -> Emulator:
        rows = len(self.rows(dt.date(2026, 10, 1), TODAY + dt.timedelta(days=1))) + 1  # the header is a row
        return AthenaEmulator(page_size=page_size(rows), results=self.results, access_key_id=self.access_key)

    def reset(self) -> None:
        assert isinstance(self.emu, AthenaEmulator)
        self.emu.reset()  # forget the executions of earlier cases
        self.emu.throttle_error = AthenaEmulator.throttle_error

    def source(self) -> dict[str, Any]:
        return {
            "type": "focus",
            "engine": "athena",
            "database": "cur",
            "table": "focus_export",
            "output_location": "s3://results-bucket/athena/",
            "endpoint_url": self.emu.url,
            "model_column": "x_model",
            "poll_interval": "1ms",
            "throttle_retries": 2,
            "throttle_backoff": "10ms",
            "throttle_max_wait": "50ms",
        }

    def expected(self) -> dict[Key, Decimal]:
        out: dict[Key, Decimal] = defaultdict(Decimal)
        for r in self.export():
            if MONTH_START <= r.day <= TODAY:
                rate = EUR_RATE if r.currency == "EUR" else Decimal(1)
                out[(r.provider, r.account_id, r.service_name, r.team or "unallocated", r.model)] += r.amount * rate
        return dict(out)

    def observed(self, text: str) -> dict[Key, float]:
        return dict(_all_mtd(text))

    has_page_token = staticmethod(has_page_token)

    def throttle(self, variant: str) -> None:
        assert isinstance(self.emu, AthenaEmulator)
        self.emu.throttle_error = variant


@functools.lru_cache(maxsize=8)
def _all_mtd(text: str) -> dict[Key, float]:
    """``spend_cost_month_to_date_usd`` of every provider: a FOCUS export holds several."""
    out = {}
    for labels, v in series(text, "spend_cost_month_to_date_usd").items():
        d = dict(labels)
        out[(d["provider"], d["account_id"], d["service_name"], d["team"], d["model"])] = v
    return out


class AdminRig(Rig):
    """OpenAI and Anthropic: an admin key in the environment; compared per account (project / workspace)."""

    env: str
    emulator: type[OpenAIAdminEmulator] | type[AnthropicAdminEmulator]

    def __init__(self, ai: AIDataset, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ai = ai
        self.key = f"sk-admin-{CANARY}-{self.name}-admin-key"
        self.secrets = [self.key]
        monkeypatch.setenv(self.env, self.key)
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)

    def make_emulator(self) -> Emulator:
        # the cost report: a bucket per day
        return self.emulator(self.ai, self.key, page_size_cap=page_size(WINDOW_DAYS))

    def source(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "admin_key_env": self.env,
            "base_url": self.emu.url + ("/v1" if self.name == "openai" else ""),
            "request_timeout": "5s",
            "max_retries": 2,
        }

    def expected(self) -> dict[Key, Decimal]:
        accounts = {c.account_id or "default" for c in self.ai.costs(self.name)}
        return {(a,): self.ai.cost_sum(self.name, start=MONTH_START, end=TODAY, account_id=a) for a in accounts}

    def observed(self, text: str) -> dict[Key, float]:
        out: dict[Key, float] = defaultdict(float)
        for (acct, _, _, _), v in mtd(text, self.provider).items():
            out[(acct,)] += v
        return dict(out)

    @staticmethod
    def has_page_token(req: Request) -> bool:
        return bool(req.q("page"))


class OpenAIRig(AdminRig):
    name = provider = "openai"
    env = "OPENAI_ADMIN_KEY_FAULTS"
    emulator = OpenAIAdminEmulator


class AnthropicRig(AdminRig):
    name = provider = "anthropic"
    env = "ANTHROPIC_ADMIN_KEY_FAULTS"
    emulator = AnthropicAdminEmulator


# -- the faults ---------------------------------------------------------------------------------------

# What /status must say for each fault: the cause, in words a user can act on.
NAMES_THE_PROBLEM = {
    "500": r"\b500\b",
    "503": r"\b503\b",
    "reset": r"(?i)reset|closed|aborted|disconnected|connection",
    "timeout": r"(?i)timed? ?out",
    "throttle": r"(?i)throttl|rate limit|too many requests|\b429\b",
    "malformed": r"(?i)malformed|json|decode|parse",
    "wrong_shape": r"(?i)malformed|unexpected|shape|missing|invalid",
    "401": r"(?i)\b401\b|unauthori[sz]ed|authentication",
    "403": r"(?i)\b403\b|forbidden|permission|denied",
    "page3": r"\b500\b",
}

FAULTS = ["500", "503", "reset", "timeout", "throttle", "malformed", "wrong_shape", "401", "403", "page3"]
# besides each emulator's default form
THROTTLE_VARIANTS = {"aws": ["ThrottlingException"], "gcp": ["429"], "focus_athena": ["ThrottlingException"]}
PROVIDERS = ["aws", "azure", "oci", "gcp", "openai", "anthropic", "focus_athena"]
CASES = [(p, f) for p in PROVIDERS for f in FAULTS] + [
    (p, f"throttle:{v}") for p, vs in THROTTLE_VARIANTS.items() for v in vs
]


def make_fault(kind: str, rig: Rig) -> Fault:
    """The fault, on for every request until cleared (page3: every page after the second)."""
    if kind == "page3":
        return Fault("500", times=-1, after=1, when=rig.has_page_token)
    if kind == "timeout":
        return Fault("timeout", times=-1, delay=SHORT_TIMEOUT + 0.5)
    if kind.startswith("throttle"):
        _, _, variant = kind.partition(":")
        if variant:
            rig.throttle(variant)
        return Fault("throttle", times=-1, retry_after=0.05)
    return Fault(kind, times=-1)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Emulator]]:
    """One emulator per provider for the whole module (each test resets it): starting and stopping
    a server for each of the 62 cases would cost more than the cases themselves."""
    running: dict[str, Emulator] = {}
    yield running
    for emu in running.values():
        emu.stop()


@pytest.fixture
def rig(
    request: pytest.FixtureRequest,
    servers: dict[str, Emulator],
    cloud: Dataset,
    ai: AIDataset,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[Rig]:
    name = request.param
    r: Rig
    if name == "aws":
        r = AwsRig(cloud, monkeypatch, tmp_path)
    elif name == "azure":
        r = AzureRig(cloud, monkeypatch, tmp_path)
    elif name == "oci":
        r = OciRig(cloud, request.getfixturevalue("oci_key"))
    elif name == "gcp":
        r = GcpRig(cloud)
    elif name == "openai":
        r = OpenAIRig(ai, monkeypatch)
    elif name == "focus_athena":
        r = AthenaRig(cloud, monkeypatch, tmp_path)
    else:
        r = AnthropicRig(ai, monkeypatch)
    if name not in servers:
        servers[name] = r.make_emulator().start()
    r.emu = servers[name]
    r.emu.clear_faults()
    r.emu.requests.clear()
    r.reset()
    try:
        yield r
    finally:
        r.emu.clear_faults()


class Clock:
    def __init__(self, t: dt.datetime) -> None:
        self.t = t

    def __call__(self) -> dt.datetime:
        return self.t

    def set_ts(self, ts: float) -> None:
        self.t = dt.datetime.fromtimestamp(ts, dt.UTC)


def pages_of_first_query(requests: list[Request], has_token: Callable[[Request], bool]) -> int:
    """Pages read by the first paginated query: its first request and the page requests right after it."""
    for i, r in enumerate(requests):
        if has_token(r):
            n = 1
            while i < len(requests) and has_token(requests[i]):
                n += 1
                i += 1
            return n
    return 1


def store_rows(app: App, source: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: sorted(app.store.query(f"SELECT * FROM {table} WHERE source = ?", (source,)), key=repr)
        for table in ("cost", "usage", "hourly", "accounts", "forecasts")
    }


def assert_figures(rig: Rig, text: str) -> None:
    want = rig.expected()
    got = rig.observed(text)
    assert want, "the dataset must have spend this month"
    assert set(got) == set(want)
    wrong = {k: (got[k], want[k]) for k in want if Decimal(repr(got[k])).quantize(CENT) != want[k].quantize(CENT)}
    assert not wrong, f"{len(wrong)} figures differ from the dataset, e.g. {next(iter(wrong.items()))}"


def assert_no_secret(rig: Rig, *texts: str) -> None:
    for text in texts:
        assert CANARY not in text, f"a credential canary leaked: ...{text[max(text.find(CANARY) - 80, 0) :][:200]}"
    for s in rig.secrets:
        assert all(s not in t for t in texts)


def make_app(rig: Rig, tmp_path: Path, clock: Clock, timeout: float = TIMEOUT) -> tuple[App, Scheduler]:
    src = {
        "name": rig.name,
        "interval": "6h",
        "jitter": 0,
        "timeout": f"{timeout:g}s",
        "restatement_days": 60,
        **rig.source(),
    }
    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "currency_rates": {"EUR": float(EUR_RATE)},
            "sources": [src],
        },
        env={},
    )
    return assemble(cfg, now=clock, rng=random.Random(0))


@pytest.mark.parametrize(("rig", "kind"), [pytest.param(p, f, id=f"{p}-{f}") for p, f in CASES], indirect=["rig"])
def test_fault(rig: Rig, kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="exporter")
    clock = Clock(NOW)
    app, scheduler = make_app(rig, tmp_path, clock, SHORT_TIMEOUT if kind == "timeout" else TIMEOUT)
    try:
        # 1. a good refresh: the dataset's figures, read from five pages
        first = app.refresh(rig.name)
        assert first.ok, first.error
        good = app.exposition()
        assert_figures(rig, good)
        assert source_up(good, rig.name) == 1
        assert pages_of_first_query(rig.emu.requests, rig.has_page_token) == PAGES
        good_rows = store_rows(app, rig.name)
        assert good_rows["cost"]
        state = app.store.get_state(rig.name)
        assert state.next_refresh == NOW.timestamp() + INTERVAL

        # 2. the fault; the refresh the scheduler runs when due fails
        rig.emu.inject(make_fault(kind, rig))
        clock.set_ts(state.next_refresh)
        assert scheduler.run_pending() == [rig.name]
        text = app.exposition()
        assert rig.observed(text) == rig.observed(good), "the last good figures must stay"
        assert source_up(text, rig.name) == 0
        success = "spend_exporter_source_last_success_timestamp_seconds"
        assert source_up(text, rig.name, success) == source_up(good, rig.name, success) == NOW.timestamp()
        assert store_rows(app, rig.name) == good_rows, "the store must hold the last good data only"
        status = status_report(app)
        (st,) = status["sources"]
        assert st["up"] is False
        assert st["consecutive_failures"] == 1
        error = st["last_error"]
        assert error and re.search(NAMES_THE_PROBLEM[kind.partition(":")[0]], error), error
        assert "None" not in error, error
        assert f"source {rig.name} refresh failed (1 in a row), keeping the last good data" in caplog.text

        # 3. backoff: 30 s after the first failure, 60 s after the second; nothing runs before it is due
        state = app.store.get_state(rig.name)
        first_wait = state.next_refresh - clock().timestamp()
        clock.set_ts(state.next_refresh - 1)
        assert scheduler.run_pending() == [], "refreshed before the backoff ran out"
        clock.set_ts(state.next_refresh)
        assert scheduler.run_pending() == [rig.name]
        state = app.store.get_state(rig.name)
        assert state.consecutive_failures == 2
        second_wait = state.next_refresh - clock().timestamp()
        assert (first_wait, second_wait) == (BACKOFF_BASE, 2 * BACKOFF_BASE)
        assert second_wait < INTERVAL
        text = app.exposition()
        assert rig.observed(text) == rig.observed(good)
        assert store_rows(app, rig.name) == good_rows

        status_text = json.dumps(status_report(app))
        assert_no_secret(rig, text, status_text, caplog.text, error)

        # 4. the emulator heals; the scheduler's next due refresh succeeds by itself
        rig.emu.clear_faults()
        clock.set_ts(state.next_refresh - 1)
        assert scheduler.run_pending() == []
        clock.set_ts(state.next_refresh)
        assert scheduler.run_pending() == [rig.name]
        healed = app.exposition()
        assert source_up(healed, rig.name) == 1
        assert_figures(rig, healed)
        (st,) = status_report(app)["sources"]
        assert st["up"] is True and st["last_error"] is None and st["consecutive_failures"] == 0
        assert app.store.get_state(rig.name).next_refresh == clock().timestamp() + INTERVAL
        assert_no_secret(rig, healed, json.dumps(status_report(app)), caplog.text)
    finally:
        # a refresh abandoned at its timeout ends at its SDK's own timeout: wait for it, so that it
        # neither writes to a closed store nor sends requests into the next test
        for t in threading.enumerate():
            if t.name == f"fetch-{rig.name}":
                t.join(10)
        app.close()


@pytest.mark.parametrize("rig", ["azure", "openai", "anthropic"], indirect=True)
def test_a_retry_after_longer_than_the_backoff_is_honoured(rig: Rig, tmp_path: Path) -> None:
    """Throttled with a hint longer than a refresh may wait: the refresh fails at once, and the next
    try is the hint (120 s) rather than the 30 s / 60 s backoff, until the backoff outgrows it (240 s)."""
    clock = Clock(NOW)
    app, scheduler = make_app(rig, tmp_path, clock)
    try:
        assert app.refresh(rig.name).ok
        good = app.exposition()
        rig.emu.requests.clear()
        rig.emu.inject(Fault("throttle", times=-1, retry_after=120))
        waits = []
        for failures in (1, 2, 3, 4):
            clock.set_ts(app.store.get_state(rig.name).next_refresh)
            assert scheduler.run_pending() == [rig.name]
            state = app.store.get_state(rig.name)
            assert state.consecutive_failures == failures
            waits.append(state.next_refresh - clock().timestamp())
        assert waits == [120.0, 120.0, 120.0, 8 * BACKOFF_BASE]
        assert len(rig.emu.requests) == 4, "a retry-after this long is left to the scheduler, not waited out"
        assert rig.observed(app.exposition()) == rig.observed(good)
        rig.emu.clear_faults()
        clock.set_ts(app.store.get_state(rig.name).next_refresh)
        assert scheduler.run_pending() == [rig.name]
        assert source_up(app.exposition(), rig.name) == 1
    finally:
        app.close()

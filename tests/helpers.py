"""Pieces shared by several test modules: reading an exposition, test credentials, call recording."""

from __future__ import annotations

import json
import logging
import stat
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import redacted
from exporter.model import FetchResult, FetchWindow
from exporter.providers.base import ProviderContext
from exporter.web import Server, serve

CENT = Decimal("0.01")

Labels = tuple[tuple[str, str], ...]


def series(text: str, name: str) -> dict[Labels, float]:
    """The samples called ``name`` in a text exposition: sorted (label, value) pairs → value."""
    return {
        tuple(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name
    }


def family_samples(text: str, family: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of the metric family ``family``, in exposition order, as (labels, value)."""
    return [
        (dict(s.labels), s.value)
        for fam in text_string_to_metric_families(text)
        if fam.name == family
        for s in fam.samples
    ]


def month_to_date(text: str, provider: str) -> dict[tuple[str, str, str, str], float]:
    """``spend_cost_month_to_date_usd`` of one provider: (account, service, team, model) → value."""
    got = {}
    for labels, v in series(text, "spend_cost_month_to_date_usd").items():
        d = dict(labels)
        if d["provider"] == provider:
            got[(d["account_id"], d["service_name"], d["team"], d["model"])] = v
    return got


def assert_to_the_cent(got: dict[Any, Decimal], want: dict[Any, Decimal]) -> None:
    """The same keys, and every figure equal once rounded to the cent."""
    assert set(got) == set(want)
    wrong = {k: (got[k], want[k]) for k in want if got[k].quantize(CENT) != want[k].quantize(CENT)}
    assert not wrong, f"{len(wrong)} figures differ, e.g. {next(iter(wrong.items()))}"


def use_static_aws_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, access_key: str, secret_key: str, region: str | None = None
) -> None:
    """Static test credentials only: no profile, no shared files, no instance metadata."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    if region is not None:
        monkeypatch.setenv("AWS_DEFAULT_REGION", region)


class Calls:
    """Records what a provider reports through ``ProviderContext(on_call=...)``: (operation, status, cost)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []

    def __call__(self, op: str, status: str, cost: float) -> None:
        self.calls.append((op, status, cost))

    on_call = __call__

    def ops(self) -> list[tuple[str, str]]:
        return [(op, status) for op, status, _ in self.calls]

    def op_counts(self) -> Counter[str]:
        return Counter(op for op, _, _ in self.calls)

    @property
    def spent(self) -> float:
        return sum(c for _, _, c in self.calls)


class FetchHarness(Calls):
    """The provider under test, built afresh for each ``fetch`` (then closed), its calls recorded in ``calls``."""

    name: str  # the source name the provider reports its calls under
    window: FetchWindow  # what ``fetch()`` asks for unless told otherwise

    def ctx(self) -> ProviderContext:
        return ProviderContext(self.name, on_call=self.on_call)

    def provider(self, **cfg: Any) -> Any:
        """The provider, from the harness's settings updated with ``cfg``."""
        raise NotImplementedError

    def fetch(self, window: FetchWindow | None = None, **cfg: Any) -> FetchResult:
        p = self.provider(**cfg)
        try:
            return p.fetch(self.window if window is None else window)  # type: ignore[no-any-return]
        finally:
            p.close()


def check_key_list_failure_spares_the_refresh(h: FetchHarness, caplog: pytest.LogCaptureFixture, fault: Any) -> None:
    """An AI source (openai, anthropic) whose key list fails with ``fault`` (an admin key without that permission):
    key names are not worth a refresh, so the failure is logged once and counted, and costs, usage and usage by
    key are stored as usual, refresh after refresh."""
    whole = h.fetch()
    h.emu.inject(fault)  # type: ignore[attr-defined]
    provider = h.provider()  # the engine keeps one provider per source across refreshes
    try:
        with caplog.at_level(logging.WARNING):
            first = provider.fetch(h.window)
            second = provider.fetch(h.window)
    finally:
        provider.close()
    assert first.api_keys == second.api_keys == [] and whole.api_keys
    assert first.costs == whole.costs and first.key_usage == whole.key_usage
    assert len([r for r in caplog.records if "API key names not refreshed" in r.getMessage()]) == 1
    assert "HTTP 403" in caplog.text
    assert any(status != "success" for op, status, _ in h.calls if "api_keys" in op)


@contextmanager
def running(app: Any, web_config: Path | None = None, raw: dict[str, Any] | None = None) -> Iterator[Server]:
    """``exporter.web.serve`` on 127.0.0.1 and a free port, in a thread, shut down on exit."""
    server = serve(app, "127.0.0.1", 0, str(web_config) if web_config else None, redacted(raw or {}))
    # a short poll: shutdown() waits for it, and half a second (the default) per test adds up
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        t.join(10)


AZURE_ENV = (
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "IDENTITY_ENDPOINT",
    "MSI_ENDPOINT",
)


def write_az_stub(directory: Path, token: str, subscription: str = "00000000-0000-0000-0000-000000000001") -> None:
    """An ``az`` that answers ``az account get-access-token`` as the Azure CLI does (JSON on stdout)."""
    payload = {
        "accessToken": token,
        "expiresOn": "2099-01-01 00:00:00.000000",
        "expires_on": 4070908800,
        "subscription": subscription,
        "tenant": "72f988bf-0000-0000-0000-000000000000",
        "tokenType": "Bearer",
    }
    script = directory / "az"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2" != "account get-access-token" ]; then echo "unexpected az call: $*" >&2; exit 2; fi\n'
        f"cat <<'EOF'\n{json.dumps(payload)}\nEOF\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def use_az_stub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, token: str) -> Path:
    """Only a stub ``az`` on PATH can give Azure's CLI credential a token: no environment secrets, no managed
    identity endpoint. Returns the stub's directory."""
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_az_stub(bin_dir, token)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "azure-config"))
    return bin_dir


def write_oci_key(directory: Path, tenancy: str, pass_phrase: str | None = None) -> tuple[Path, bytes, bytes]:
    """A throwaway RSA API key (encrypted with ``pass_phrase`` if given) and the OCI SDK's config file naming it.

    Returns the config file, the private key PEM as written and the public key PEM.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(pass_phrase.encode()) if pass_phrase else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, encryption)
    key_file = directory / "api_key.pem"
    key_file.write_bytes(pem)
    key_file.chmod(0o600)
    config = directory / "config"
    config.write_text(
        "[DEFAULT]\n"
        "user=ocid1.user.oc1..aaaatestuser\n"
        "fingerprint=11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00\n"
        f"tenancy={tenancy}\n"
        "region=us-ashburn-1\n"
        f"key_file={key_file}\n" + (f"pass_phrase={pass_phrase}\n" if pass_phrase else "")
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return config, pem, public


# -- shared-cost pools: the figures a dataset's line items give, worked out here in Decimal ----------------

CostKey = tuple[str, str, str, str, str]  # provider, account_id, service_name, team, model
COST_KEYS = ("provider", "account_id", "service_name", "team", "model")


def _pool_matches(match: dict[str, Any], key: CostKey) -> bool:
    labels = dict(zip(COST_KEYS, key, strict=True))
    return all(labels[k] in ([v] if isinstance(v, str) else v) for k, v in match.items())


def assert_allocation(text: str, items: dict[CostKey, Decimal], pools: list[dict[str, Any]], period: str) -> None:
    """The ``spend_cost_shared_<period>_usd`` and ``spend_cost_direct_<period>_usd`` samples of ``text`` against
    the dataset's line items of that period (``items``) and the configured ``pools``:

    - each pool's shares add up to the pool's line items (first pool that matches) to the cent, exactly;
    - each share is within a cent of its exact quota (proportional to the team's direct spend, even, or weights),
      to the receiving teams only;
    - each team's direct figure is its spend outside the pools, and direct plus shares is every dollar once.
    """
    direct: dict[str, Decimal] = {}
    totals = {p["name"]: Decimal(0) for p in pools}
    for key, v in items.items():
        pool = next((p["name"] for p in pools if _pool_matches(p["match"], key)), None)
        if pool is None:
            direct[key[3]] = direct.get(key[3], Decimal(0)) + v
        else:
            totals[pool] += v
            direct.setdefault(key[3], Decimal(0))
    shares: dict[str, dict[str, Decimal]] = {p["name"]: {} for p in pools}
    for labels, v in series(text, f"spend_cost_shared_{period}_usd").items():
        d = dict(labels)
        shares[d["pool"]][d["team"]] = Decimal(repr(v))
    got_direct = {dict(k)["team"]: Decimal(repr(v)) for k, v in series(text, f"spend_cost_direct_{period}_usd").items()}
    assert {t: v.quantize(CENT) for t, v in got_direct.items() if t in direct} == {
        t: v.quantize(CENT) for t, v in direct.items()
    }, "direct spend outside the pools"

    for p in pools:
        name, total, got = p["name"], totals[p["name"]], shares[p["name"]]
        assert sum(got.values(), Decimal(0)) == total.quantize(CENT), f"pool {name}: shares do not add up"
        own = set([p["match"]["team"]] if isinstance(p["match"].get("team"), str) else p["match"].get("team", []))
        teams = (
            p.get("to_teams")
            or list(p.get("weights", {}))
            or [t for t, v in direct.items() if v > 0 and t != "unallocated"]
        )
        teams = [t for t in teams if t not in own]
        assert set(got) == set(teams), f"pool {name}: receivers"
        split = p.get("split", "proportional")
        if split == "weights":
            w = {t: Decimal(str(p["weights"][t])) for t in teams}
        elif split == "even":
            w = dict.fromkeys(teams, Decimal(1))
        else:
            w = {t: max(direct.get(t, Decimal(0)), Decimal(0)) for t in teams}
        whole = sum(w.values(), Decimal(0))
        for t in teams:
            quota = total.quantize(CENT) * w[t] / whole
            assert abs(got[t] - quota) < CENT, f"pool {name}, team {t}: {got[t]} is not its quota {quota}"
    allocated = sum(got_direct.values(), Decimal(0)) + sum((v for s in shares.values() for v in s.values()), Decimal(0))
    # each pool is rounded to the cent once: the allocated totals are the dataset's within half a cent per pool
    assert abs(allocated - sum(items.values(), Decimal(0))) <= CENT / 2 * len(pools), "every dollar once"


def wait_ready(url: str, proc: subprocess.Popen[Any], seconds: float, poll: float = 0.2) -> str | None:
    """Poll ``url``/-/ready (the exporter's, Prometheus's) until it answers 200: None; else why not (``proc``
    exited, or ``seconds`` passed)."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            return f"exited {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return None
        except OSError:
            pass
        if time.monotonic() > deadline:
            return f"not ready within {seconds:g} s"
        time.sleep(poll)

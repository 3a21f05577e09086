"""Secrets canary: unique strings in every credential, then every command and endpoint, and no output shows one.

Each credential the config and the environment can hold gets a unique canary: the AWS secret key and
session token, the Azure CLI's access token and ``AZURE_CLIENT_SECRET``, the OCI private key (its PEM
lines) and its passphrase, a GCP service-account key (its PEM lines, its key id) and the access token
Google's token endpoint gives for it, the OpenAI and Anthropic admin keys, a proxy password given by
``${VAR}`` in a URL, the web config's password (and its bcrypt hash) and the TLS server key.

The credentials are really used: the CLI runs as a subprocess against the local emulators (the SDKs sign
with the AWS secret, the OCI key; Google's token endpoint is emulated here and checks the JWT's signature),
and each emulator then checks it got the credential (or fails with 401/500 on purpose, or, for OpenAI,
echoes a wrong key in its error as an unkind API might). Every command is run, with ``--log.level=debug``,
on the success path and the error paths, and every endpoint of ``run`` is read; no canary may appear in
stdout, stderr, the exposition, ``/status``, ``/config``, the landing page, a 4xx reply or an error message.
"""

from __future__ import annotations

import base64
import json
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.clock import FIXED_NOW, fixed_clock_env
from tests.emulators.ai_dataset import build_ai_dataset
from tests.emulators.anthropic_admin import AnthropicAdminEmulator
from tests.emulators.aws_ce import AwsCostExplorerEmulator
from tests.emulators.azure_cost import AzureCostEmulator
from tests.emulators.bigquery import BigQueryEmulator
from tests.emulators.dataset import build_dataset
from tests.emulators.oci_usage import OciUsageEmulator
from tests.emulators.openai_admin import OpenAIAdminEmulator
from tests.emulators.server import Emulator, Fault, Request, Response
from tests.helpers import write_az_stub, write_oci_key
from tests.pki import VALID_FROM, VALID_UNTIL

CLI = [sys.executable, "-m", "exporter.cli"]
TENANCY = "ocid1.tenancy.oc1..aaaatest"  # the OCI tenancy of the shared dataset
ACCESS_KEY_ID = "AKIASECRETSTEST00001"  # an identifier, not a secret
SOURCES = ("aws", "azure", "oci", "gcp", "openai", "anthropic")
MIXED_BAD = {"aws", "azure", "openai"}  # the sources that fail under `run`


def canary(kind: str) -> str:
    return f"{kind}CANARY{secrets.token_hex(12)}"


def pem_lines(pem: bytes) -> list[str]:
    """The base64 lines of a PEM: any one of them in an output means the key leaked."""
    return [line for line in pem.decode().splitlines() if line and not line.startswith("-----") and ":" not in line]


class GoogleTokenEmulator(Emulator):
    """Google's OAuth 2.0 token endpoint for service accounts: a JWT bearer grant signed with the account's key."""

    name = "google-oauth"

    def __init__(self, public_key: rsa.RSAPublicKey, token: str) -> None:
        super().__init__()
        self.public_key = public_key
        self.token = token

    def handle(self, request: Request) -> Response:
        if request.method != "POST" or request.path != "/token":
            return Response(404, {"error": "not_found"})
        form = dict(pair.split("=", 1) for pair in request.body.decode().split("&"))
        if form.get("grant_type") != "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer":
            return Response(400, {"error": "unsupported_grant_type"})
        header, payload, signature = form["assertion"].split(".")
        try:
            self.public_key.verify(
                base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
                f"{header}.{payload}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except Exception:
            return Response(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        return Response(200, {"access_token": self.token, "expires_in": 3599, "token_type": "Bearer"})


@dataclass
class World:
    """Emulators, credential files, the environment and the configs of an exporter holding every credential.

    ``good`` emulators accept the credentials; each ``bad`` one fails in its own way (wrong key expected, 401,
    403, 500). ``configs``: ``good`` (every source on a good emulator), ``bad`` (every source on a bad one) and
    ``mixed`` (aws, azure and openai bad, the others good).
    """

    dir: Path
    env: dict[str, str]
    configs: dict[str, Path]
    web_config: Path
    ca: Path
    web_user: str
    web_password: str
    canaries: dict[str, str] = field(default_factory=dict)  # what -> the secret string
    good: dict[str, Any] = field(default_factory=dict)
    bad: dict[str, Any] = field(default_factory=dict)

    def leaks(self, text: str | bytes) -> list[str]:
        s = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        return [what for what, value in self.canaries.items() if value in s]


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _self_signed(d: Path) -> tuple[Path, Path, bytes]:
    key = _rsa()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(VALID_FROM)  # valid whatever the date (the exporter runs on FIXED_NOW, this process not)
        .not_valid_after(VALID_UNTIL)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (d / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "tls.key").write_bytes(key_pem)
    return d / "tls.crt", d / "tls.key", key_pem


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    d = tmp_path_factory.mktemp("secrets")
    now = FIXED_NOW  # the commands run with their clocks started there (``env`` below)
    dataset = build_dataset(now.date(), days=20)  # any data will do: this test is about credentials
    ai = build_ai_dataset(now, days=20)
    c: dict[str, str] = {
        "AWS_SECRET_ACCESS_KEY": canary("awsSecret"),
        "AWS_SESSION_TOKEN": canary("awsSession"),
        "AZURE_CLIENT_SECRET": canary("azureClientSecret"),
        "azure access token": canary("eyJazureToken"),
        "OCI pass_phrase": canary("ociPass"),
        "GCP private_key_id": canary("gcpKeyId"),
        "GCP access token": canary("ya29.gcpToken"),
        "OPENAI_ADMIN_KEY": canary("sk-admin-"),
        "ANTHROPIC_ADMIN_KEY": canary("sk-ant-admin01-"),
        "PROXY_PASSWORD": canary("proxyPw"),
        "web password": canary("webPw"),
    }

    # OCI: an API key encrypted with a passphrase, in the SDK's config file
    _, oci_pem, public_oci = write_oci_key(d / "oci", TENANCY, c["OCI pass_phrase"])
    for i, line in enumerate(pem_lines(oci_pem)):
        c[f"OCI key PEM line {i}"] = line

    # GCP: a service-account key whose token endpoint is the emulator below
    gcp_key = _rsa()
    gcp_pem = gcp_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for i, line in enumerate(pem_lines(gcp_pem)):
        c[f"GCP key PEM line {i}"] = line
    token_emu = GoogleTokenEmulator(gcp_key.public_key(), c["GCP access token"]).start()
    (d / "gcp-sa.json").write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "billing-admin",
                "private_key_id": c["GCP private_key_id"],
                "private_key": gcp_pem.decode(),
                "client_email": "spend-exporter@billing-admin.iam.gserviceaccount.com",
                "client_id": "100000000000000000001",
                "token_uri": f"{token_emu.url}/token",
            }
        )
    )

    # Azure: the CLI credential runs `az account get-access-token`: a stub on PATH answers with the canary token
    bin_dir = d / "bin"
    bin_dir.mkdir()
    write_az_stub(bin_dir, c["azure access token"])

    # the web config: TLS with a key of its own, basic auth with a bcrypt hash
    cert, key, tls_pem = _self_signed(d)
    for i, line in enumerate(pem_lines(tls_pem)):
        c[f"TLS key PEM line {i}"] = line
    web_hash = bcrypt.hashpw(c["web password"].encode(), bcrypt.gensalt(rounds=4)).decode()
    c["web password bcrypt hash"] = web_hash
    web = d / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {cert.name}\n  key_file: {key.name}\n"
        f"basic_auth_users:\n  prometheus: '{web_hash}'\n"
    )

    def emulators(bad: bool) -> dict[str, Any]:
        other = "the-one-the-api-expects"
        emus: dict[str, Any] = {
            "aws": AwsCostExplorerEmulator(dataset, access_key_id="AKIASOMEONEELSE00001" if bad else ACCESS_KEY_ID),
            "azure": AzureCostEmulator(dataset, token=other if bad else c["azure access token"]),
            "oci": OciUsageEmulator(dataset, public_key_pem=public_oci),
            "gcp": BigQueryEmulator(dataset, now=now),
            # a wrong key gets OpenAI's emulator to echo the key it was given, in full, in its 401
            "openai": OpenAIAdminEmulator(ai, admin_key="sk-admin-" + other if bad else c["OPENAI_ADMIN_KEY"]),
            "anthropic": AnthropicAdminEmulator(ai, admin_key=c["ANTHROPIC_ADMIN_KEY"]),
        }
        if bad:
            emus["oci"].inject(Fault("500", times=-1))
            emus["gcp"].inject(Fault("401", times=-1))
            emus["anthropic"].inject(Fault("500", times=-1))
        for e in emus.values():
            e.start()
        return emus

    good, bad = emulators(bad=False), emulators(bad=True)
    good["google-oauth"] = token_emu

    def config(name: str, broken: set[str]) -> Path:
        e = {k: (bad if k in broken else good)[k] for k in SOURCES}
        anthropic_url = e["anthropic"].url.replace("http://", "http://proxy-user:${PROXY_PASSWORD}@")
        p = d / f"{name}.yml"
        p.write_text(
            f"cache_path: {d / name / 'spend.sqlite'}\n"
            "sources:\n"
            f"  - {{name: aws, type: aws, endpoint_url: '{e['aws'].url}', throttle_retries: 0, timeout: 120s}}\n"
            "  - {name: azure, type: azure, credential: cli, throttle_retries: 0, timeout: 120s,"
            f" base_url: '{e['azure'].url}', scopes: [/subscriptions/00000000-0000-0000-0000-000000000001]}}\n"
            f"  - {{name: oci, type: oci, tenancy_id: '{TENANCY}', config_file: '{d / 'oci' / 'config'}',"
            f" service_endpoint: '{e['oci'].url}', retry_max_attempts: 1, timeout: 120s}}\n"
            f"  - {{name: gcp, type: gcp_bigquery, table: '{e['gcp'].table}', api_endpoint: '{e['gcp'].url}',"
            " credentials: default, retry_deadline: 1s, retry_base_delay: 10ms, retry_max_delay: 50ms, timeout: 120s}\n"
            f"  - {{name: openai, type: openai, base_url: '{e['openai'].url}/v1', max_retries: 0, timeout: 120s}}\n"
            f"  - {{name: anthropic, type: anthropic, base_url: '{anthropic_url}', max_retries: 0, timeout: 120s}}\n"
        )
        return p

    configs = {"good": config("good", set()), "bad": config("bad", set(SOURCES)), "mixed": config("mixed", MIXED_BAD)}
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(d / "home"),
        "LANG": "C.UTF-8",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": c["AWS_SECRET_ACCESS_KEY"],
        "AWS_SESSION_TOKEN": c["AWS_SESSION_TOKEN"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(d / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(d / "no-aws-credentials"),
        "AZURE_CLIENT_SECRET": c["AZURE_CLIENT_SECRET"],
        "AZURE_CONFIG_DIR": str(d / "azure-config"),
        "GOOGLE_APPLICATION_CREDENTIALS": str(d / "gcp-sa.json"),
        # nothing may reach a metadata server: point Google's at a closed port
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
        "NO_GCE_CHECK": "True",
        "OPENAI_ADMIN_KEY": c["OPENAI_ADMIN_KEY"],
        "ANTHROPIC_ADMIN_KEY": c["ANTHROPIC_ADMIN_KEY"],
        "PROXY_PASSWORD": c["PROXY_PASSWORD"],
        # anything not on 127.0.0.1 goes to a closed local port instead of the internet (google-auth, for one,
        # looks up a service account's "regional access boundary" at iamcredentials.googleapis.com by itself)
        "NO_PROXY": "127.0.0.1,localhost",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    env = fixed_clock_env(env)  # every command starts its clock at FIXED_NOW
    w = World(d, env, configs, web, cert, "prometheus", c["web password"], c, good, bad)
    yield w
    for e in [*good.values(), *bad.values()]:
        e.stop()


def run_cli(world: World, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=world.env, cwd=world.dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(
    url: str, ctx: ssl.SSLContext, auth: tuple[str, str] | None, accept: str | None = None
) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    if accept:
        req.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, str(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, str(e.headers), e.read()


@dataclass
class Served:
    """What ``run`` printed and served."""

    returncode: int
    stdout: str
    stderr: str
    status: dict[str, Any]
    bodies: dict[str, bytes]  # "<path> (<who>) <code>" -> headers and body


def serve_and_read_everything(world: World) -> Served:
    """``run`` on the mixed config with TLS and basic auth; every endpoint read with, without and with wrong auth."""
    w = world
    port = free_port()
    proc = subprocess.Popen(
        [
            *CLI,
            "run",
            "--config.file",
            str(w.configs["mixed"]),
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--web.config.file",
            str(w.web_config),
            "--log.level",
            "debug",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=w.env,
        cwd=w.dir,
    )
    ctx = ssl.create_default_context(cafile=str(w.ca))
    auth = (w.web_user, w.web_password)
    base = f"https://127.0.0.1:{port}"
    bodies: dict[str, bytes] = {}
    status: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if fetch(f"{base}/-/ready", ctx, auth)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, ssl.SSLError):
                pass
            time.sleep(0.2)
        status = json.loads(fetch(f"{base}/status", ctx, auth)[2])
        paths = ["/metrics", "/status", "/config", "/", "/-/ready", "/-/healthy", "/nope", "/metrics/x", "/-/reload"]
        paths += ["/api/v1/spend?group_by=provider,account_id,service_name,team,model", "/api/v1/spend?from=bad"]
        for path in paths:
            for who, a in (("auth", auth), ("no-auth", None), ("wrong", (w.web_user, w.web_password + "x"))):
                code, headers, body = fetch(base + path, ctx, a)
                bodies[f"{path} ({who}) {code}"] = headers.encode() + body
        code, headers, body = fetch(f"{base}/metrics", ctx, auth, accept="application/openmetrics-text;version=1.0.0")
        bodies[f"/metrics (openmetrics) {code}"] = headers.encode() + body
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    return Served(proc.returncode, out, err, status, bodies)


BAD_CONFIGS = {
    # a secret interpolated into a key whose value is then rejected: the error must not echo it
    "literal": "sources:\n  - {name: a, type: azure, scopes: [/s], credential: '${AZURE_CLIENT_SECRET}'}\n",
    "duration": "sources:\n  - {name: a, type: openai, interval: '${OPENAI_ADMIN_KEY}'}\n",
    "number": "max_series_per_source: '${ANTHROPIC_ADMIN_KEY}'\n",
    "listen": "listen_address: '${PROXY_PASSWORD}'\n",
    "pattern": "sources:\n  - {name: '!${AWS_SECRET_ACCESS_KEY}', type: aws}\n",
    "currency": "currency_rates: {'${AWS_SESSION_TOKEN}': 1.0}\n",
    # a secret pasted where it does not belong, beside a real error
    "unknown-key": "sources:\n  - {name: o, type: openai, admin_key: '@OPENAI_ADMIN_KEY@', interval: soon}\n",
    "yaml": "sources:\n  - name: o\n    type: openai\n   base_url: http://u:@PROXY_PASSWORD@@h\n",
}
BAD_WEB_CONFIGS = {
    "yaml": "basic_auth_users:\n  prometheus: '@web password bcrypt hash@'\n   bad: indent\n",
    "plaintext": "basic_auth_users:\n  prometheus: '@web password@'\n",
    "key-as-cert": "tls_server_config:\n  cert_file: tls.key\n  key_file: tls.key\n",
}


def _fill(world: World, text: str) -> str:
    for key, value in world.canaries.items():
        text = text.replace(f"@{key}@", value)
    return text


@pytest.fixture(scope="module")
def results(world: World) -> dict[str, Any]:
    """Every command, run at once (each its own interpreter): name -> CompletedProcess, or ``Served`` for run."""
    w = world
    jobs: dict[str, Any] = {
        "check (good)": lambda: run_cli(w, "check", "--config.file", str(w.configs["good"]), "--log.level", "debug"),
        "once (bad)": lambda: run_cli(
            w,
            "once",
            "--config.file",
            str(w.configs["bad"]),
            "--log.level",
            "debug",
            "--log.format",
            "json",
            "--output",
            str(w.dir / "bad.prom"),
        ),
        "run (mixed)": lambda: serve_and_read_everything(w),
    }
    # a password in an endpoint URL that cannot be reached: SDK errors quote the URL (no proxy here, as
    # botocore would send this URL to the proxy; nothing in this config goes beyond 127.0.0.1)
    closed = free_port()
    unreachable = w.dir / "unreachable.yml"
    unreachable.write_text(
        f"cache_path: {w.dir / 'unreachable' / 'spend.sqlite'}\nsources:\n"
        f"  - {{name: aws, type: aws, endpoint_url: 'http://u:${{PROXY_PASSWORD}}@127.0.0.1:{closed}',"
        " throttle_retries: 0, timeout: 60s}\n"
        f"  - {{name: openai, type: openai, base_url: 'http://u:${{PROXY_PASSWORD}}@127.0.0.1:{closed}/v1',"
        " max_retries: 0, timeout: 60s}\n"
    )
    direct = {k: v for k, v in w.env.items() if not k.endswith("_PROXY")}
    jobs["check (unreachable)"] = lambda: subprocess.run(
        [*CLI, "check", "--config.file", str(unreachable), "--log.level", "debug"],
        capture_output=True,
        text=True,
        timeout=120,
        env=direct,
        cwd=w.dir,
    )
    for args in (["--help"], ["--version"], ["config-schema"], ["run", "--help"]):
        jobs[" ".join(args)] = lambda args=args: run_cli(w, *args)
    for name, text in BAD_CONFIGS.items():
        p = w.dir / f"bad-config-{name}.yml"
        p.write_text(_fill(w, text))
        jobs[f"bad config {name}"] = lambda p=p: run_cli(w, "check", "--config.file", str(p), "--log.level", "debug")
    for name, text in BAD_WEB_CONFIGS.items():
        p = w.dir / f"bad-web-{name}.yml"
        p.write_text(_fill(w, text))
        jobs[f"bad web config {name}"] = lambda p=p: run_cli(
            w,
            "run",
            "--config.file",
            str(w.configs["good"]),
            "--web.listen-address",
            f"127.0.0.1:{free_port()}",
            "--web.config.file",
            str(p),
        )
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def assert_no_leak(world: World, where: str, text: str | bytes) -> None:
    leaked = world.leaks(text)
    assert not leaked, f"{where} shows {leaked}"


def assert_clean_run(world: World, r: Any, name: str) -> None:
    assert_no_leak(world, f"{name}: stdout", r.stdout)
    assert_no_leak(world, f"{name}: stderr", r.stderr)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def test_no_command_shows_a_secret(world: World, results: dict[str, Any]) -> None:
    for name, r in results.items():
        assert_clean_run(world, r, name)
    assert_no_leak(world, "once (bad): the exposition", (world.dir / "bad.prom").read_bytes())


# --------------------------------------------------------------------------- the credentials are really used


def test_check_used_every_credential(world: World, results: dict[str, Any]) -> None:
    w = world
    r = results["check (good)"]
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()[1:]}
    assert rows == {s: "ok" for s in SOURCES}
    # each emulator saw its credential (check and run both called the good ones)
    e = w.good
    aws = [q.headers for q in e["aws"].requests]
    assert aws and all(h.get("x-amz-security-token") == w.canaries["AWS_SESSION_TOKEN"] for h in aws)
    assert all(f"Credential={ACCESS_KEY_ID}/" in h["authorization"] for h in aws)
    assert all(q.headers["authorization"] == f"Bearer {w.canaries['azure access token']}" for q in e["azure"].requests)
    assert all('keyId="' in q.headers["authorization"] for q in e["oci"].requests)  # signed (and verified) with the key
    assert e["google-oauth"].requests, "the service-account key was exchanged for a token"
    assert all(q.headers.get("authorization") == f"Bearer {w.canaries['GCP access token']}" for q in e["gcp"].requests)
    assert all(q.headers["authorization"] == f"Bearer {w.canaries['OPENAI_ADMIN_KEY']}" for q in e["openai"].requests)
    anthropic = e["anthropic"].requests
    assert anthropic and all(q.headers["x-api-key"] == w.canaries["ANTHROPIC_ADMIN_KEY"] for q in anthropic)
    basic = base64.b64encode(f"proxy-user:{w.canaries['PROXY_PASSWORD']}".encode()).decode()
    assert all(q.headers.get("authorization") == f"Basic {basic}" for q in anthropic), "the proxy password is used"


# --------------------------------------------------------------------------- error paths


def test_once_with_every_api_failing(world: World, results: dict[str, Any]) -> None:
    r = results["once (bad)"]
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()
    assert {s for s in SOURCES if any(line.startswith(f"{s}: ") for line in lines)} == set(SOURCES), r.stderr
    assert "Incorrect API key provided: <redacted>" in r.stderr
    # the leak this guards against is real: OpenAI's emulator was given the canary and put it in its reply
    assert any(
        q.headers["authorization"].endswith(world.canaries["OPENAI_ADMIN_KEY"]) for q in world.bad["openai"].requests
    )
    up = [
        line
        for line in (world.dir / "bad.prom").read_text().splitlines()
        if line.startswith("spend_exporter_source_up")
    ]
    assert len(up) == len(SOURCES) and all(float(line.rsplit(" ", 1)[1]) == 0 for line in up)


def test_unreachable_endpoint_with_a_password_in_its_url(results: dict[str, Any]) -> None:
    r = results["check (unreachable)"]
    assert r.returncode == 1, r.stderr
    assert 'Could not connect to the endpoint URL: "http://u:<redacted>@127.0.0.1:' in r.stderr


def test_commands_without_a_config(results: dict[str, Any]) -> None:
    for name in ("--help", "--version", "config-schema", "run --help"):
        assert results[name].returncode == 0, (name, results[name].stderr)


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_configs_exit_2_without_echoing_secrets(results: dict[str, Any], name: str) -> None:
    r = results[f"bad config {name}"]
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: invalid configuration"), r.stderr


@pytest.mark.parametrize("name", sorted(BAD_WEB_CONFIGS))
def test_bad_web_configs_exit_2_without_echoing_secrets(results: dict[str, Any], name: str) -> None:
    r = results[f"bad web config {name}"]
    assert r.returncode == 2, r.stderr
    assert "--web.config.file" in r.stderr


# --------------------------------------------------------------------------- run: every endpoint


def test_run_serves_no_secret_on_any_endpoint(world: World, results: dict[str, Any]) -> None:
    served: Served = results["run (mixed)"]
    assert served.returncode == 0, served.stderr[-3000:]
    assert "listening on https://" in served.stderr
    up = {s["name"]: s["up"] for s in served.status["sources"]}
    why = [(s["name"], s["last_error"]) for s in served.status["sources"]]
    assert up == {s: s not in MIXED_BAD for s in SOURCES}, why
    errors = {s["name"]: s["last_error"] for s in served.status["sources"] if s["last_error"]}
    assert set(errors) == MIXED_BAD
    assert "Incorrect API key provided: <redacted>" in errors["openai"]
    for where, body in served.bodies.items():
        assert_no_leak(world, where, body)
        if "(auth)" not in where and not where.startswith(("/-/healthy ", "/-/ready ")):
            assert " 401" in where or where.startswith("/metrics (openmetrics)"), where
    assert [k for k in served.bodies if k.startswith("/metrics (auth)")] == ["/metrics (auth) 200"]
    config_shown = served.bodies["/config (auth) 200"].decode()
    assert "${PROXY_PASSWORD}" in config_shown, "/config shows the reference, not the value"

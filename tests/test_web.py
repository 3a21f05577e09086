"""The HTTP server, started for real on 127.0.0.1: endpoints, negotiation, TLS and basic auth.

Certificates are made in the test (a throwaway CA, a server and two client certificates) and
checked with a real TLS client (``ssl`` + ``http.client``).
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import http.client
import json
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bcrypt
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import App, build_app
from exporter.config import load_config
from exporter.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE
from exporter.web import BLOCKING_SEND_MIN, Handler, Server
from exporter.webconfig import WebConfigError, load_web_config
from tests.helpers import running
from tests.pki import make_ca, make_leaf, write_pem

NOW = dt.datetime(2025, 3, 15, 10, 30, tzinfo=dt.UTC)
SECRET_FROM_ENV = "env-secret-Zq8v1KpX"
SECRET_IN_YAML = "yaml-secret-Hu7nR3wE"
PASSWORD = "correct horse battery staple"
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


# --------------------------------------------------------------------------- certificates


@dataclass
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_client_cert: Path  # signed by a CA the server does not trust
    rogue_client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_ca("spend-exporter test CA")
    rogue, rogue_key = make_ca("someone else's CA")
    ca_path, _ = write_pem(d, "ca", ca)
    sc, sk = write_pem(d, "server", *make_leaf("localhost", ca, ca_key, server=True))
    cc, ck = write_pem(d, "client", *make_leaf("prometheus", ca, ca_key, server=False))
    rc, rk = write_pem(d, "rogue-client", *make_leaf("prometheus", rogue, rogue_key, server=False))
    return Pki(d, ca_path, sc, sk, cc, ck, rc, rk)


# --------------------------------------------------------------------------- the app and servers


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, focus: Any) -> Iterator[App]:
    d = tmp_path_factory.mktemp("web")
    rows = []
    for i in range(24):  # 2025-02-20 .. 2025-03-15
        day = dt.date(2025, 2, 20) + dt.timedelta(days=i)
        rows.append(focus.daily(day, 100.0, ServiceName="Amazon EC2", Tags='{"team": "search"}'))
    focus.write(d / "exports" / "a.csv", rows)
    (d / "config.yml").write_text(
        f"cache_path: {d / 'cache.sqlite'}\n"
        "sources:\n"
        f"  - {{name: focus, type: focus, paths: ['{d / 'exports' / '*.csv'}']}}\n"
        "budgets:\n"
        "  - {name: search-budget, amount_usd: 2000, team: search}\n"
    )
    cfg, _raw = load_config(d / "config.yml")
    a = build_app(cfg, now=lambda: NOW)
    assert all(o.ok for o in a.refresh_all())
    yield a
    a.close()


@pytest.fixture(scope="module")
def plain(app: App) -> Iterator[Server]:
    with running(app, raw={"sources": [{"name": "focus", "type": "focus"}]}) as s:
        yield s


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def get(
    server: Server,
    path: str = "/metrics",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    body: bytes | None = None,
) -> Reply:
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return Reply(r.status, r.headers, r.read())
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --------------------------------------------------------------------------- endpoints


def test_metrics(plain: Server, app: App) -> None:
    r = get(plain)
    assert r.status == 200
    assert r.headers["Content-Type"] == TEXT_CONTENT_TYPE
    assert r.body == app.snapshot.text
    assert int(r.headers["Content-Length"]) == len(r.body)
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert "spend_cost_month_to_date_usd" in names
    assert get(plain, "/metrics?debug=1").body == r.body


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (None, False),
        ("text/plain", False),
        ("text/plain;version=0.0.4", False),
        ("*/*", False),
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", True),
        (PROMETHEUS_ACCEPT, True),
        ("application/json, text/plain", False),
    ],
)
def test_content_negotiation(plain: Server, app: App, accept: str | None, openmetrics: bool) -> None:
    r = get(plain, headers={"Accept": accept} if accept else {})
    assert r.status == 200
    if openmetrics:
        assert r.headers["Content-Type"] == OPENMETRICS_CONTENT_TYPE
        assert r.body.endswith(b"# EOF\n")
        assert {f.name for f in om_families(r.text)} >= {"spend_cost_month_to_date_usd", "spend_exporter_api_requests"}
    else:
        assert r.headers["Content-Type"] == TEXT_CONTENT_TYPE
        assert r.body == app.snapshot.text


@pytest.mark.parametrize("encoding", ["gzip", "gzip, deflate, br", "deflate, gzip;q=1.0, *;q=0.5"])
def test_gzip(plain: Server, app: App, encoding: str) -> None:
    r = get(plain, headers={"Accept-Encoding": encoding})
    assert r.status == 200
    assert r.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in r.headers["Vary"]
    assert gzip.decompress(r.body) == app.snapshot.text
    om = get(plain, headers={"Accept-Encoding": encoding, "Accept": PROMETHEUS_ACCEPT})
    assert om.headers["Content-Type"] == OPENMETRICS_CONTENT_TYPE
    assert gzip.decompress(om.body).endswith(b"# EOF\n")


def test_no_gzip_unless_asked(plain: Server) -> None:
    for enc in ("identity", "deflate", "br"):
        r = get(plain, headers={"Accept-Encoding": enc})
        assert "Content-Encoding" not in r.headers
        assert r.body.startswith(b"# HELP")


def test_head(plain: Server, app: App) -> None:
    r = get(plain, method="HEAD")
    assert r.status == 200
    assert r.body == b""
    assert int(r.headers["Content-Length"]) == len(app.snapshot.text)


def test_landing_page(plain: Server) -> None:
    r = get(plain, "/")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/html")
    assert '<a href="/metrics">' in r.text
    assert "<td>focus</td>" in r.text and ">up<" in r.text
    # the budget and how much of it is used: 15 March days of 100 against 2000
    assert "<td>search-budget</td>" in r.text
    assert "1,500.00" in r.text and "75.0%" in r.text
    assert "<script" not in r.text


def test_health_ready_status(plain: Server, app: App) -> None:
    assert (get(plain, "/-/healthy").status, get(plain, "/-/healthy").text) == (200, "Healthy\n")
    assert get(plain, "/-/ready").status == 200
    r = get(plain, "/status")
    assert r.status == 200 and r.headers["Content-Type"] == "application/json"
    st = json.loads(r.body)
    assert st["ready"] is True
    (src,) = st["sources"]
    assert src["name"] == "focus" and src["type"] == "focus" and src["up"] is True
    assert src["last_success"] == "2025-03-15T10:30:00Z"
    assert src["month_to_date_usd"] == 1500.0
    assert src["paid_call_cap_reached"] is False
    assert st["budgets"] == [
        {
            "name": "search-budget",
            "team": "search",
            "amount_usd": 2000.0,
            "spent_usd": 1500.0,
            "used_ratio": 0.75,
            "warning_ratio": 0.8,
            # 1,500 through the 15th plus 16 days at 100
            "forecast_usd": 3100.0,
            "forecast_ratio": 1.55,
            "state": "forecast_exceeded",
        }
    ]
    assert st["snapshot"]["bytes"] == len(app.snapshot.text)


def test_not_ready_before_first_refresh(tmp_path: Path) -> None:
    cfg, _ = _secret_config(tmp_path)
    a = build_app(cfg, now=lambda: NOW)
    try:
        with running(a) as s:
            r = get(s, "/-/ready")
            assert r.status == 503
            assert "Not ready" in r.text
            assert get(s, "/-/healthy").status == 200
            assert get(s, "/metrics").status == 200, "/metrics serves (empty families) before the first refresh"
    finally:
        a.close()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_not_allowed(plain: Server, method: str) -> None:
    r = get(plain, "/metrics", method=method, body=b"x=1" if method in ("POST", "PUT", "PATCH") else None)
    assert r.status == 405
    assert r.headers["Allow"] == "GET, HEAD"
    assert b"spend_" not in r.body


@pytest.mark.parametrize("path", ["/nope", "/metrics/", "/metricsx", "/../etc/passwd", "/-/reload"])
def test_unknown_paths_are_404(plain: Server, path: str) -> None:
    r = get(plain, path)
    assert r.status == 404
    assert b"spend_" not in r.body


def test_get_with_a_body_is_refused(plain: Server) -> None:
    assert get(plain, "/metrics", body=b"hello").status == 413


# --------------------------------------------------------------------------- /config and secrets


def _secret_config(tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    p = tmp_path / "secret.yml"
    p.write_text(
        f"cache_path: {tmp_path / 'cache.sqlite'}\n"
        "sources:\n"
        f"  - {{name: focus, type: focus, paths: ['{tmp_path / '*.csv'}']}}\n"
        "  - name: openai\n"
        "    type: openai\n"
        "    admin_key_env: SPEND_EXPORTER_TEST_OPENAI_KEY\n"
        "    base_url: https://gateway:${SPEND_EXPORTER_TEST_PROXY_PW}@proxy.internal/v1\n"
        "  - name: aws\n"
        "    type: aws\n"
        f"    endpoint_url: https://ce-user:{SECRET_IN_YAML}@ce-proxy.internal\n"
    )
    env = {"SPEND_EXPORTER_TEST_PROXY_PW": SECRET_FROM_ENV, "SPEND_EXPORTER_TEST_OPENAI_KEY": SECRET_FROM_ENV}
    return load_config(p, env=env)


def test_config_is_redacted(tmp_path: Path) -> None:
    cfg, raw = _secret_config(tmp_path)
    assert SECRET_FROM_ENV in cfg.sources[1].base_url  # type: ignore[union-attr,operator]
    a = build_app(cfg, now=lambda: NOW)
    try:
        with running(a, raw=raw) as s:
            r = get(s, "/config")
            assert r.status == 200 and r.headers["Content-Type"] == "application/json"
            shown = json.loads(r.body)
            assert [src["name"] for src in shown["sources"]] == ["focus", "openai", "aws"]
            assert (
                shown["sources"][1]["base_url"] == "https://gateway:${SPEND_EXPORTER_TEST_PROXY_PW}@proxy.internal/v1"
            )
            assert shown["sources"][1]["admin_key_env"] == "SPEND_EXPORTER_TEST_OPENAI_KEY"
            assert shown["sources"][2]["endpoint_url"] == "https://ce-user:<redacted>@ce-proxy.internal"
            for path in ("/config", "/status", "/metrics", "/"):
                body = get(s, path).body
                assert SECRET_FROM_ENV.encode() not in body, path
                assert SECRET_IN_YAML.encode() not in body, path
    finally:
        a.close()


def test_config_page_hides_a_key_pasted_as_an_env_name(app: App) -> None:
    """The config refuses ``admin_key_env: <a key>``; should one get through, /config still does not show it."""
    pasted = "sk-admin-Wm4qZ7pasted"
    raw = {"sources": [{"name": "openai", "type": "openai", "admin_key_env": pasted}]}
    with running(app, raw=raw) as s:
        r = get(s, "/config")
        assert r.status == 200
        assert pasted.encode() not in r.body
        assert json.loads(r.body)["sources"][0]["admin_key_env"] == "<redacted>"


# --------------------------------------------------------------------------- TLS


def _client_context(pki: Pki, cert: bool = False, rogue: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert:
        c, k = (pki.rogue_client_cert, pki.rogue_client_key) if rogue else (pki.client_cert, pki.client_key)
        ctx.load_cert_chain(str(c), str(k))
    return ctx


def _web_config(d: Path, text: str) -> Path:
    p = d / "web.yml"
    p.write_text(text)
    return p


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls(app: App, pki: Pki) -> None:
    wc = _web_config(pki.dir, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    with running(app, wc) as s:
        r = get(s, context=_client_context(pki))
        assert r.status == 200
        assert r.body == app.snapshot.text
        # a client that does not trust the CA refuses the server
        with pytest.raises(ssl.SSLCertVerificationError):
            get(s, context=ssl.create_default_context())
        # plain HTTP to the TLS port gets no data
        with pytest.raises((http.client.HTTPException, OSError)):
            get(s)
        # TLS 1.2 and 1.3 are accepted
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = _client_context(pki)
            ctx.minimum_version = ctx.maximum_version = version
            assert get(s, "/-/healthy", context=ctx).status == 200
        # TLS 1.1 is refused by the server (the client is allowed to offer it)
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(str(pki.ca))
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(ssl.SSLError) as e:
            get(s, context=old)
        assert "PROTOCOL_VERSION" in str(e.value).upper() or "UNSUPPORTED_PROTOCOL" in str(e.value).upper()
        # the server is still healthy afterwards
        assert get(s, "/-/healthy", context=_client_context(pki)).status == 200


def test_tls13_only(app: App, pki: Pki) -> None:
    wc = _web_config(
        pki.dir, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS13\n"
    )
    with running(app, wc) as s:
        ctx = _client_context(pki)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            get(s, context=ctx)
        assert get(s, context=_client_context(pki)).status == 200


def test_client_certificate_required(app: App, pki: Pki) -> None:
    wc = _web_config(
        pki.dir,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n",
    )
    with running(app, wc) as s:
        r = get(s, context=_client_context(pki, cert=True))
        assert r.status == 200 and r.body == app.snapshot.text
        for ctx in (_client_context(pki), _client_context(pki, cert=True, rogue=True)):
            # TLS 1.3 reports the refusal on the first read, TLS 1.2 in the handshake
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
                get(s, context=ctx)


# --------------------------------------------------------------------------- basic auth


@pytest.fixture(scope="module")
def auth_config(pki: Pki) -> Path:
    alice = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    # htpasswd writes $2y$: accepted as the exporter-toolkit does
    bob = bcrypt.hashpw(b"bob's password", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1)
    p = pki.dir / "auth.yml"
    p.write_text(f"basic_auth_users:\n  alice: '{alice}'\n  bob: '{bob}'\n")
    return p


def test_basic_auth(app: App, auth_config: Path) -> None:
    with running(app, auth_config) as s:
        r = get(s, headers=basic("alice", PASSWORD))
        assert r.status == 200 and r.body == app.snapshot.text
        assert get(s, headers=basic("alice", PASSWORD)).status == 200  # again, from the verified cache
        assert get(s, headers=basic("bob", "bob's password")).status == 200
        for headers in (
            basic("mallory", PASSWORD),  # wrong user
            basic("alice", "wrong password"),  # wrong password
            basic("alice", PASSWORD + " "),
            basic("bob", PASSWORD),  # another user's password
            {},  # none
            {"Authorization": "Basic !!!not-base64"},
            {"Authorization": "Bearer " + PASSWORD},
            {"Authorization": "Basic " + base64.b64encode(b"alice").decode()},
        ):
            for path in ("/metrics", "/status", "/config", "/", "/nope", "/-/healthy/", "/-/ready/x"):
                r = get(s, path, headers=headers)
                assert r.status == 401, (headers, path)
                assert r.headers["WWW-Authenticate"] == 'Basic realm="spend-exporter"'
                assert b"spend_" not in r.body and b"focus" not in r.body


def test_probes_answer_without_credentials_with_basic_auth_on(app: App, auth_config: Path, tmp_path: Path) -> None:
    """Kubernetes probes send no credentials: /-/healthy and /-/ready stay open (a fixed text, nothing else)."""
    with running(app, auth_config) as s:
        for headers in ({}, basic("alice", "wrong password"), basic("alice", PASSWORD)):
            for method in ("GET", "HEAD"):
                r = get(s, "/-/healthy", method=method, headers=headers)
                assert r.status == 200 and "WWW-Authenticate" not in r.headers
                assert r.body == (b"Healthy\n" if method == "GET" else b"")
                r = get(s, "/-/ready?probe=kubelet", method=method, headers=headers)
                assert r.status == 200
                assert r.body == (b"Ready\n" if method == "GET" else b"")
        # everything else still needs them
        for path in ("/metrics", "/status", "/config", "/"):
            assert get(s, path).status == 401, path
            assert get(s, path, headers=basic("alice", PASSWORD)).status == 200, path
    # not ready yet: the probe sees the 503 (not a 401), and the body says nothing about the sources
    cfg, _ = _secret_config(tmp_path)
    fresh = build_app(cfg, now=lambda: NOW)
    try:
        with running(fresh, auth_config) as s:
            r = get(s, "/-/ready")
            assert r.status == 503
            assert r.body == b"Not ready: waiting for the first refresh of every source\n"
            assert get(s, "/status").status == 401
    finally:
        fresh.close()


def test_tls_and_basic_auth_together(app: App, pki: Pki, auth_config: Path) -> None:
    users = auth_config.read_text()
    wc = _web_config(pki.dir, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n" + users)
    with running(app, wc) as s:
        assert get(s, context=_client_context(pki), headers=basic("alice", PASSWORD)).status == 200
        assert get(s, context=_client_context(pki), headers=basic("alice", "nope")).status == 401


def test_web_config_is_reloaded_when_it_changes(app: App, tmp_path: Path) -> None:
    p = tmp_path / "web.yml"
    h1 = bcrypt.hashpw(b"one", bcrypt.gensalt(rounds=4)).decode()
    p.write_text(f"basic_auth_users:\n  alice: '{h1}'\n")
    with running(app, p) as s:
        assert get(s, headers=basic("alice", "one")).status == 200
        h2 = bcrypt.hashpw(b"two", bcrypt.gensalt(rounds=4)).decode()
        p.write_text(f"basic_auth_users:\n  alice: '{h2}'\n")
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert get(s, headers=basic("alice", "one")).status == 401
        assert get(s, headers=basic("alice", "two")).status == 200
        # a broken edit keeps the previous config
        p.write_text("basic_auth_users: [not, a, mapping]\n")
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
        assert get(s, headers=basic("alice", "two")).status == 200


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_server_config:\n  cert_file: server.crt\n", "cert_file and key_file go together"),
        ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n", "cannot load certificates"),
        ("basic_auth_users:\n  alice: plaintext\n", "basic_auth_users.alice: not a bcrypt hash"),
        ("tls_config:\n  cert_file: x\n", "tls_config: unknown key"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS11\n", "TLS12"),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: Maybe\n",
            "client_auth_type: invalid value 'Maybe'",
        ),
        ("- a list\n", "must be a mapping"),
    ],
)
def test_bad_web_configs(pki: Pki, text: str, message: str) -> None:
    p = pki.dir / "bad-web.yml"
    p.write_text(text)
    with pytest.raises(WebConfigError) as e:
        load_web_config(str(p))
    assert message in str(e.value)


# --------------------------------------------------------------------------- large bodies


def _big_app(size: int) -> Any:
    """A server's view of an app: one snapshot whose body takes the blocking send (``BLOCKING_SEND_MIN``)."""
    line = b'spend_cost_month_to_date_usd{provider="aws",account_id="1",service_name="s",team="t",model=""} 1.5\n'
    text = line * (size // len(line))
    return SimpleNamespace(snapshot=SimpleNamespace(text=text, text_gz=gzip.compress(text)), ready=lambda: True)


def _request(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


def test_a_large_body_reaches_a_slow_reader_whole() -> None:
    app = _big_app(4 * BLOCKING_SEND_MIN)
    with running(app) as s:
        sock = _request(s.port)
        sock.settimeout(30)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
        body = b""
        while len(body) < length:
            body += sock.recv(min(65536, length - len(body)))
            time.sleep(0.001)
        sock.close()
    assert body == app.snapshot.text


def test_a_client_that_stops_reading_a_large_body_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocking send is bounded by the idle timeout (SO_SNDTIMEO), as every other wait of a handler."""
    monkeypatch.setattr(Handler, "timeout", 1.0)
    app = _big_app(64 << 20)  # more than the socket buffers on both sides hold
    with running(app) as s:
        before = threading.active_count()
        sock = _request(s.port)
        time.sleep(0.5)
        assert threading.active_count() == before + 1  # the handler, blocked in its send
        deadline = time.monotonic() + 20
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() == before  # it gave up on the client
        sock.settimeout(10)
        chunks = []
        while chunk := sock.recv(65536):  # what had been sent, then the close
            chunks.append(chunk)
        got = b"".join(chunks)
        sock.close()
    assert got.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(got) < len(app.snapshot.text)  # the send stopped part way

"""``--web.config.file`` beyond ``tests/test_web.py``: TLS floor, identical 401s, client certificates with basic
auth, and changes picked up without a restart (users, the client-certificate requirement, a renewed certificate).

Certificates come from a throwaway CA made here; every check uses a real TLS client on 127.0.0.1.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from exporter.app import App, build_app
from exporter.config import load_config
from exporter.web import Server
from exporter.webconfig import Authenticator, WebConfig, WebConfigError, load_web_config, make_ssl_context
from tests.helpers import running
from tests.pki import cert_pem, key_pem, make_ca, make_leaf, write_pem

NOW = dt.datetime(2025, 3, 15, 10, 30, tzinfo=dt.UTC)
PASSWORD = "s3cret-pa55word"


# --------------------------------------------------------------------------- a throwaway CA


@dataclass
class Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    path: Path

    def issue(self, d: Path, stem: str, server: bool) -> tuple[Path, Path, int]:
        cert, key = make_leaf(stem, self.cert, self.key, server)
        c, k = d / f"{stem}.crt", d / f"{stem}.key"
        # write to temporary names and rename, as cert-manager does, so a reader never sees half a file
        for path, data in ((k, key_pem(key)), (c, cert_pem(cert))):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return c, k, cert.serial_number


def new_ca(d: Path, cn: str) -> Ca:
    cert, key = make_ca(cn)
    path, _ = write_pem(d, cn, cert)
    return Ca(cert, key, path)


@dataclass
class Pki:
    dir: Path
    ca: Ca
    client_cert: Path
    client_key: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = new_ca(tmp_path, "ca")
    ca.issue(tmp_path, "server", server=True)
    cc, ck, _ = ca.issue(tmp_path, "client", server=False)
    return Pki(tmp_path, ca, cc, ck)


def client(pki: Pki, cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca.path))
    if cert:
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


# --------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, focus: Any) -> Iterator[App]:
    d = tmp_path_factory.mktemp("tls-app")
    focus.write(d / "a.csv", [focus.daily(dt.date(2025, 3, 1) + dt.timedelta(days=i), 5.0) for i in range(10)])
    (d / "config.yml").write_text(
        f"cache_path: {d / 'cache.sqlite'}\nsources:\n  - {{name: focus, type: focus, paths: ['{d}/*.csv']}}\n"
    )
    cfg, _ = load_config(d / "config.yml")
    a = build_app(cfg, now=lambda: NOW)
    assert all(o.ok for o in a.refresh_all())
    yield a
    a.close()


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    peer_serial: int | None = None


def get(server: Server, ctx: ssl.SSLContext | None, headers: dict[str, str] | None = None) -> Reply:
    conn: http.client.HTTPConnection
    if ctx is None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/metrics", headers=headers or {})
        r = conn.getresponse()
        serial = None
        if ctx is not None and conn.sock is not None:
            der = conn.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
            serial = x509.load_der_x509_certificate(der).serial_number if der else None
        return Reply(r.status, r.getheaders(), r.read(), serial)
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def rewrite(path: Path, text: str) -> None:
    """Replace the file and make sure its mtime moves, whatever the file system's timestamp granularity."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    st = path.stat()
    if st.st_mtime_ns <= before:
        os.utime(path, ns=(st.st_atime_ns, before + 1_000_000_000))


TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
CLIENT_CERT = "  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n"


# --------------------------------------------------------------------------- TLS 1.2+


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("old", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_below_1_2_is_refused(app: App, pki: Pki, old: ssl.TLSVersion) -> None:
    wc = pki.dir / "web.yml"
    wc.write_text(TLS)
    # what the server will negotiate at least, whatever this OpenSSL lets a client offer
    ctx = make_ssl_context(load_web_config(str(wc)))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version in (ssl.TLSVersion.MAXIMUM_SUPPORTED, ssl.TLSVersion.TLSv1_3)
    with running(app, wc) as s:
        legacy = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        legacy.load_verify_locations(str(pki.ca.path))
        legacy.set_ciphers("DEFAULT:@SECLEVEL=0")
        legacy.minimum_version = legacy.maximum_version = old
        with pytest.raises(ssl.SSLError):
            get(s, legacy)
        # the same client allowed TLS 1.2 gets through: the refusal above was about the version
        legacy.maximum_version = ssl.TLSVersion.TLSv1_2
        legacy.set_ciphers("DEFAULT")
        assert get(s, legacy).status == 200


def test_tls13_floor(pki: Pki) -> None:
    wc = pki.dir / "web.yml"
    wc.write_text(TLS + "  min_version: TLS13\n")
    assert make_ssl_context(load_web_config(str(wc))).minimum_version == ssl.TLSVersion.TLSv1_3


# --------------------------------------------------------------------------- basic auth


def test_401_is_the_same_for_a_wrong_user_and_a_wrong_password(app: App, pki: Pki) -> None:
    wc = pki.dir / "web.yml"
    wc.write_text(TLS + f"basic_auth_users:\n  alice: '{bcrypt_hash(PASSWORD)}'\n  bob: '{bcrypt_hash('other')}'\n")
    with running(app, wc) as s:
        ctx = client(pki)
        replies = {
            "wrong user": get(s, ctx, basic("mallory", PASSWORD)),
            "wrong password": get(s, ctx, basic("alice", PASSWORD + "x")),
            "another user's password": get(s, ctx, basic("bob", PASSWORD)),
            "empty user": get(s, ctx, basic("", PASSWORD)),
            "no credentials": get(s, ctx),
        }
        shapes = {
            name: (r.status, [(k, v) for k, v in r.headers if k.lower() != "date"], r.body)
            for name, r in replies.items()
        }
        first = shapes["wrong user"]
        assert first[0] == 401
        assert ("WWW-Authenticate", 'Basic realm="spend-exporter"') in first[1]
        for name, shape in shapes.items():
            assert shape == first, f"{name} differs from a wrong user"
        assert get(s, ctx, basic("alice", PASSWORD)).status == 200


def test_client_certificate_and_basic_auth_together(app: App, pki: Pki) -> None:
    wc = pki.dir / "web.yml"
    wc.write_text(TLS + CLIENT_CERT + f"basic_auth_users:\n  alice: '{bcrypt_hash(PASSWORD)}'\n")
    with running(app, wc) as s:
        assert get(s, client(pki, cert=True), basic("alice", PASSWORD)).status == 200
        assert get(s, client(pki, cert=True), basic("alice", "nope")).status == 401
        assert get(s, client(pki, cert=True)).status == 401
        # without a certificate the password does not help: refused in the handshake (TLS 1.2) or first read (1.3)
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            get(s, client(pki), basic("alice", PASSWORD))


@pytest.mark.parametrize("mode", ["RequireAndVerifyClientCert", "VerifyClientCertIfGiven"])
def test_verifying_client_certificates_needs_a_client_ca(pki: Pki, mode: str) -> None:
    wc = pki.dir / "web.yml"
    wc.write_text(TLS + f"  client_auth_type: {mode}\n")
    with pytest.raises(WebConfigError, match="client_ca_file: needed"):
        load_web_config(str(wc))


# --------------------------------------------------------------------------- changes without a restart


def test_users_change_over_tls_without_a_restart(app: App, pki: Pki) -> None:
    wc = pki.dir / "web.yml"
    wc.write_text(TLS + f"basic_auth_users:\n  alice: '{bcrypt_hash('first')}'\n")
    with running(app, wc) as s:
        ctx = client(pki)
        assert get(s, ctx, basic("alice", "first")).status == 200
        rewrite(wc, TLS + f"basic_auth_users:\n  alice: '{bcrypt_hash('second')}'\n  carol: '{bcrypt_hash('c')}'\n")
        assert get(s, ctx, basic("alice", "first")).status == 401, "the old password, cached as verified, is gone"
        assert get(s, ctx, basic("alice", "second")).status == 200
        assert get(s, ctx, basic("carol", "c")).status == 200
        rewrite(wc, TLS)  # auth switched off
        assert get(s, ctx).status == 200


def test_client_certificate_requirement_changes_without_a_restart(app: App, pki: Pki) -> None:
    wc = pki.dir / "web.yml"
    wc.write_text(TLS)
    with running(app, wc) as s:
        assert get(s, client(pki)).status == 200
        rewrite(wc, TLS + CLIENT_CERT)
        # the first connection after the edit is the one that notices it
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            get(s, client(pki))
        assert get(s, client(pki, cert=True)).status == 200
        rewrite(wc, TLS)
        assert get(s, client(pki)).status == 200


def test_a_renewed_certificate_is_served_without_a_restart(app: App, pki: Pki) -> None:
    wc = pki.dir / "web.yml"
    wc.write_text(TLS)
    with running(app, wc) as s:
        first = get(s, client(pki)).peer_serial
        _, _, renewed = pki.ca.issue(pki.dir, "server", server=True)  # web.yml itself is untouched
        st = (pki.dir / "server.crt").stat()
        os.utime(pki.dir / "server.crt", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        r = get(s, client(pki))
        assert r.status == 200
        assert r.peer_serial == renewed != first


def test_a_broken_certificate_change_keeps_the_previous_one(
    app: App, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    wc = pki.dir / "web.yml"
    wc.write_text(TLS)
    with running(app, wc) as s:
        first = get(s, client(pki)).peer_serial
        rewrite(pki.dir / "server.key", "not a key\n")
        r = get(s, client(pki))
        assert (r.status, r.peer_serial) == (200, first)
        assert "web config reload failed, keeping the previous one" in caplog.text
        # and a broken web.yml, too
        rewrite(wc, "tls_server_config: [\n")
        assert get(s, client(pki)).status == 200
        # switching TLS off in the file is honoured: plain HTTP now
        pki.ca.issue(pki.dir, "server", server=True)
        rewrite(wc, "{}\n")
        assert get(s, None).status == 200


@pytest.mark.parametrize("rounds", [4, 5])
def test_an_unknown_user_costs_a_real_bcrypt_check(rounds: int) -> None:
    """A wrong user is checked against a valid hash at the users' cost (an invalid one fails at once, and the
    difference in time would tell which user names exist)."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=rounds))
    wc = WebConfig(users={"alice": hashed})
    auth = Authenticator()
    dummy = auth.dummy_hash(wc)
    assert dummy[:7] == hashed[:7] == f"$2b${rounds:02d}$".encode()
    assert bcrypt.checkpw(PASSWORD.encode(), dummy) is False  # a valid hash: no "Invalid salt"
    assert auth.dummy_hash(wc) is dummy  # made once per cost
    assert not auth.check(wc, basic("mallory", PASSWORD)["Authorization"])
    assert auth.check(wc, basic("alice", PASSWORD)["Authorization"])

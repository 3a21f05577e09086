"""HTTP fuzzing of the real server over raw sockets on 127.0.0.1.

Every odd request (method, path, headers, body, protocol, a stalled client) must get a clean reply:
a 4xx (405 with ``Allow``), or 200 where the request is in fact valid, never a 5xx, never a hang
(every socket has a timeout), never a traceback in the log, and the server keeps serving afterwards.
Complements ``tests/test_web.py``, which tests the endpoints with a well-behaved client.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import random
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from exporter.app import App, build_app
from exporter.config import load_config
from exporter.web import Server
from tests.helpers import running

NOW = dt.datetime(2025, 3, 15, 10, 30, tzinfo=dt.UTC)
ENDPOINTS = ["/metrics", "/status", "/config", "/", "/-/ready", "/-/healthy"]
TIMEOUT = 10.0  # per socket operation: a reply that does not come within this is a hang


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, focus: Any) -> Iterator[App]:
    d = tmp_path_factory.mktemp("fuzz")
    rows = [focus.daily(dt.date(2025, 3, 1) + dt.timedelta(days=i), 10.0, Tags='{"team": "search"}') for i in range(14)]
    focus.write(d / "exports" / "a.csv", rows)
    (d / "config.yml").write_text(
        f"cache_path: {d / 'cache.sqlite'}\nsources:\n  - {{name: focus, type: focus, paths: ['{d}/exports/*.csv']}}\n"
    )
    cfg, raw = load_config(d / "config.yml")
    a = build_app(cfg, now=lambda: NOW)
    assert all(o.ok for o in a.refresh_all())
    a.raw_config = raw  # type: ignore[attr-defined]
    yield a
    a.close()


@pytest.fixture(scope="module")
def server(app: App) -> Iterator[Server]:
    with running(app, raw=app.raw_config) as s:  # type: ignore[attr-defined]
        yield s


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever the request, the server logs no traceback and nothing at warning or above."""
    caplog.set_level(logging.DEBUG, logger="exporter.web")
    yield
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert not bad, [r.getMessage() for r in bad]


# --------------------------------------------------------------------------- a raw client


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    raw_head: bytes


_pending: dict[int, bytes] = {}  # bytes read past the end of a reply, by socket: the next reply's start


def read_reply(sock: socket.socket, head_only: bool = False) -> Reply:
    """One HTTP/1.x reply; raises on timeout (a hang) or on a connection closed before a status line."""
    buf = _pending.pop(id(sock), b"")
    while True:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed before a complete reply: {buf[:200]!r}")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 1"):
            break
        buf = rest  # an interim reply (100 Continue): the real one follows
    status_line, *lines = head.decode("iso-8859-1").split("\r\n")
    version, code, *_ = status_line.split(" ", 2)
    assert version in ("HTTP/1.0", "HTTP/1.1"), status_line
    headers = {}
    for line in lines:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = 0 if head_only else int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    assert len(rest) >= length, "reply body shorter than its Content-Length"
    if rest[length:]:
        _pending[id(sock)] = rest[length:]
    return Reply(int(code), headers, rest[:length], head)


def exchange(server: Server, data: bytes, *, head_only: bool = False, send_in_background: bool = False) -> Reply:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        if send_in_background:
            # a huge request: the server may reply (and stop reading) long before we finish sending
            def send() -> None:
                try:
                    sock.sendall(data)
                except OSError:
                    pass

            t = threading.Thread(target=send, daemon=True)
            t.start()
            try:
                return read_reply(sock, head_only)
            finally:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # the server closed first
                t.join(TIMEOUT)
        sock.sendall(data)
        return read_reply(sock, head_only)


def request(method: str = "GET", path: str = "/metrics", headers: list[str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *(["Host: 127.0.0.1"] if headers is None else headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def assert_clean(r: Reply, allowed: set[int]) -> None:
    assert r.status in allowed, (r.status, r.body[:200])
    assert r.status < 500
    assert b"Traceback" not in r.body and b'File "' not in r.body
    if r.status == 405:
        assert r.headers["allow"] == "GET, HEAD"
    if r.status >= 400:
        assert b"spend_" not in r.body, "an error reply carries no metrics"
        assert r.headers["content-type"].startswith("text/plain")


def assert_serving(server: Server, app: App) -> None:
    r = exchange(server, request())
    assert r.status == 200 and r.body == app.snapshot.text


# --------------------------------------------------------------------------- methods


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "method",
    [
        "POST",
        "PUT",
        "DELETE",
        "PATCH",
        "TRACE",
        "CONNECT",
        "OPTIONS",
        "PROPFIND",
        "get",
        "Get",
        "FOO",
        "G\x01T",
        "\xff\xfe",
    ],
)
def test_odd_methods_get_405_with_allow(server: Server, app: App, path: str, method: str) -> None:
    r = exchange(server, request(method, path))
    assert_clean(r, {405})
    assert r.headers["connection"] == "close"
    assert_serving(server, app)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_head_is_get_without_a_body(server: Server, path: str) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(request("HEAD", path) + request("GET", path))
        head = read_reply(sock, head_only=True)
        get = read_reply(sock)  # on the same connection: HEAD sent no body to confuse it
    assert head.status == get.status == 200
    assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.body))


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("//metrics", {200, 404}),  # CPython 3.11.4+ collapses leading slashes
        ("///config", {200, 404}),
        ("/metrics/../config", {404}),
        ("/./metrics", {404}),
        ("/%6Detrics", {404}),
        ("/metrics%2F..%2Fconfig", {404}),
        ("/metrics%00", {404}),
        ("/met\x00rics", {404}),
        ("/metrics\xff\xfe", {404}),
        ("/\xc3\x28", {404}),  # invalid UTF-8
        ("/" + "a" * 60_000, {404}),
        ("/metrics?" + "%" * 5000, {200}),
        ("/metrics?x=\x00\xff", {200}),
        ("/metrics#fragment", {404}),
        ("*", {404}),
        ("metrics", {404}),
        ("http://127.0.0.1/metrics", {200}),  # absolute form (RFC 9112 3.2.2)
        ("https://example.invalid:9/-/healthy?x", {200}),
        ("http://127.0.0.1", {200}),  # an empty path is "/"
        ("/status/", {404}),
        ("/config.json", {404}),
        ("/-/", {404}),
    ],
)
def test_odd_paths(server: Server, app: App, path: str, allowed: set[int]) -> None:
    assert_clean(exchange(server, request("GET", path)), allowed)
    assert_serving(server, app)


def test_a_64_kib_request_line_is_414(server: Server, app: App) -> None:
    assert_clean(exchange(server, request("GET", "/" + "a" * 65_536)), {414})
    assert_clean(exchange(server, request("GET", "/metrics?" + "q" * 1_000_000), send_in_background=True), {414})
    assert_serving(server, app)


# --------------------------------------------------------------------------- headers and protocol


H = "Host: 127.0.0.1"


@pytest.mark.parametrize(
    ("data", "allowed"),
    [
        pytest.param(request(headers=[H, "X-Big: " + "x" * 1_000_000]), {431}, id="1MB-header"),
        pytest.param(request(headers=[H, *(f"X-H{i}: v" for i in range(1000))]), {431}, id="1000-headers"),
        pytest.param(request(headers=[H, *(f"X-H{i}: v" for i in range(90))]), {200}, id="90-headers"),
        pytest.param(request(headers=[H, "Content-Length: abc"]), {400}, id="content-length-not-a-number"),
        pytest.param(request(headers=[H, "Content-Length: -5"], body=b"hello"), {400}, id="content-length-negative"),
        pytest.param(request(headers=[H, "Content-Length: 1e3"]), {400}, id="content-length-float"),
        pytest.param(request(headers=[H, "Content-Length: 0x10"]), {400}, id="content-length-hex"),
        pytest.param(
            request(headers=[H, "Content-Length: 99999999999999999999999"], body=b"x" * 100),
            {413},
            id="content-length-huge",
        ),
        pytest.param(request(headers=[H, "Content-Length: 5"], body=b"hello"), {413}, id="get-with-body"),
        pytest.param(request(headers=[H, "Content-Length: 0"]), {200}, id="content-length-zero"),
        pytest.param(
            request(headers=[H, "Content-Length: 5", "Content-Length: 6"], body=b"hello!"),
            {400},
            id="two-content-lengths",
        ),
        pytest.param(
            request(headers=[H, "Transfer-Encoding: chunked"], body=b"5\r\nhello\r\n0\r\n\r\n"),
            {413},
            id="chunked-get",
        ),
        pytest.param(
            request(headers=[H, "Transfer-Encoding: chunked", "Content-Length: 3"], body=b"0\r\n\r\n"),
            {400},
            id="chunked-and-content-length",
        ),
        pytest.param(b"GET /metrics\r\n", {400}, id="http-0.9"),
        pytest.param(b"GET\r\n", {400}, id="method-only"),
        pytest.param(b"GET HTTP/1.1\r\nHost: x\r\n\r\n", {400}, id="no-path"),
        pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {400}, id="http2-preface"),
        pytest.param(b"GET /metrics HTTP/3.0\r\nHost: x\r\n\r\n", {400}, id="http-3"),
        pytest.param(b"GET /metrics HTTP/1.1.1\r\nHost: x\r\n\r\n", {400}, id="bad-version"),
        pytest.param(b"GET /metrics FTP/1.1\r\nHost: x\r\n\r\n", {400}, id="not-http"),
        pytest.param(b"GET /metrics HTTP/1.1\r\n\r\n", {400}, id="http-1.1-without-host"),
        pytest.param(b"GET /metrics HTTP/1.0\r\n\r\n", {200}, id="http-1.0-without-host"),
        pytest.param(b"GET /metrics HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", {200, 400}, id="header-no-colon"),
        pytest.param(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  folded\r\n\r\n", {200, 400}, id="obs-fold"),
        pytest.param(b"GET /metrics HTTP/1.1\nHost: x\n\n", {200}, id="bare-LF"),
        pytest.param(
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", {400}, id="tls-hello"
        ),
        pytest.param(b"\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", {200, 400}, id="leading-blank-lines"),
        pytest.param(request(headers=[H, "Accept: \x00\xff;;;q=abc,,,"]), {200}, id="bad-accept"),
        pytest.param(request(headers=[H, "Accept: application/openmetrics-text;version=99"]), {200}, id="odd-accept"),
        pytest.param(request(headers=[H, "Accept-Encoding: gzip;q=x, \xff, ,;,"]), {200}, id="bad-accept-encoding"),
        pytest.param(request(headers=[H, "Accept-Encoding: " + "gzip," * 10_000]), {200}, id="long-accept-encoding"),
        pytest.param(request(headers=[H, "Authorization: Basic \x00\xff!!"]), {200}, id="authorization-garbage"),
        pytest.param(request(headers=[H, "Host: a", "Host: b"]), {200, 400}, id="two-hosts"),
        pytest.param(request(headers=[H, "Connection: upgrade", "Upgrade: h2c"]), {200}, id="h2c-upgrade"),
        pytest.param(request(headers=[H, "Expect: 100-continue"]), {200}, id="expect-continue"),
        pytest.param(request(headers=[H, "Range: bytes=0-10"]), {200}, id="range"),
    ],
)
def test_odd_headers_and_protocols(server: Server, app: App, data: bytes, allowed: set[int]) -> None:
    assert_clean(exchange(server, data, send_in_background=len(data) > 65536), allowed)
    assert_serving(server, app)


@pytest.mark.parametrize("method", ["POST", "PUT", "GET"])
def test_huge_request_bodies(server: Server, app: App, method: str) -> None:
    body = b"x" * (8 << 20)
    for framing in ([f"Content-Length: {len(body)}"], ["Transfer-Encoding: chunked"]):
        payload = body if framing[0].startswith("Content") else f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        r = exchange(server, request(method, "/metrics", [H, *framing], payload), send_in_background=True)
        assert_clean(r, {405} if method != "GET" else {413})
        assert r.headers["connection"] == "close"
    assert_serving(server, app)


def test_errors_keep_or_close_the_connection_consistently(server: Server, app: App) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        # a 404 keeps the connection; the next request on it is served normally
        sock.sendall(request("GET", "/nope") + request("GET", "/metrics"))
        assert read_reply(sock).status == 404
        assert read_reply(sock).body == app.snapshot.text
        # a refused body closes it: the body's bytes are never parsed as a request
        sock.sendall(request(headers=[H, "Content-Length: 40"], body=request("DELETE", "/metrics")[:40]))
        r = read_reply(sock)
        assert r.status == 413 and r.headers["connection"] == "close"
        assert sock.recv(100) == b""


def test_authorization_garbage_with_basic_auth(app: App, tmp_path: Path) -> None:
    p = tmp_path / "web.yml"
    p.write_text(f"basic_auth_users:\n  alice: '{bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=4)).decode()}'\n")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    with running(app, p, raw=app.raw_config) as s:  # type: ignore[attr-defined]
        for value in (
            "Basic",
            "Basic ",
            "Basic " + b64(b":"),
            "Basic " + b64(b"alice:"),
            "Basic " + b64(b"alice:" + b"p" * 100),  # over bcrypt's 72 bytes
            "Basic " + b64(b"alice:pw\x00"),
            "Basic " + b64(b"\xff\xfe:\xff"),  # not UTF-8
            "Basic " + b64(b"alice:pw") + "====",
            "Basic \xff\xfe",
            "basic " + b64(b"alice:wrong"),
            "Digest username=alice",
            "Basic " + "A" * 60_000,
        ):
            r = exchange(s, request(headers=[H, f"Authorization: {value}"]))
            assert_clean(r, {401})
            assert r.headers["www-authenticate"] == 'Basic realm="spend-exporter"'
        assert exchange(s, request(headers=[H, "Authorization: basic " + b64(b"alice:pw")])).status == 200
        assert exchange(s, request(headers=[H, "Authorization: Basic " + b64(b"alice:pw")])).status == 200


# --------------------------------------------------------------------------- stalled clients


def test_slowloris_does_not_block_other_scrapers(server: Server, app: App) -> None:
    stalled = []
    try:
        for i in range(40):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
            # half a request line, half the headers, or a promised body that never comes
            sock.sendall(
                [
                    b"GET /metr",
                    b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: a",
                    request("POST", "/metrics", [H, "Content-Length: 100"]),
                ][i % 3]
            )
            stalled.append(sock)
        for path in ENDPOINTS:
            r = exchange(server, request("GET", path))
            assert r.status == 200, path
        # and on a kept-alive connection, several scrapes in a row
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            for _ in range(5):
                sock.sendall(request())
                assert read_reply(sock).body == app.snapshot.text
    finally:
        for sock in stalled:
            sock.close()
    assert_serving(server, app)


def test_clients_that_vanish(server: Server, app: App) -> None:
    for data in (b"", b"GET /metrics HTTP/1.1\r\n", request(), request("GET", "/status")):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        sock.sendall(data)
        # reset instead of a clean close, before the reply is read
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    assert_serving(server, app)


# --------------------------------------------------------------------------- random requests


def _random_request(rng: random.Random) -> bytes:
    methods = ["GET", "HEAD", "POST", "get", "OPTIONS", "X" * rng.randint(1, 40), "GET\x00"]
    paths = [*ENDPOINTS, "/nope", "//", "/%", "/%zz", "/\x7f", "/" + "é" * 50, "?", "/metrics?a=%00&b"]
    versions = ["HTTP/1.1", "HTTP/1.0", "HTTP/1.1 ", "HTTP/0.9", "HTTP/2", "HTTP/1.x", ""]
    path = rng.choice(paths)
    if rng.random() < 0.3:
        path = "".join(chr(rng.randint(0x21, 0xFF)) for _ in range(rng.randint(1, 200)))
    line = f"{rng.choice(methods)} {path} {rng.choice(versions)}".rstrip(" ") if rng.random() < 0.9 else path
    headers = ["Host: 127.0.0.1"] if rng.random() < 0.8 else []
    pool = [
        "Accept: " + rng.choice(["*/*", "application/openmetrics-text", ";;", "\xff"]),
        "Accept-Encoding: " + rng.choice(["gzip", "br, gzip;q=0", "", "\x00"]),
        "Content-Length: " + rng.choice(["0", "1", "-1", "x", ""]),
        "Transfer-Encoding: " + rng.choice(["chunked", "gzip", "x"]),
        "Authorization: " + "".join(chr(rng.randint(0x20, 0xFF)) for _ in range(rng.randint(0, 100))),
        "Connection: " + rng.choice(["close", "keep-alive", "upgrade", "\x01"]),
        "".join(chr(rng.randint(0x21, 0x7E)) for _ in range(rng.randint(1, 30))),
    ]
    headers += rng.sample(pool, rng.randint(0, len(pool)))
    body = bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 64))) if rng.random() < 0.3 else b""
    sep = rng.choice(["\r\n", "\r\n", "\n"])
    return (sep.join([line, *headers]) + sep + sep).encode("latin-1") + body


def test_random_requests(server: Server, app: App) -> None:
    rng = random.Random(20261122)
    statuses: dict[int, int] = {}
    for _ in range(400):
        data = _random_request(rng)
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # whatever was sent is the whole request; the server then closes
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        if not received:
            # only a request with no request line at all may go unanswered
            assert not data.strip(b"\r\n").split(b"\n")[0].strip(), data[:200]
            continue
        assert received[:9] in (b"HTTP/1.1 ", b"HTTP/1.0 "), (data[:300], received[:300])
        status = int(received[9:12])
        assert b"Traceback" not in received
        assert status in {200, 400, 404, 405, 413, 414, 431}, (data[:300], received[:300])
        statuses[status] = statuses.get(status, 0) + 1
    assert statuses.get(400, 0) > 0 and statuses.get(200, 0) > 0 and statuses.get(405, 0) > 0, statuses
    assert_serving(server, app)

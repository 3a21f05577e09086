"""HTTP: /metrics (pre-rendered bytes), /, /-/healthy, /-/ready, /status, /config, /api/v1/spend (the cache,
queried on the request's thread: exporter.spendapi), POST /-/guard/alertmanager.

A ``ThreadingHTTPServer`` hardened for what a scrape port meets (docs/reliability.md, "HTTP fuzzing"): strict
framing, 405 for every other method, no HTTP/0.9 or HTTP/2, ``Host`` required on HTTP/1.1, a lingering close,
an idle timeout, and large bodies sent in one blocking call. TLS and basic auth come from ``--web.config.file``
(``exporter.webconfig``). With basic auth on, ``/-/healthy`` and ``/-/ready`` still answer without credentials
(``UNAUTHENTICATED_PATHS``), so that probes work; ``POST /-/guard/alertmanager`` takes the guard's bearer token
instead (``GUARD_PATH``).
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from exporter import __version__, spendapi
from exporter.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE
from exporter.guard import MAX_PAYLOAD as MAX_GUARD_BODY
from exporter.guard import PayloadError, parse_payload
from exporter.landing import landing_page
from exporter.status import status_report
from exporter.webconfig import Authenticator, WebConfig, WebConfigError, WebConfigWatcher, make_ssl_context

log = logging.getLogger(__name__)

MAX_BODY = 0  # no endpoint takes a body
# A client that is still sending when we close gets a reset, which can destroy our reply before it reads it;
# read (and drop) this much of what it sends, for at most this long, before closing (a "lingering close").
LINGER_BYTES = 1 << 20
LINGER_SECONDS = 2.0
# A connection idle (or a client sending nothing) this long is closed, so stalled clients do not pin threads.
IDLE_TIMEOUT = 60.0
# a body at least this long goes out in one blocking send (Handler._send_body)
BLOCKING_SEND_MIN = 256 << 10

# Kubernetes probes (and the image's HEALTHCHECK) send no credentials: these answer a fixed text and nothing else,
# so they stay open with basic auth on. TLS, and a required client certificate, still apply to them.
UNAUTHENTICATED_PATHS = frozenset({"/-/healthy", "/-/ready"})

# Alertmanager's webhook to the guard (exporter.guard). It authenticates with the guard's bearer token, not with
# basic auth: Alertmanager's http_config sends one Authorization header, Basic or Bearer, never both. With basic
# auth on, this path alone takes the bearer token instead; TLS (and a client certificate) still apply.
GUARD_PATH = "/-/guard/alertmanager"


def negotiate(accept: str | None) -> bool:
    """True when the client prefers OpenMetrics (as prometheus_client decides)."""
    for part in (accept or "").split(","):
        media = part.split(";")[0].strip()
        if media == "application/openmetrics-text":
            return True
    return False


def gzip_accepted(accept_encoding: str | None) -> bool:
    return any(e.split(";")[0].strip() == "gzip" for e in (accept_encoding or "").split(","))


class Server(ThreadingHTTPServer):
    """One thread per connection; TLS is set up per connection from the current web config, so a changed
    certificate or client-certificate requirement applies to the next connection without a restart."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        app: Any,
        web_config_path: str | None = None,
        config_redacted: dict[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.app_config_redacted = config_redacted or {}
        self.web = WebConfigWatcher(web_config_path)
        self.auth = Authenticator()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, Handler)
        self._ssl: ssl.SSLContext | None = None
        self._ssl_for: WebConfig | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        wc = self.web.current()
        if wc.tls:
            if self._ssl_for is not wc:
                try:
                    self._ssl = make_ssl_context(wc)
                except WebConfigError as e:  # files changed again since the config was loaded
                    log.error("TLS: keeping the previous certificates: %s", e)
                self._ssl_for = wc
            assert self._ssl is not None
            sock.settimeout(10)
            sock = self._ssl.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError) as e:
                log.debug("TLS handshake with %s failed: %s", client_address[0], e)
                return
            request.settimeout(30)
        super().finish_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        try:
            request.shutdown(socket.SHUT_WR)
            # lingering close: let the client read our reply before its unsent data turns into a reset
            deadline = time.monotonic() + LINGER_SECONDS
            left = LINGER_BYTES
            while left > 0:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
                request.settimeout(wait)
                chunk = request.recv(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        except (OSError, ValueError):
            pass
        self.close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, ConnectionError | TimeoutError | ssl.SSLError):
            # a client that went away or stalled: routine, not worth a traceback
            log.debug("connection from %s ended: %s", client_address[0], err.__class__.__name__)
        else:
            log.warning("error serving %s", client_address[0], exc_info=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class Handler(BaseHTTPRequestHandler):
    """The endpoints, and the stdlib's request parsing made strict (see the module docstring)."""

    server: Server
    raw_requestline: bytes
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes; with Nagle on, a small (gzip) body waits ~40 ms for the delayed ACK
    disable_nagle_algorithm = True
    server_version = f"spend-exporter/{__version__}"
    sys_version = ""
    timeout = IDLE_TIMEOUT

    def setup(self) -> None:
        super().setup()
        if not isinstance(self.connection, ssl.SSLSocket):
            # bounds a blocking send (_send_body) as the idle timeout bounds everything else
            tv = struct.pack("ll", int(self.timeout), int(self.timeout % 1 * 1e6))
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)

    def _send_body(self, body: bytes) -> None:
        sock = self.connection
        if len(body) < BLOCKING_SEND_MIN or isinstance(sock, ssl.SSLSocket):
            self.wfile.write(body)
            return
        # With a timeout set, sendall polls and sends a socket buffer's worth at a time, and takes the GIL back
        # for each piece: behind 50 other handlers and a snapshot build, a 14 MB body waited for it dozens of
        # times. A blocking sendall hands the kernel the whole body in one call outside the GIL; SO_SNDTIMEO
        # (setup) makes a client that stops reading fail it (BlockingIOError) after the idle timeout.
        sock.settimeout(None)
        try:
            sock.sendall(body)
        finally:
            sock.settimeout(self.timeout)

    def __getattr__(self, name: str) -> Any:
        # an unknown method (PROPFIND, lowercase "get", garbage) gets 405 + Allow, as the known ones do,
        # rather than the stdlib's 501
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def parse_request(self) -> bool:
        # RFC 9112 2.2: ignore empty lines before the request line
        line: bytes = self.raw_requestline
        for _ in range(8):
            if line not in (b"\r\n", b"\n"):
                break
            line = self.raw_requestline = self.rfile.readline(65537)
        if len(line.split()) == 2:
            # HTTP/0.9 ("GET /path"): the stdlib would wait for headers that never come, then reply with a body
            # and no status line
            self.command = ""
            self.request_version, self.close_connection = "HTTP/1.0", True
            self.requestline = str(line, "iso-8859-1").rstrip("\r\n")
            self.send_error(400, "Bad request: HTTP/0.9 is not supported")
            return False
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":
            self.send_error(400, "Bad request: HTTP/0.9 is not supported")
            return False
        if self.request_version == "HTTP/1.1" and self.headers.get("Host") is None:
            self.send_error(400, "Bad request: missing Host header")
            return False
        if self.path.startswith(("http://", "https://")):
            # absolute form (RFC 9112 3.2.2), as a proxy or a curious client sends it
            url = urlsplit(self.path)
            self.path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        return True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # the stdlib error page echoes the request; send a plain, short reply instead
        if message and message.endswith(")") and " (" in message:
            message = message.split(" (", 1)[0]  # "Bad request syntax ('<the request line>')": do not echo it
        if code == 505:
            # "PRI * HTTP/2.0" (a prior-knowledge HTTP/2 client) or HTTP/3+: a client error here, not ours
            code, message = 400, "Bad request: only HTTP/1.x is served"
        elif code == 501:
            code = 405
        if code == 405:
            self._not_allowed()
            return
        self._reply(
            code,
            (message or self.responses.get(code, ("error",))[0]).encode() + b"\n",
            "text/plain; charset=utf-8",
            close=True,
        )

    def _reply(
        self,
        code: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        if self.request_version not in ("HTTP/1.0", "HTTP/1.1"):
            # the stdlib assumes HTTP/0.9 until it has parsed a version, and then writes no status line
            self.request_version = "HTTP/1.0"
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-store")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self._send_body(body)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True

    def _authorised(self) -> bool:
        wc = self.server.web.current()
        if self.server.auth.check(wc, self.headers.get("Authorization")):
            return True
        self._reply(
            401, b"Unauthorized\n", "text/plain; charset=utf-8", {"WWW-Authenticate": 'Basic realm="spend-exporter"'}
        )
        return False

    def _body_refused(self) -> bool:
        """Replies and returns True when the request has (or may have) a body: no endpoint takes one."""
        lengths = self.headers.get_all("Content-Length") or []
        chunked = self.headers.get("Transfer-Encoding") is not None
        if chunked and lengths:
            self.send_error(400, "Bad request: both Content-Length and Transfer-Encoding")
            return True
        if len(set(lengths)) > 1 or any(not v.strip().isdigit() for v in lengths):
            self.send_error(400, "Bad request: invalid Content-Length")
            return True
        if chunked or (lengths and int(lengths[0]) > MAX_BODY):
            self._reply(413, b"Request body not allowed\n", "text/plain; charset=utf-8", close=True)
            return True
        return False

    def do_GET(self) -> None:
        if self._body_refused():
            return
        path = self.path.split("?", 1)[0]
        if path == GUARD_PATH:
            self._reply(405, b"Method not allowed\n", "text/plain; charset=utf-8", {"Allow": "POST"}, close=True)
            return
        if path not in UNAUTHENTICATED_PATHS and not self._authorised():
            return
        app = self.server.app
        if path == "/metrics":
            snap = app.snapshot
            gz = gzip_accepted(self.headers.get("Accept-Encoding"))
            if negotiate(self.headers.get("Accept")):
                body, body_gz = snap.openmetrics()
                ctype = OPENMETRICS_CONTENT_TYPE
            else:
                body, body_gz = snap.text, snap.text_gz
                ctype = TEXT_CONTENT_TYPE
            if gz:
                self._reply(200, body_gz, ctype, {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
            else:
                self._reply(200, body, ctype, {"Vary": "Accept-Encoding"})
        elif path == "/":
            self._reply(200, landing_page(app).encode(), "text/html; charset=utf-8")
        elif path == "/-/healthy":
            self._reply(200, b"Healthy\n", "text/plain; charset=utf-8")
        elif path == "/-/ready":
            if app.ready():
                self._reply(200, b"Ready\n", "text/plain; charset=utf-8")
            else:
                self._reply(
                    503, b"Not ready: waiting for the first refresh of every source\n", "text/plain; charset=utf-8"
                )
        elif path == "/status":
            self._reply(200, json.dumps(status_report(app), indent=2).encode() + b"\n", "application/json")
        elif path == "/config":
            self._reply(200, json.dumps(self.server.app_config_redacted, indent=2).encode() + b"\n", "application/json")
        elif path == spendapi.PATH:
            query = self.path.split("?", 1)[1] if "?" in self.path else ""
            code, answer = spendapi.answer(
                app.store,
                query,
                app.now().date(),
                app.source_names(),
                extra=app.config.attribution.label_names,
            )
            self._reply(code, json.dumps(answer).encode() + b"\n", "application/json")
        else:
            self._reply(404, b"Not found\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _not_allowed(self) -> None:
        self._reply(405, b"Method not allowed\n", "text/plain; charset=utf-8", {"Allow": "GET, HEAD"}, close=True)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != GUARD_PATH:
            self._not_allowed()
            return
        guard = getattr(self.server.app, "guard", None)
        if guard is None or not guard.authorised(self.headers.get("Authorization")):
            # the body is left unread: the reply closes the connection (after a lingering close)
            self._reply(401, b"Unauthorized\n", "text/plain; charset=utf-8", {"WWW-Authenticate": "Bearer"}, close=True)
            return
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding") is not None or len(lengths) != 1 or not lengths[0].strip().isdigit():
            self._reply(411, b"Content-Length required\n", "text/plain; charset=utf-8", close=True)
            return
        length = int(lengths[0])
        if length > MAX_GUARD_BODY:
            self._reply(413, b"Request body too large\n", "text/plain; charset=utf-8", close=True)
            return
        body = self.rfile.read(length)
        try:
            alerts = parse_payload(body)
        except PayloadError as e:
            self._reply(400, f"Bad request: {e}\n".encode(), "text/plain; charset=utf-8")
            return
        try:
            actions = guard.receive(alerts)
        except Exception:
            # the record could not be written: Alertmanager retries a 5xx, and the claim keeps that idempotent
            log.exception("guard: recording the actions failed")
            self._reply(500, b"The guard could not record the actions\n", "text/plain; charset=utf-8")
            return
        self._reply(200, json.dumps({"actions": actions}).encode() + b"\n", "application/json")


def serve(app: Any, host: str, port: int, web_config_path: str | None, config_redacted: dict[str, Any]) -> Server:
    return Server((host, port), app, web_config_path, config_redacted)

"""HTTP: /metrics (pre-rendered bytes), /, /-/healthy, /-/ready, /status, /config.

``--web.config.file`` takes the exporter-toolkit format::

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_ca_file: ca.crt              # optional
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12
    basic_auth_users:
      alice: $2y$10$...                    # bcrypt

The file is re-read when it changes, as the exporter-toolkit does.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import os
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from exporter import __version__
from exporter.collector import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE

log = logging.getLogger(__name__)

MAX_BODY = 0  # no endpoint takes a body

CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}


class WebConfigError(Exception):
    pass


@dataclass
class WebConfig:
    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    users: dict[str, bytes] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.cert_file is not None


def load_web_config(path: str | None) -> WebConfig:
    if not path:
        return WebConfig()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise WebConfigError(
            f"web config {path}: {e.__class__.__name__}: {getattr(e, 'strerror', None) or e}"
        ) from None
    if not isinstance(data, dict):
        raise WebConfigError(f"web config {path}: must be a mapping")
    unknown = set(data) - {"tls_server_config", "basic_auth_users", "http_server_config"}
    if unknown:
        raise WebConfigError(f"web config {path}: {sorted(unknown)[0]}: unknown key")
    wc = WebConfig()
    tls = data.get("tls_server_config") or {}
    if not isinstance(tls, dict):
        raise WebConfigError(f"web config {path}: tls_server_config: must be a mapping")
    allowed = {
        "cert_file",
        "key_file",
        "client_ca_file",
        "client_auth_type",
        "min_version",
        "max_version",
        "cipher_suites",
    }
    for k in tls:
        if k not in allowed:
            raise WebConfigError(f"web config {path}: tls_server_config.{k}: unknown or unsupported key")
    base = Path(path).parent

    def rel(p: Any) -> str | None:
        return str(base / p) if p else None

    wc.cert_file, wc.key_file = rel(tls.get("cert_file")), rel(tls.get("key_file"))
    if bool(wc.cert_file) != bool(wc.key_file):
        raise WebConfigError(f"web config {path}: tls_server_config: cert_file and key_file go together")
    wc.client_ca_file = rel(tls.get("client_ca_file"))
    wc.client_auth_type = str(
        tls.get("client_auth_type") or ("RequireAndVerifyClientCert" if wc.client_ca_file else "NoClientCert")
    )
    if wc.client_auth_type not in CLIENT_AUTH_TYPES:
        raise WebConfigError(
            f"web config {path}: tls_server_config.client_auth_type: invalid value {wc.client_auth_type!r}"
        )
    wc.min_version = str(tls.get("min_version") or "TLS12")
    if wc.min_version not in TLS_VERSIONS:
        raise WebConfigError(f"web config {path}: tls_server_config.min_version: must be TLS12 or TLS13")
    users = data.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise WebConfigError(f"web config {path}: basic_auth_users: must be a mapping of user to bcrypt hash")
    for user, h in users.items():
        if not isinstance(h, str) or not h.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"web config {path}: basic_auth_users.{user}: not a bcrypt hash")
        wc.users[str(user)] = h.replace("$2y$", "$2b$", 1).encode()
    if wc.tls:
        make_ssl_context(wc)  # fail at start, not at the first connection
    return wc


def make_ssl_context(wc: WebConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[wc.min_version]
    try:
        ctx.load_cert_chain(wc.cert_file or "", wc.key_file)
        if wc.client_ca_file:
            ctx.load_verify_locations(wc.client_ca_file)
    except (OSError, ssl.SSLError) as e:
        raise WebConfigError(
            f"TLS: cannot load certificates: {e.__class__.__name__}: {getattr(e, 'strerror', None) or e}"
        ) from None
    ctx.verify_mode = CLIENT_AUTH_TYPES[wc.client_auth_type]
    return ctx


class Authenticator:
    """bcrypt basic auth with a cache of verified credentials, so a scrape does not pay bcrypt each time."""

    # a hash to check against for unknown users, so that a wrong user costs as much as a wrong password
    _DUMMY = b"$2b$10$" + b"C" * 53

    def __init__(self) -> None:
        self._ok: set[tuple[str, bytes]] = set()
        self._lock = threading.Lock()

    def check(self, wc: WebConfig, header: str | None) -> bool:
        if not wc.users:
            return True
        if not header or not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        import bcrypt

        hashed = wc.users.get(user)
        key = (user, hashlib.sha256(password.encode() + (hashed or b"")).digest())
        with self._lock:
            if hashed is not None and key in self._ok:
                return True
        try:
            ok = bcrypt.checkpw(password.encode(), hashed or self._DUMMY)
        except ValueError:
            ok = False
        ok = ok and hashed is not None
        if ok:
            with self._lock:
                if len(self._ok) > 1000:
                    self._ok.clear()
                self._ok.add(key)
        return ok


class WebConfigWatcher:
    """Re-reads the web config file when it changes; a broken edit keeps the previous config."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._mtime = self._stat()
        self.config = load_web_config(path)
        self._lock = threading.Lock()

    def _stat(self) -> float | None:
        try:
            return os.stat(self.path).st_mtime_ns if self.path else None
        except OSError:
            return None

    def current(self) -> WebConfig:
        if self.path:
            m = self._stat()
            if m != self._mtime:
                with self._lock:
                    if m != self._mtime:
                        self._mtime = m
                        try:
                            self.config = load_web_config(self.path)
                            log.info("web config %s reloaded", self.path)
                        except WebConfigError as e:
                            log.error("web config reload failed, keeping the previous one: %s", e)
        return self.config


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
                self._ssl = make_ssl_context(wc)
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

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("error serving %s", client_address, exc_info=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes; with Nagle on, a small (gzip) body waits ~40 ms for the delayed ACK
    disable_nagle_algorithm = True
    server_version = f"spend-exporter/{__version__}"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # the stdlib error page echoes the request; send a plain, short reply instead
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
                self.wfile.write(body)
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

    def do_GET(self) -> None:
        if int(self.headers.get("Content-Length") or 0) > MAX_BODY:
            self._reply(413, b"Request body not allowed\n", "text/plain; charset=utf-8", close=True)
            return
        if not self._authorised():
            return
        path = self.path.split("?", 1)[0]
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
            self._reply(200, json.dumps(app.status(), indent=2).encode() + b"\n", "application/json")
        elif path == "/config":
            self._reply(200, json.dumps(self.server.app_config_redacted, indent=2).encode() + b"\n", "application/json")
        else:
            self._reply(404, b"Not found\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _not_allowed(self) -> None:
        self._reply(405, b"Method not allowed\n", "text/plain; charset=utf-8", {"Allow": "GET, HEAD"}, close=True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed


def landing_page(app: Any) -> str:
    st = app.status()
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(s['name'])}</td><td>{e(s['type'])}</td>"
        f"<td class={'up' if s['up'] else 'down'}>{'up' if s['up'] else 'down'}</td>"
        f"<td>{e(s['last_success'] or 'never')}</td><td>{e(s['next_refresh'] or '')}</td>"
        f"<td>{s['month_to_date_usd']:,.2f}</td><td>{e(s['last_error'] or '')}"
        f"{' (paid-call cap reached for today)' if s['paid_call_cap_reached'] else ''}</td></tr>"
        for s in st["sources"]
    )
    budgets = "".join(
        f"<tr><td>{e(b['name'])}</td><td>{e(b['team'])}</td><td>{b['spent_usd']:,.2f}</td>"
        f"<td>{b['amount_usd']:,.2f}</td><td>{b['used_ratio'] * 100:.1f}%</td></tr>"
        for b in st["budgets"]
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>spend-exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.up{{color:#070}}.down{{color:#b00}}</style></head>
<body><h1>spend-exporter {e(__version__)}</h1>
<p><a href="/metrics">Metrics</a> · <a href="/status">Status (JSON)</a> · <a href="/config">Config (redacted)</a>
· <a href="/-/ready">Ready</a></p>
<h2>Sources</h2>
<table><tr><th>source</th><th>type</th><th>status</th><th>last success</th><th>next refresh</th>
<th>month to date (USD)</th><th>last error</th></tr>{rows}</table>
<h2>Budgets</h2>
<table><tr><th>budget</th><th>team</th><th>spent (USD)</th><th>limit (USD)</th><th>used</th></tr>{budgets}</table>
</body></html>
"""


def serve(app: Any, host: str, port: int, web_config_path: str | None, config_redacted: dict[str, Any]) -> Server:
    return Server((host, port), app, web_config_path, config_redacted)

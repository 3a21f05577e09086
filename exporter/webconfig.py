"""``--web.config.file``: the exporter-toolkit format, its bcrypt basic auth and TLS context, re-read on change::

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_ca_file: ca.crt              # optional
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12
    basic_auth_users:
      alice: $2y$10$...                    # bcrypt

Paths are relative to the file. The file, and the certificates and key it names, are re-read when they change,
as the exporter-toolkit does; a broken edit keeps the previous config. Nothing here knows about HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}


class WebConfigError(Exception):
    """The web config file cannot be read or is invalid; the message names the key, never a secret."""


@dataclass
class WebConfig:
    """One reading of the web config file: TLS settings (paths taken relative to the file) and bcrypt hashes by user."""

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
    except yaml.YAMLError as e:
        # str(e) quotes the offending line, which may hold a password hash: give only where and what
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise WebConfigError(
            f"web config {path}: invalid YAML{where}: {getattr(e, 'problem', None) or e.__class__.__name__}"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise WebConfigError(
            f"web config {path}: cannot read: {e.__class__.__name__}: {getattr(e, 'strerror', None) or 'not UTF-8'}"
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
    if wc.client_auth_type in ("RequireAndVerifyClientCert", "VerifyClientCertIfGiven") and not wc.client_ca_file:
        raise WebConfigError(
            f"web config {path}: tls_server_config.client_ca_file: needed with client_auth_type {wc.client_auth_type}"
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

    def __init__(self) -> None:
        self._ok: set[tuple[str, bytes]] = set()
        self._dummies: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def dummy_hash(self, wc: WebConfig) -> bytes:
        """A valid hash at the users' bcrypt cost, checked for an unknown user so that a wrong user takes as
        long as a wrong password (an invalid hash would fail at once and tell which users exist)."""
        import bcrypt

        cost = next(iter(wc.users.values()))[4:6]
        with self._lock:
            h = self._dummies.get(cost)
        if h is None:
            rounds = int(cost) if cost.isdigit() and 4 <= int(cost) <= 31 else 10
            h = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(rounds=rounds))
            with self._lock:
                self._dummies[cost] = h
        return h

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
            ok = bcrypt.checkpw(password.encode(), hashed or self.dummy_hash(wc))
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
    """Re-reads the web config file when it, or a certificate or key it names, changes.

    A broken edit keeps the previous config. Watching the certificate files too means a renewed
    certificate (cert-manager, certbot) is served without a restart, as the exporter-toolkit does.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.config = load_web_config(path)
        self._mtime = self._stat()
        self._lock = threading.Lock()

    def _stat(self) -> tuple[int, ...] | None:
        if not self.path:
            return None
        cfg: WebConfig = self.config
        files = [self.path, *(f for f in (cfg.cert_file, cfg.key_file, cfg.client_ca_file) if f)]
        out = []
        for f in files:
            try:
                out.append(os.stat(f).st_mtime_ns)
            except OSError:
                out.append(-1)
        return tuple(out)

    def current(self) -> WebConfig:
        if self.path:
            m = self._stat()
            if m != self._mtime:
                with self._lock:
                    if m != self._mtime:
                        self._mtime = m
                        try:
                            self.config = load_web_config(self.path)
                            self._mtime = self._stat()  # the new config may name other files
                            log.info("web config %s reloaded", self.path)
                        except WebConfigError as e:
                            log.error("web config reload failed, keeping the previous one: %s", e)
        return self.config

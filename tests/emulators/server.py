"""A small threaded HTTP server that every emulator builds on, with fault injection.

An emulator subclasses ``Emulator`` and implements ``handle(request)``; it
may override ``throttle_response`` (each provider throttles in its own way)
and ``wrong_shape_body``. Tests inject faults with ``emulator.inject(...)``:

    with AwsEmulator(dataset) as emu:
        emu.inject(Fault("503", times=2))          # next two requests fail
        emu.inject(Fault("throttle", after=2))     # the third request is throttled
        emu.inject(Fault("timeout", delay=5))      # the next request hangs 5 s
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

FAULT_KINDS = (
    "500",
    "503",
    "401",
    "403",
    "reset",  # close the connection without a reply
    "timeout",  # sleep ``delay`` seconds before replying normally
    "throttle",  # the provider's own throttling reply
    "malformed",  # a 200 whose body is not JSON
    "wrong_shape",  # a 200 with valid JSON of the wrong shape
)


@dataclass
class Fault:
    kind: str
    times: int = 1  # how many matching requests it applies to; -1 = until cleared
    after: int = 0  # let this many matching requests through first
    path_contains: str = ""  # only requests whose path contains this
    delay: float = 0.0  # for "timeout"
    retry_after: float = 1.0  # for "throttle"
    when: Callable[[Request], bool] | None = None  # only requests this accepts (e.g. "carries a page token")

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}")


@dataclass
class Request:
    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def q(self, name: str, default: str | None = None) -> str | None:
        v = self.query.get(name)
        return v[0] if v else default

    def qlist(self, name: str) -> list[str]:
        """All values of ``name``, accepting both ``name=a&name=b`` and ``name[]=a``."""
        return self.query.get(name, []) + self.query.get(name + "[]", [])


@dataclass
class Response:
    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] = b""
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if isinstance(self.body, dict | list):
            body = json.dumps(self.body).encode()
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(self.body, str):
            body = self.body.encode()
        else:
            body = self.body
        return body, headers


class Emulator:
    """Base class: serves ``handle`` on 127.0.0.1 at a free port."""

    name = "emulator"

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- to override -------------------------------------------------------
    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def throttle_response(self, fault: Fault) -> Response:
        return Response(429, {"error": "throttled"}, {"Retry-After": str(int(fault.retry_after))})

    def wrong_shape_body(self, request: Request) -> Any:
        return {"unexpected": [1, 2, 3], "shape": "wrong"}

    # -- faults ------------------------------------------------------------
    def inject(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, request: Request) -> Fault | None:
        with self._lock:
            for f in self._faults:
                if f.path_contains and f.path_contains not in request.path:
                    continue
                if f.when is not None and not f.when(request):
                    continue
                if f.after > 0:
                    f.after -= 1
                    continue
                if f.times == 0:
                    continue
                if f.times > 0:
                    f.times -= 1
                return f
        return None

    # -- serving -------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "emulator not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Emulator:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body are two writes: without this a small reply waits for the delayed ACK
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                req = Request(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                with emulator._lock:
                    emulator.requests.append(req)
                fault = emulator._take_fault(req)
                resp: Response
                if fault is None:
                    resp = emulator._safe_handle(req)
                elif fault.kind == "reset":
                    self.close_connection = True
                    try:
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                elif fault.kind == "timeout":
                    time.sleep(fault.delay)
                    resp = emulator._safe_handle(req)
                elif fault.kind == "throttle":
                    resp = emulator.throttle_response(fault)
                elif fault.kind == "malformed":
                    resp = Response(200, b'{"data": [ {"broken', {"Content-Type": "application/json"})
                elif fault.kind == "wrong_shape":
                    resp = Response(200, emulator.wrong_shape_body(req))
                else:
                    code = int(fault.kind)
                    resp = Response(code, {"error": {"code": code, "message": "injected fault"}})
                data, headers = resp.encoded()
                try:
                    self.send_response(resp.status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"{self.name}-emulator", daemon=True)
        self._thread.start()
        return self

    def _safe_handle(self, req: Request) -> Response:
        try:
            return self.handle(req)
        except Exception as e:  # an emulator bug should be visible, not a hung client
            return Response(599, {"error": f"emulator error: {e.__class__.__name__}: {e}"})

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

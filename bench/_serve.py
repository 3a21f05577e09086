"""One /metrics server for the scrape benchmark, in its own process: ``python -m bench._serve KIND DATA_DIR PORT``.

KIND is ``exporter`` (spend-exporter's own HTTP server and snapshot), ``naive`` (a prometheus_client
custom collector that builds GaugeMetricFamily objects from the same in-memory data on every scrape,
served by prometheus_client's HTTP server) or ``bare`` (a stdlib HTTP server that only sends the same
pre-rendered bytes: the limit). All three serve the same exposition, read from the same warm cache.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml


def _app(data_dir: Path) -> Any:
    from exporter.app import build_app
    from exporter.config import parse_config

    return build_app(parse_config(yaml.safe_load((data_dir / "config.yml").read_text())))


def naive(app: Any, port: int) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.parser import text_string_to_metric_families

    # the "in-memory data": per family, label names and (label values, value) rows
    data = []
    for fam in text_string_to_metric_families(app.exposition()):
        labelnames: list[str] = []
        rows = []
        for s in fam.samples:
            if not labelnames:
                labelnames = sorted(s.labels)
            rows.append(([s.labels[k] for k in labelnames], s.value))
        data.append((fam.name, fam.type, fam.documentation, labelnames, rows))

    class Naive:
        def collect(self) -> Any:
            for name, mtype, doc, labelnames, rows in data:
                cls = CounterMetricFamily if mtype == "counter" else GaugeMetricFamily
                m = cls(name, doc, labels=labelnames)
                for values, v in rows:
                    m.add_metric(values, v)
                yield m

    reg = CollectorRegistry()
    reg.register(Naive())
    start_http_server(port, addr="127.0.0.1", registry=reg)
    threading.Event().wait()


def bare(app: Any, port: int) -> None:
    body, body_gz = app.snapshot.text, app.snapshot.text_gz

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *a: Any) -> None:
            pass

        def do_GET(self) -> None:
            gz = "gzip" in (self.headers.get("Accept-Encoding") or "")
            b = body_gz if gz else body
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(b)))
            if gz:
                self.send_header("Content-Encoding", "gzip")
            self.end_headers()
            self.wfile.write(b)

    class S(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128

    S(("127.0.0.1", port), H).serve_forever()


def exporter(app: Any, port: int) -> None:
    from exporter.web import serve

    serve(app, "127.0.0.1", port, None, {}).serve_forever()


def main() -> None:
    kind, data_dir, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    app = _app(data_dir)
    {"naive": naive, "bare": bare, "exporter": exporter}[kind](app, port)


if __name__ == "__main__":
    main()

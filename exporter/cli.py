"""Command line: ``run``, ``check``, ``once``, ``guard list``/``guard undo ID``, ``backfill``, ``raw list``/
``raw show``, ``recompute`` and ``config-schema``.

Flags follow the exporter conventions (``--config.file``, ``--web.listen-address``,
``--web.config.file``, ``--log.level``, ``--log.format``). Exit codes: 0 ok,
1 a source failed (``check``/``once``), 2 bad configuration or flags.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter import __version__
from exporter.config import (
    Config,
    ConfigError,
    file_errors,
    json_schema,
    load_config,
    parse_listen_address,
    redacted,
)
from exporter.osutil import tune_malloc
from exporter.timing import utc_now

if TYPE_CHECKING:
    import random

    from exporter.app import App
    from exporter.scheduler import Scheduler

log = logging.getLogger("exporter")

EXIT_FAILED = 1
EXIT_CONFIG = 2


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += " " + self.formatException(record.exc_info).replace("\n", " | ")
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        return f"time={ts} level={record.levelname.lower()} logger={record.name} msg={_quote(msg)}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += " " + self.formatException(record.exc_info)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        return json.dumps({"time": ts, "level": record.levelname.lower(), "logger": record.name, "msg": msg})


def _quote(s: str) -> str:
    if s and not any(c in s for c in ' "=\n\t\\'):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # SDKs log request details (headers included) at debug: keep them at warning whatever our level
    for noisy in (
        "botocore",
        "boto3",
        "urllib3",
        "azure",
        "oci",
        "google",
        "httpx",
        "httpcore",
        "httpx2",
        "httpcore2",
        "openai",
        "anthropic",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config.file", dest="config_file", default="spend-exporter.yml", help="YAML configuration file"
    )
    common.add_argument("--log.level", dest="log_level", default="info", choices=["debug", "info", "warn", "error"])
    common.add_argument("--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"])
    ap = argparse.ArgumentParser(prog="spend-exporter", description="Prometheus exporter for cloud and AI API spend.")
    ap.add_argument("--version", action="version", version=f"spend-exporter {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="serve /metrics, refreshing sources in the background")
    run.add_argument("--web.listen-address", dest="listen_address", default=None, help="overrides listen_address")
    run.add_argument("--web.config.file", dest="web_config_file", default=None, help="exporter-toolkit web config")
    sub.add_parser("check", parents=[common], help="validate, fetch each source once, print a table")
    once = sub.add_parser("once", parents=[common], help="one refresh; write the exposition")
    once.add_argument("--output", default=None, help="file to write atomically (default: stdout)")
    sub.add_parser("config-schema", help="print the configuration's JSON Schema")
    guard = sub.add_parser("guard", help="the guard's recorded actions (docs/guard.md)")
    guard_sub = guard.add_subparsers(dest="guard_command", required=True)
    guard_sub.add_parser("list", parents=[common], help="list the recorded actions")
    undo = guard_sub.add_parser("undo", parents=[common], help="restore the values an action changed")
    undo.add_argument("id", type=int, help="the action's ID (guard list)")
    _backfill_parser(sub, common)
    _raw_parsers(sub, common)
    return ap


def _raw_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """``raw list``, ``raw show`` and ``recompute``: the audit trail (docs/audit.md)."""
    raw = sub.add_parser("raw", help="the raw API pages kept by raw_retention (docs/audit.md)")
    raw_sub = raw.add_subparsers(dest="raw_command", required=True)
    ls = raw_sub.add_parser("list", parents=[common], help="one line per kept page: time, request, size")
    ls.add_argument("source", help="the source's name")
    ls.add_argument("--day", default=None, help="only the pages fetched on this UTC day (YYYY-MM-DD)")
    show = raw_sub.add_parser("show", parents=[common], help="the kept pages of one day's fetches, as JSON lines")
    show.add_argument("source", help="the source's name")
    show.add_argument("--day", required=True, help="the UTC day the pages were fetched (YYYY-MM-DD)")
    sub.add_parser("recompute", parents=[common], help="rebuild every record from the kept pages, with no API call")


def _backfill_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    bf = sub.add_parser(
        "backfill", parents=[common], help="write the cache's history as OpenMetrics for promtool (docs/backfill.md)"
    )
    bf.add_argument("--output", default=None, help="OpenMetrics file to write (required unless --dry-run)")
    bf.add_argument(
        "--since",
        default=None,
        help="YYYY-MM-DD (00:00 UTC), RFC 3339 or unix seconds; default: the day after the oldest day the cache holds",
    )
    bf.add_argument(
        "--until",
        default=None,
        help="exclusive end, same forms; default: now. Give the time of the "
        "live exporter's first scrape when Prometheus already has live data",
    )
    bf.add_argument("--job", default=None, help="the job label of the live scrape (default: spend-exporter)")
    bf.add_argument(
        "--instance", default=None, help="the instance label of the live scrape (default: exporter:9877, compose's)"
    )
    bf.add_argument(
        "--step",
        default="5m",
        help="sample spacing (default 5m, Prometheus's lookback delta; longer needs --query.lookback-delta)",
    )
    bf.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another target label the live scrape adds (repeat; Kubernetes: namespace, pod, service, ...)",
    )
    bf.add_argument("--dry-run", action="store_true", help="print what would be written and fetched; write nothing")


def _load(path: str) -> tuple[Config, dict[str, Any]]:
    try:
        cfg, raw = load_config(path)
        if errors := file_errors(cfg):
            raise ConfigError(errors)
        return cfg, raw
    except ConfigError as e:
        print(f"error: invalid configuration {path}:", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "config-schema":
        print(json_schema())
        return 0
    setup_logging("warning" if args.log_level == "warn" else args.log_level, args.log_format)
    config, raw = _load(args.config_file)
    try:
        if args.command == "run":
            return cmd_run(config, raw, args)
        if args.command == "check":
            return cmd_check(config)
        if args.command == "once":
            return cmd_once(config, args.output)
        if args.command == "guard":
            return cmd_guard(config, args)
        if args.command == "backfill":
            return cmd_backfill(config, args)
        if args.command == "raw":
            return cmd_raw(config, args)
        if args.command == "recompute":
            return cmd_recompute(config)
    except KeyboardInterrupt:
        return 130
    return EXIT_CONFIG


def assemble(
    config: Config,
    now: Callable[[], dt.datetime] = utc_now,
    rng: random.Random | None = None,
    stale_ok: bool = False,
    one_shot: bool = False,
) -> tuple[App, Scheduler]:
    """The engine and the scheduler that drives it, on one clock (``build_app`` says what the flags do)."""
    from exporter.app import build_app
    from exporter.scheduler import Scheduler

    app = build_app(config, now=now, rng=rng, stale_ok=stale_ok, one_shot=one_shot)
    return app, Scheduler(app, now=now)


def _build(config: Config, stale_ok: bool = False, one_shot: bool = False) -> tuple[App, Scheduler]:
    try:
        return assemble(config, stale_ok=stale_ok, one_shot=one_shot)
    except OSError as e:
        print(f"error: cache_path {config.cache_path}: {e.strerror or e}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_run(config: Config, raw: dict[str, Any], args: argparse.Namespace) -> int:
    from exporter.web import serve
    from exporter.webconfig import WebConfigError

    address = args.listen_address or config.listen_address
    try:
        host, port = parse_listen_address(address)
    except ValueError as e:
        print(f"error: --web.listen-address: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if not any(k.startswith("MALLOC_") for k in os.environ):  # the operator's own settings win
        tune_malloc()
    # a snapshot saved earlier today serves at once; one from an earlier hour is rebuilt right after start
    app, scheduler = _build(config, stale_ok=True)
    try:
        server = serve(app, host, port, args.web_config_file, redacted(raw))
    except WebConfigError as e:
        print(f"error: --web.config.file: {e}", file=sys.stderr)
        app.close()
        return EXIT_CONFIG
    except OSError as e:
        print(f"error: cannot listen on {address}: {e.strerror or e}", file=sys.stderr)
        app.close()
        return EXIT_CONFIG
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app.guard.recover()  # actions a previous process left running: recorded as failed, still undoable
    scheduler.start()
    threading.Thread(target=app.rebuild_stale_snapshot, name="snapshot-rebuild", daemon=True).start()
    t = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    t.start()
    scheme = "https" if server.web.config.tls else "http"
    log.info(
        "spend-exporter %s listening on %s://%s:%d with %d sources",
        __version__,
        scheme,
        host,
        server.port,
        len(config.sources),
    )
    stop.wait()
    log.info("shutting down")
    server.shutdown()
    scheduler.stop()
    app.close()
    return 0


def cmd_check(config: Config) -> int:
    from exporter.status import month_to_date

    app, _ = _build(config, one_shot=True)
    try:
        outcomes = app.refresh_all()
        rows = [("SOURCE", "STATUS", "RECORDS", "MONTH-TO-DATE USD", "DURATION")]
        for o in outcomes:
            rows.append(
                (
                    o.source,
                    "ok" if o.ok else "FAILED",
                    str(o.records),
                    f"{month_to_date(app.snapshot, o.source):,.2f}",
                    f"{o.duration:.2f}s",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            print("  ".join(c.ljust(widths[i]) if i in (0, 1) else c.rjust(widths[i]) for i, c in enumerate(r)))
        for o in outcomes:
            if not o.ok:
                print(f"{o.source}: {o.error}", file=sys.stderr)
        return 0 if all(o.ok for o in outcomes) else EXIT_FAILED
    finally:
        app.close()


def cmd_once(config: Config, output: str | None) -> int:
    app, _ = _build(config, one_shot=True)
    try:
        outcomes = app.refresh_all(history=True)  # the history still owed too, as `run` fetches it
        # the textfile carries the burn rate too: one burn fetch per AI source (``check`` has none: its
        # hourly usage call already proves the same endpoint and key)
        outcomes += [app.refresh_burn(name) for name in app.burn_sources()]
        data = app.snapshot.text
        if output:
            write_atomic(Path(output), data)
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        failed = [o for o in outcomes if not o.ok]
        for o in failed:
            print(f"{o.source}: {o.error}", file=sys.stderr)
        return EXIT_FAILED if failed else 0
    finally:
        app.close()


def cmd_guard(config: Config, args: argparse.Namespace) -> int:
    """``guard list`` and ``guard undo ID``, on the cache a running exporter shares (SQLite serialises writes)."""
    import sqlite3

    from exporter.cachefile import CacheFileError
    from exporter.guard import Guard
    from exporter.store import Store

    try:
        store = Store(config.cache_path, shared=True)  # a running exporter's file: no check, no recovery here
    except (OSError, sqlite3.Error, CacheFileError) as e:
        print(f"error: cache_path {config.cache_path}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return EXIT_FAILED
    try:
        guard = Guard(config, store, utc_now)
        if args.guard_command == "undo":
            ok, message = guard.undo(args.id)
            print(message, file=sys.stdout if ok else sys.stderr)
            return 0 if ok else EXIT_FAILED
        rows = [("ID", "TIME", "RULE", "ACTION", "FINGERPRINT", "TARGET", "RESULT", "UNDONE")]
        notes: list[str] = []
        for r in store.guard_actions():
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["created_at"]))
            undone = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["undone_at"])) if r["undone_at"] else "-"
            target = r["target"] or "-"
            rows.append((str(r["id"]), when, r["rule"], r["action"], r["fingerprint"], target, r["result"], undone))
            if r["error"]:
                notes.append(f"{r['id']}: {r['error']}")
            if r["undo_detail"]:
                notes.append(f"{r['id']}: {r['undo_detail']}")
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
        for n in notes:
            print(n)
        return 0
    finally:
        store.close()


def cmd_raw(config: Config, args: argparse.Namespace) -> int:
    """``raw list SOURCE [--day D]`` and ``raw show SOURCE --day D``, read from a running exporter's cache."""
    import sqlite3

    from exporter import audit
    from exporter.cachefile import CacheFileError
    from exporter.store import Store

    since, until = 0.0, float("inf")
    if args.day is not None:
        try:
            day = dt.date.fromisoformat(args.day)
        except ValueError:
            print(f"error: --day: {args.day!r} is not a date (YYYY-MM-DD)", file=sys.stderr)
            return EXIT_CONFIG
        since = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp()
        until = since + 86400
    try:
        store = Store(config.cache_path, shared=True)
    except (OSError, sqlite3.Error, CacheFileError) as e:
        print(f"error: cache_path {config.cache_path}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return EXIT_FAILED
    try:
        index = store.raw_index(args.source, since, until)
        if not index and args.source not in {s.name for s in config.sources}:
            print(f"error: no source named {args.source!r} in the configuration or the cache", file=sys.stderr)
            return EXIT_CONFIG
        if not index:
            print(
                f"no raw pages kept for source {args.source}" + (f" on {args.day}" if args.day else ""), file=sys.stderr
            )
            return 0
        out = sys.stdout
        if args.raw_command == "list":
            rows = [("TIME", "FETCH", "PAGE", "OPERATION", "BYTES", "STORED", "REQUEST")]
            for fid, at, seq, operation, request, size, stored in index:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
                req = audit.describe_request(json.loads(request))
                rows.append((when, str(fid), str(seq), operation, str(size), str(stored), req))
            widths = [max(len(r[i]) for r in rows) for i in range(6)]
            for r in rows:
                out.write("  ".join([*(c.ljust(widths[i]) for i, c in enumerate(r[:6])), r[6]]).rstrip() + "\n")
            return 0
        windows = {f[0]: json.loads(f[3]) for f in store.raw_fetches(args.source)}
        for fid in dict.fromkeys(row[0] for row in index):
            at = next(row[1] for row in index if row[0] == fid)
            for seq, (operation, request, meta, size, body) in enumerate(store.raw_pages(fid)):
                line = {
                    "fetch": fid,
                    "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
                    "window": windows.get(fid),
                    "page": seq,
                    "operation": operation,
                    "request": json.loads(request),
                    "meta": json.loads(meta),
                    "bytes": size,
                    "body": audit.page_json(body),
                }
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
        return 0
    finally:
        store.close()


def cmd_recompute(config: Config) -> int:
    """Rebuild every source's records from its kept pages, with no API call (docs/audit.md)."""
    import sqlite3

    from exporter.app import App
    from exporter.cachefile import CacheFileError
    from exporter.store import Store

    try:
        # shared: beside a running exporter, which shows the result after its next refresh or a restart
        store = Store(config.cache_path, shared=True)
    except (OSError, sqlite3.Error, CacheFileError) as e:
        print(f"error: cache_path {config.cache_path}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return EXIT_FAILED
    app = App(config, store=store, one_shot=True)
    try:
        failed = False
        for name in app.source_names():
            o = app.recompute(name)
            if not o.ok:
                failed = True
                print(f"{name}: FAILED: {o.error}", file=sys.stderr)
            elif o.skipped:
                print(f"{name}: {o.error or 'no pages kept (raw_retention is 0 or nothing was fetched with it on)'}")
            else:
                print(f"{name}: rebuilt from its pages ({o.records} records in the newest fetch) in {o.duration:.2f}s")
        app.rebuild_snapshot()
        return EXIT_FAILED if failed else 0
    finally:
        app.close()


def cmd_backfill(config: Config, args: argparse.Namespace, now: Callable[[], dt.datetime] = utc_now) -> int:
    """``backfill``: the cache's history as OpenMetrics with timestamps (``exporter.backfill``); no API call."""
    import sqlite3
    from dataclasses import replace

    from exporter.backfill import (
        DEFAULT_INSTANCE,
        DEFAULT_JOB,
        Backfill,
        check_step,
        default_range,
        history_fetch_plan,
        parse_when,
        source_days,
        target_labels,
    )
    from exporter.cachefile import CacheFileError
    from exporter.config_types import parse_duration
    from exporter.store import Store

    if not args.dry_run and not args.output:
        print("error: --output: required (or --dry-run)", file=sys.stderr)
        return EXIT_CONFIG
    args.job, args.instance = args.job or DEFAULT_JOB, args.instance or DEFAULT_INSTANCE
    try:
        labels = target_labels(args.label, config.attribution.label_names)
    except ValueError as e:
        print(f"error: --label: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        step = check_step(parse_duration(args.step))
    except ValueError as e:
        print(f"error: --step: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if not Path(config.cache_path).exists():
        print(
            f"error: cache_path {config.cache_path}: no cache yet (run the exporter, or `once`, first)", file=sys.stderr
        )
        return EXIT_FAILED
    try:
        store = Store(config.cache_path, shared=True)  # maybe a running exporter's file: read only here
    except (OSError, sqlite3.Error, CacheFileError) as e:
        print(f"error: cache_path {config.cache_path}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return EXIT_FAILED
    try:
        t = now()
        names = [s.name for s in config.sources]
        rng = replace(default_range(store, names, t), step=step)
        for flag in ("since", "until"):
            value = getattr(args, flag)
            try:
                when = parse_when(value) if value else None
            except ValueError as e:
                print(f"error: --{flag}: {e}", file=sys.stderr)
                return EXIT_CONFIG
            if when is not None:
                rng = replace(rng, since=when) if flag == "since" else replace(rng, until=when)
        if rng.until > t.timestamp():
            print("error: --until: in the future (the live exporter serves from now on)", file=sys.stderr)
            return EXIT_CONFIG
        if rng.since >= rng.until:
            print("error: --since: not before --until: nothing to write", file=sys.stderr)
            return EXIT_CONFIG
        days = list(rng.days())
        # the days whose figures the range shows as spend_cost_daily_usd (and 28 more for the baselines)
        first, last = days[0] - dt.timedelta(days=1), days[-1] - dt.timedelta(days=1)
        held = [source_days(store, s, first, last) for s in names]
        since_s, until_s = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(x)) for x in (rng.since, rng.until))
        head = (
            f"backfill {since_s} to {until_s} (excluded): {len(days)} days of samples, one every {rng.step} s, "
            f"labels {dict(job=args.job, instance=args.instance, **labels)}; daily figures of {first} through {last}"
        )
        bf = Backfill(config, store, args.job, args.instance, labels)
        if args.dry_run:
            print(head)
            series, samples, size = bf.estimate(rng)
            print(
                f"output: about {series} series (as on the last day), {samples:,} samples, "
                f"{size / 1e6:,.0f} MB of OpenMetrics (docs/backfill.md: large backfills a slice at a time)"
            )
            for h in held:
                print(h.describe())
            for line in history_fetch_plan(config, store, first - dt.timedelta(days=28), last):
                print(line)
            return 0
        if any(h.missing for h in held):
            for h in held:
                print(h.describe(), file=sys.stderr)
            print("days with no costs read as such (fetch the history first if the cache lacks them)", file=sys.stderr)
        return _write_backfill(bf, rng, Path(args.output), head)
    finally:
        store.close()


def _month_done(day: dt.date) -> None:
    if day.day == 1:
        log.info("backfill: built the days up to %s", day)


def _write_backfill(bf: Any, rng: Any, out: Path, head: str) -> int:
    """Stream into a file beside ``out`` and rename it at the end (a partial file is never left as ``out``)."""
    with atomic_file(out) as tmp, open(tmp, "w", encoding="utf-8", buffering=1 << 20) as f:
        res = bf.write(rng, f, tmpdir=out.parent, progress=_month_done)
    print(head, file=sys.stderr)
    print(
        f"wrote {res.series} series, {res.samples} samples to {out}; next: "
        f"promtool tsdb create-blocks-from openmetrics --max-block-duration=1458h {out} <prometheus data dir> "
        "(docs/backfill.md)",
        file=sys.stderr,
    )
    return 0


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write, renamed to ``path`` (mode 0644) when the block ends without an
    error, removed when it raises: a reader (node_exporter, promtool) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write next to the target and rename, so node_exporter never reads half a file."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


if __name__ == "__main__":
    sys.exit(main())

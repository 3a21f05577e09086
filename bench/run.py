"""Runs the benchmarks: ``python -m bench.run`` (all) or ``python -m bench.run NAME [options]``.

Names: scrape, refresh, burn, memory, ingest, economy, soak, runaway, backfill, dashboards, audit, history.
Options after NAME go to that benchmark (``python -m bench.run scrape --series 1000``). Results:
bench/results/<name>.json.
"""

from __future__ import annotations

import importlib
import sys
import time

NAMES = (
    "scrape",
    "refresh",
    "burn",
    "memory",
    "ingest",
    "economy",
    "soak",
    "runaway",
    "backfill",
    "dashboards",
    "audit",
    "history",
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv and not argv[0].startswith("-"):
        names, rest = [argv[0]], argv[1:]
        if names[0] not in NAMES:
            print(f"unknown benchmark {names[0]!r}; one of {', '.join(NAMES)}", file=sys.stderr)
            return 2
    else:
        names, rest = list(NAMES), argv
    for name in names:
        print(f"== {name}", flush=True)
        t = time.perf_counter()
        importlib.import_module(f"bench.{name}").run(rest if len(names) == 1 else [])
        print(f"== {name} done in {time.perf_counter() - t:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

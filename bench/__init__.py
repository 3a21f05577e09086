"""Benchmarks for spend-exporter (``python -m bench.run``); never part of ``make test``. See docs/performance.md."""

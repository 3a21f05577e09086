"""revenue_file: spend_customer_revenue_monthly_usd, bad rows, reloads, and a file that goes away."""

from __future__ import annotations

import datetime as dt
import logging
import os
from decimal import Decimal
from pathlib import Path

import pytest

from exporter.app import build_app
from exporter.config import file_errors, parse_config
from exporter.revenue import RevenueFile, parse_revenue
from exporter.warmstart import snapshot_key
from tests.helpers import series

NOW = dt.datetime(2025, 3, 15, 10, 30, tzinfo=dt.UTC)
FAMILY = "spend_customer_revenue_monthly_usd"


def test_good_rows_exact_to_the_cent() -> None:
    text = "\ufeffcustomer_id,monthly_revenue_usd,plan\nacme,1200.10,pro\n\n# a comment\nglobex, 0.07 ,free\n"
    revenue, errors = parse_revenue(text, "customers.csv")
    assert errors == []
    assert revenue == {"acme": Decimal("1200.10"), "globex": Decimal("0.07")}


def test_bad_rows_are_named_by_line_and_the_good_rows_kept() -> None:
    text = (
        "customer_id,monthly_revenue_usd\n"
        "acme,100\n"  # line 2
        ",50\n"  # 3
        "initech,lots\n"  # 4
        "hooli,-5\n"  # 5
        "acme,7\n"  # 6
        "umbrella,NaN\n"  # 7
        "stark,1,extra\n"  # 8
        "wayne,2500.5\n"  # 9
        "oscorp,1e400\n"  # 10: a float cannot hold it
    )
    revenue, errors = parse_revenue(text, "c.csv")
    assert revenue == {"acme": Decimal("100"), "wayne": Decimal("2500.5")}
    assert errors == [
        "c.csv:3: customer_id is empty",
        "c.csv:4: monthly_revenue_usd 'lots' is not a number",
        "c.csv:5: monthly_revenue_usd '-5' must be a finite number of at least 0",
        "c.csv:6: customer_id 'acme' again (first on line 2); this row is left out",
        "c.csv:7: monthly_revenue_usd 'NaN' must be a finite number of at least 0",
        "c.csv:8: 3 fields, the header has 2",
        "c.csv:10: monthly_revenue_usd '1e400' must be a finite number of at least 0",
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("customer,revenue\nacme,1\n", "c.csv:1: the header has no column customer_id, monthly_revenue_usd"),
        ("", "c.csv: empty"),
    ],
)
def test_a_file_without_its_header_has_no_rows(text: str, error: str) -> None:
    revenue, errors = parse_revenue(text, "c.csv")
    assert revenue == {}
    assert len(errors) == 1 and errors[0].startswith(error)


def _write(path: Path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_read_again_when_it_changes_and_kept_when_it_cannot_be_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "customers.csv"
    _write(path, "customer_id,monthly_revenue_usd\nacme,10\n", 1_000_000_000_000_000_000)
    f = RevenueFile(str(path))
    assert f.current() == {"acme": Decimal("10")}
    # the same mtime and size: not read again (what is on disk is not looked at)
    _write(path, "customer_id,monthly_revenue_usd\nacme,20\n", 1_000_000_000_000_000_000)
    assert f.current() == {"acme": Decimal("10")}
    _write(path, "customer_id,monthly_revenue_usd\nacme,20\n", 1_000_000_000_000_000_001)
    assert f.current() == {"acme": Decimal("20")}
    # a wrong header (no good row at all): the last figures stay
    _write(path, "id,revenue\nacme,30\n", 1_000_000_000_000_000_002)
    with caplog.at_level(logging.ERROR, logger="exporter.revenue"):
        assert f.current() == {"acme": Decimal("20")}
    assert "has no good row; the last figures read are kept" in caplog.text
    caplog.clear()
    path.unlink()
    with caplog.at_level(logging.ERROR, logger="exporter.revenue"):
        assert f.current() == {"acme": Decimal("20")}
        assert f.current() == {"acme": Decimal("20")}
    assert len(caplog.records) == 1, "logged once, not at every build"
    assert f"revenue_file {path} cannot be read (FileNotFoundError" in caplog.text
    _write(path, "customer_id,monthly_revenue_usd\nacme,40\nbad,x\n", 1_000_000_000_000_000_003)
    assert f.current() == {"acme": Decimal("40")}


def test_exported_and_reloaded_at_the_next_build(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "customers.csv"
    _write(path, "customer_id,monthly_revenue_usd\nacme,1200.10\nglobex,x\n", 1_000_000_000_000_000_000)
    raw = {"cache_path": str(tmp_path / "cache.sqlite"), "revenue_file": str(path)}
    with caplog.at_level(logging.ERROR, logger="exporter.revenue"):
        app = build_app(parse_config(raw), now=lambda: NOW)
    try:
        assert f"revenue_file {path}:3: monthly_revenue_usd 'x' is not a number; the good rows are kept" in caplog.text
        assert series(app.exposition(), FAMILY) == {(("customer_id", "acme"),): 1200.10}
        assert (
            "# HELP spend_customer_revenue_monthly_usd Each customer's monthly revenue in USD, from revenue_file"
            in (app.exposition())
        )
        _write(path, "customer_id,monthly_revenue_usd\nacme,99\nglobex,1\n", 1_000_000_000_000_000_001)
        app.rebuild_snapshot()
        assert series(app.exposition(), FAMILY) == {(("customer_id", "acme"),): 99.0, (("customer_id", "globex"),): 1.0}
    finally:
        app.close()


def test_no_revenue_file_no_family_samples(tmp_path: Path) -> None:
    app = build_app(parse_config({"cache_path": str(tmp_path / "cache.sqlite")}), now=lambda: NOW)
    try:
        assert series(app.exposition(), FAMILY) == {}
    finally:
        app.close()


def test_unreadable_at_start_is_a_config_error(tmp_path: Path) -> None:
    """At start (``file_errors``, which the CLI runs after loading); tests/data/bad-configs has a missing file."""
    assert file_errors(parse_config({"revenue_file": str(tmp_path)})) == [
        f"revenue_file: cannot read {str(tmp_path)!r}: Is a directory"
    ]
    assert file_errors(parse_config({})) == []


def test_a_changed_file_is_not_served_from_the_saved_snapshot(tmp_path: Path) -> None:
    """The warm start's key covers the file's content: a file changed while the exporter was stopped rebuilds."""
    path = tmp_path / "customers.csv"
    path.write_text("customer_id,monthly_revenue_usd\nacme,10\n")
    cfg = parse_config({"revenue_file": str(path)})
    before = snapshot_key(cfg, "p")
    assert snapshot_key(cfg, "p") == before
    path.write_text("customer_id,monthly_revenue_usd\nacme,11\n")
    assert snapshot_key(cfg, "p") != before

"""The landing page ``/`` and the ``/status`` fields it shows, on a fixed clock (``FIXED_NOW``, 20 November 2026).

Budgets past their limit, past their warning ratio and forecast past their limit are marked by a word and a
colour; each source shows the billing date its data reaches; times have no microseconds and figures are
right-aligned. The page is read as HTML and, in headless Chromium, as a picture.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from exporter.app import App, build_app
from exporter.config import load_config
from exporter.status import BUDGET_STATES
from exporter.web import Server
from tests import screenshot
from tests.clock import FIXED_NOW
from tests.helpers import running

KEY = "sk-admin-landingKEY7f3Q"
PROXY_PASSWORD = "proxy-pw-landing-9Rt2"
SCRIPT_NAME = '<script>alert(1)</script> & "q"'
HTML_TEAM = "<b>data</b> & co"

# 100 a day for search, 40 for the other team, from 1 October to 19 November: 19 days of November so far
SEARCH_MTD = 1900.0
# month to date plus the 11 days left at the mean of the last 7 (100)
SEARCH_FORECAST = 3000.0
BUDGETS = {  # name: (limit, warning ratio, state)
    "search-over": (1500.0, 0.8, "exceeded"),
    "search-warning": (2200.0, 0.8, "warning"),
    "search-forecast": (2500.0, 0.8, "forecast_exceeded"),
    "search-ok": (5000.0, 0.5, "ok"),
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, focus: Any) -> Iterator[App]:
    d = tmp_path_factory.mktemp("landing")
    rows = []
    day = dt.date(2026, 10, 1)
    while day < FIXED_NOW.date():
        rows.append(focus.daily(day, 100.0, ServiceName="Amazon EC2", Tags='{"team": "search"}'))
        rows.append(focus.daily(day, 40.0, ServiceName="Amazon S3", Tags=json.dumps({"team": HTML_TEAM})))
        day += dt.timedelta(days=1)
    focus.write(d / "exports" / "a.csv", rows)
    budgets = "".join(
        f"  - {{name: {name}, amount_usd: {limit}, team: search, warning_ratio: {ratio}}}\n"
        for name, (limit, ratio, _) in BUDGETS.items()
    )
    (d / "config.yml").write_text(
        f"cache_path: {d / 'cache.sqlite'}\n"
        "sources:\n"
        f"  - {{name: focus, type: focus, paths: ['{d / 'exports' / '*.csv'}']}}\n"
        # nothing listens on port 9: the source fails, with its key and the proxy's password in its config
        "  - {name: openai, type: openai, admin_key_env: SPEND_LANDING_KEY,"
        " base_url: 'http://gw:${SPEND_LANDING_PW}@127.0.0.1:9/v1'}\n"
        "budgets:\n"
        f"{budgets}"
        f"  - {{name: {json.dumps(SCRIPT_NAME)}, amount_usd: 100000, team: {json.dumps(HTML_TEAM)}}}\n"
    )
    env = {"SPEND_LANDING_KEY": KEY, "SPEND_LANDING_PW": PROXY_PASSWORD}
    cfg, _ = load_config(d / "config.yml", env=env)
    mp = pytest.MonkeyPatch()
    mp.setenv("SPEND_LANDING_KEY", KEY)
    a = build_app(cfg, now=lambda: FIXED_NOW)
    try:
        assert [o.ok for o in a.refresh_all()] == [True, False]
        yield a
    finally:
        a.close()
        mp.undo()


@pytest.fixture(scope="module")
def server(app: App) -> Iterator[Server]:
    with running(app) as s:
        yield s


def fetch(server: Server, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as r:
        return str(r.read().decode())


class Tables(HTMLParser):
    """Each ``<table>`` as rows of (the row's class, the cells' text); the paragraphs' text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[tuple[str, list[str]]]] = []
        self.cell_classes: list[list[str]] = []
        self.paragraphs: list[str] = []
        self._cell: list[str] | None = None
        self._p: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append((a.get("class") or "", []))
        elif tag in ("td", "th"):
            self._cell = []
            self.cell_classes.append([tag, a.get("class") or ""])
        elif tag == "p":
            self._p = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell).strip()
            self.tables[-1][-1][1].append(text)
            self.cell_classes[-1].append(text)
            self._cell = None
        elif tag == "p" and self._p is not None:
            self.paragraphs.append(" ".join("".join(self._p).split()))
            self._p = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._p is not None:
            self._p.append(data)


def parsed(page: str) -> Tables:
    t = Tables()
    t.feed(page)
    return t


def by_name(table: list[tuple[str, list[str]]]) -> dict[str, dict[str, str]]:
    """Rows keyed by their first cell, each cell keyed by its column's heading; the row's class as ``class``."""
    heading = table[0][1]
    return {cells[0]: {"class": cls, **dict(zip(heading, cells, strict=True))} for cls, cells in table[1:]}


# --------------------------------------------------------------------------- /status


def test_status_adds_the_forecast_and_state_of_each_budget(server: Server) -> None:
    st = json.loads(fetch(server, "/status"))
    assert st["now"] == "2026-11-20T12:00:00Z"
    budgets = {b["name"]: b for b in st["budgets"]}
    for name, (limit, ratio, state) in BUDGETS.items():
        assert budgets[name] == {
            # the fields /status had before, unchanged
            "name": name,
            "team": "search",
            "amount_usd": limit,
            "spent_usd": SEARCH_MTD,
            "used_ratio": round(SEARCH_MTD / limit, 4),
            "warning_ratio": ratio,
            # and the new ones
            "forecast_usd": SEARCH_FORECAST,
            "forecast_ratio": round(SEARCH_FORECAST / limit, 4),
            "state": state,
        }
    assert {b["state"] for b in st["budgets"]} == set(BUDGET_STATES)
    sources = {s["name"]: s for s in st["sources"]}
    assert sources["focus"]["data_through"] == "2026-11-20T00:00:00Z"
    assert sources["openai"]["data_through"] is None and sources["openai"]["up"] is False


# --------------------------------------------------------------------------- the page


def test_budgets_over_their_limit_or_warning_ratio_are_marked_in_words(server: Server) -> None:
    page = parsed(fetch(server, "/"))
    budgets = by_name(page.tables[1])
    want_text = {"exceeded": "over limit", "warning": "warning", "forecast_exceeded": "forecast over limit"}
    for name, (limit, ratio, state) in BUDGETS.items():
        row = budgets[name]
        assert row["class"] == state, name
        assert row["State"] == want_text.get(state, "ok"), name
        assert row["Spent (USD)"] == "1,900.00"
        assert row["Limit (USD)"] == f"{limit:,.2f}"
        assert row["Used"] == f"{SEARCH_MTD / limit * 100:.1f}%"
        assert row["Warning at"] == f"{ratio * 100:.1f}%"
        assert row["Month-end forecast (USD)"] == "3,000.00"
        assert row["Forecast / limit"] == f"{SEARCH_FORECAST / limit * 100:.1f}%"
    assert budgets["search-over"]["Used"] == "126.7%" and budgets["search-warning"]["Used"] == "86.4%"
    assert "3 of 5 budgets need attention: 1 over limit, 1 warning, 1 forecast over limit." in page.paragraphs


def test_sources_show_their_data_through_and_times_without_microseconds(server: Server, app: App) -> None:
    text = fetch(server, "/")
    sources = by_name(parsed(text).tables[0])
    assert sources["focus"]["Data through (UTC)"] == "2026-11-20 00:00"
    assert sources["focus"]["Last success (UTC)"] == "2026-11-20 12:00:00"
    assert sources["focus"]["Status"] == "up" and sources["openai"]["Status"] == "down"
    assert sources["openai"]["Data through (UTC)"] == "no data yet"
    assert sources["openai"]["Last success (UTC)"] == "never"
    assert "cannot connect to the OpenAI API" in sources["openai"]["Last error"]
    assert sources["focus"]["Month to date (USD)"] == "2,660.00"
    # /status has microseconds (the next refresh is jittered); the page has none, in text or attributes
    due = dt.datetime.fromtimestamp(app.due_at("focus") or 0, dt.UTC)
    assert due.microsecond, "the jittered due time should have a fraction of a second"
    assert sources["focus"]["Next refresh (UTC)"] == due.strftime("%Y-%m-%d %H:%M:%S")
    assert not re.search(r"\d:\d\d\.\d", text)
    assert re.search(r'<time datetime="2026-11-20T12:00:00Z">2026-11-20 12:00:00 UTC</time>', text)


def test_figures_are_right_aligned_in_tabular_digits(server: Server) -> None:
    text = fetch(server, "/")
    page = parsed(text)
    figure = re.compile(r"^[\d,]+\.\d{2}$|^\d+\.\d%$")
    cells = [(tag, cls, txt) for tag, cls, txt in page.cell_classes if tag == "td" and figure.match(txt)]
    assert len(cells) >= 2 + 5 * 6, cells  # two sources' month to date, six figures per budget
    assert all("num" in cls.split() for _, cls, _ in cells), [c for c in cells if "num" not in c[1].split()]
    rule = re.search(r"\.num\{([^}]*)\}", text)
    assert rule and "text-align:right" in rule.group(1) and "font-variant-numeric:tabular-nums" in rule.group(1)


def test_names_are_escaped_and_secrets_never_shown(server: Server) -> None:
    text = fetch(server, "/")
    assert "<script" not in text and "<b>data" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;q&quot;" in text
    assert "&lt;b&gt;data&lt;/b&gt; &amp; co" in text
    budgets = by_name(parsed(text).tables[1])
    assert budgets[SCRIPT_NAME]["Team"] == HTML_TEAM and budgets[SCRIPT_NAME]["State"] == "ok"
    for path in ("/", "/status"):
        body = fetch(server, path)
        assert KEY not in body and PROXY_PASSWORD not in body, path


# --------------------------------------------------------------------------- as a person sees it


# the rows' background colours in exporter.landing.STYLE
ROW_COLOURS = {"exceeded": (0xFF, 0xEB, 0xE9), "warning": (0xFF, 0xF8, 0xC5), "forecast_exceeded": (0xFD, 0xF6, 0xEC)}


def test_the_page_in_headless_chromium(server: Server, tmp_path: Path) -> None:
    if screenshot.browser() is None:
        pytest.fail(f"{screenshot.BROWSER} is missing: install its Debian package (make test-deps does)")
    png = screenshot.screenshot(f"http://127.0.0.1:{server.port}/", tmp_path / "landing.png")
    width, height, rows = screenshot.pixels(png)
    assert (width, height) == screenshot.SIZE
    seen = screenshot.colours(rows)
    # each highlighted row is painted: a row's cells are at least 800 px wide and 20 px high
    for state, rgb in ROW_COLOURS.items():
        assert seen.get(rgb, 0) > 800 * 20, (state, seen.get(rgb, 0))
    assert sum(n for (r, g, b), n in seen.items() if r + g + b < 200) > 2000, "little dark text: a blank page?"
    # nothing is cut off at the right edge: the last 16 columns of pixels are the page's white
    edge = {row[i : i + 3] for row in rows for i in range((width - 16) * 3, width * 3, 3)}
    assert edge == {b"\xff\xff\xff"}, "the tables are wider than a 1280 px window"

"""The last published snapshot, kept in the cache so that a restart serves ``/metrics`` at once.

Building the snapshot of a large cache takes seconds (about 1.8 s at 100k series);
reading back the one published before the restart takes milliseconds. A saved
snapshot is used only when it is exactly what a build would give now:

- it was saved under the same *key*: a hash of the configuration (every key but
  ``listen_address``; so sources, budgets, attribution, rates, pricing and the
  series cap), the exporter's version, the cache schema, the Python version
  (``spend_exporter_build_info`` shows it), the price table's version (the
  ``genai-prices`` release: a price update rebuilds) and the code that renders it;
- the store's data *generation* has not moved since it was built (every write to
  the store moves it on: a refresh, a failed refresh's state, an API call counted,
  a source forgotten), so it can never disagree with the cache;
- it was built for the same UTC hour (the last-hour family and the calendar depend
  on the clock). ``spend-exporter run`` also accepts one from an earlier hour of
  the same UTC day and rebuilds at once in the background (``stale``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import hashlib
import json
import logging
import platform
from pathlib import Path

from exporter import __version__
from exporter.budgets import BudgetFigure
from exporter.cacheschema import SCHEMA_VERSION
from exporter.config import Config
from exporter.exposition import Family, render
from exporter.forecast import Dates
from exporter.pricing import library_version
from exporter.snapshot import Snapshot
from exporter.store import Store

log = logging.getLogger(__name__)

FORMAT = 2  # 2: meta holds mtd_by_source
# what turns the store into exposition bytes: a change to any of them must not serve an old rendering
_CODE = (
    "snapshot.py",
    "metrics.py",
    "forecast.py",
    "budgets.py",
    "cardinality.py",
    "exposition.py",
    "store.py",
    "pricing.py",
    "revenue.py",
    "warmstart.py",
)


def snapshot_key(config: Config, price_version: str | None = None) -> str:
    """``price_version``: ``PriceTable.version`` of the table the snapshot prices with (the installed
    genai-prices when None), so that a price update rebuilds the snapshot."""
    data = config.model_dump(mode="json", exclude={"listen_address"})
    h = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode())
    if config.revenue_file:  # its figures are in the snapshot: a changed file rebuilds it
        try:
            h.update(Path(config.revenue_file).read_bytes())
        except OSError:
            h.update(b"revenue_file unreadable")
    prices = price_version if price_version is not None else library_version()
    h.update(f"|{__version__}|{SCHEMA_VERSION}|{FORMAT}|{platform.python_version()}|{prices}|".encode())
    here = Path(__file__).parent
    for name in _CODE:
        try:
            h.update((here / name).read_bytes())
        except OSError:
            h.update(name.encode())
    return h.hexdigest()


def save(store: Store, key: str, generation: int, snap: Snapshot, now: dt.datetime) -> bool:
    """Keep ``snap`` (built from the store at ``generation``, for ``now``); False if it is already stale."""
    layout = []
    pos = 0
    for fam in snap._families:
        pos += len(fam.header(False))
        start = pos
        pos += sum(len(f) for f in fam.fragments)
        layout.append([fam.name, fam.type, fam.help, start, pos])
    if pos != len(snap.text):
        log.debug("snapshot layout does not match its text; not saved")
        return False
    meta = {
        "hour": Dates(now).last_complete_hour.isoformat(),
        "day": now.date().isoformat(),
        "built_at": snap.built_at,
        "series": snap.series,
        "budgets": [dataclasses.asdict(b) for b in snap.budgets],
        "mtd_by_source": snap.mtd_by_source,
        "families": layout,
    }
    return store.save_snapshot(key, generation, json.dumps(meta), snap.text_gz)


def load(store: Store, key: str, now: dt.datetime, stale_ok: bool = False) -> tuple[Snapshot, bool] | None:
    """The saved snapshot and whether it is fresh (built for this hour), or None when it cannot be used."""
    if not store.persistent:
        return None  # a saved snapshot says the cache is persistent; this one runs in memory
    try:
        got = store.load_snapshot(key)
        if got is None:
            return None
        meta = json.loads(got[0])
        fresh = meta["hour"] == Dates(now).last_complete_hour.isoformat()
        if not fresh and not (stale_ok and meta["day"] == now.date().isoformat()):
            return None
        text = gzip.decompress(got[1])
        families = [Family(n, t, h, [text[a:b]] if b > a else []) for n, t, h, a, b in meta["families"]]
        if render(families) != text:
            return None
        snap = Snapshot(
            text=text,
            text_gz=got[1],
            built_at=float(meta["built_at"]),
            series=int(meta["series"]),
            budgets=[BudgetFigure(**b) for b in meta["budgets"]],
            mtd_by_source={str(s): float(v) for s, v in meta["mtd_by_source"].items()},
            _families=families,
        )
    except Exception as e:  # whatever is wrong with it, building afresh is always correct
        log.info("the saved snapshot cannot be used (%s: %s); building it", e.__class__.__name__, e)
        return None
    return snap, fresh

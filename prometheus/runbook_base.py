"""The runbook's address: one setting, ``[project.urls] Runbook`` in pyproject.toml, that every alert's
``runbook_url`` is built from, as the monitoring mixins' ``runbookURLPattern``:

    runbook_url = <Runbook> + "#" + <alert name in lower case>

and the anchor is a heading of docs/runbook.md (GitHub's anchor rules).

    python3 prometheus/runbook_base.py                 # print the address
    python3 prometheus/runbook_base.py --check         # exit 1, saying where, if a runbook_url or anchor is wrong
    python3 prometheus/runbook_base.py --set URL       # point pyproject.toml, the rules and their promtool tests
                                                       # at URL (e.g. your fork's or your wiki's copy)

``--root DIR`` works on another checkout. Only the standard library and PyYAML are used; files are edited as
text, so their comments stay.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
import unicodedata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# What a base may be: an http(s) address without a fragment, whitespace or quotes, so that it stays a plain
# YAML scalar in the rules and a basic TOML string in pyproject.toml.
_BASE = re.compile(r"https?://[^\s#\"'<>\\]+")
_PYPROJECT_LINE = re.compile(r'^(Runbook = ")([^"]*)(")$', re.M)
_RUNBOOK_URL = re.compile(r"^(\s*runbook_url: )([^\s#]+)#", re.M)


def base(root: Path = ROOT) -> str:
    """The Runbook address from ``root``/pyproject.toml."""
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    return str(meta["project"]["urls"]["Runbook"])


def runbook_url(alertname: str, root: Path = ROOT) -> str:
    return f"{base(root)}#{alertname.lower()}"


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown``: lower case, punctuation other than ``-`` and ``_``
    dropped, spaces made ``-``; a repeated anchor gets ``-1``, ``-2``, ... Headings in code blocks are not
    headings."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not m:
            continue
        text = re.sub(r"`|\*\*|__|\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1)).lower()
        slug = "".join(c for c in text if c in "-_ " or unicodedata.category(c)[0] in "LN").replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _files(root: Path) -> list[Path]:
    return sorted((root / "prometheus" / "rules").glob("*.yml")) + sorted((root / "prometheus" / "tests").glob("*.yml"))


def problems(root: Path = ROOT) -> list[str]:
    """Every runbook_url of the rules and of their promtool tests that is not ``runbook_url(alert)``, and every
    anchor docs/runbook.md lacks."""
    want = base(root)
    out = []
    if not _BASE.fullmatch(want):
        out.append(f"pyproject.toml: Runbook {want!r} is not an http(s) address without '#', spaces or quotes")
    anchors = github_anchors((root / "docs" / "runbook.md").read_text())
    found = 0
    for path in _files(root):
        doc = yaml.safe_load(path.read_text())
        pairs: list[tuple[str, str]] = []
        for group in doc.get("groups", []):
            pairs += [(r["alert"], r["annotations"].get("runbook_url", "")) for r in group["rules"] if "alert" in r]
        for test in doc.get("tests", []):
            for case in test.get("alert_rule_test", []):
                for alert in case.get("exp_alerts") or []:
                    pairs.append((case["alertname"], alert.get("exp_annotations", {}).get("runbook_url", "")))
        rel = path.relative_to(root)
        for name, url in pairs:
            found += 1
            if url != f"{want}#{name.lower()}":
                out.append(f"{rel}: {name}: runbook_url {url!r}, want {want}#{name.lower()}")
            if name.lower() not in anchors:
                out.append(f"{rel}: {name}: docs/runbook.md has no heading with the anchor #{name.lower()}")
    if not found:
        out.append("no runbook_url found under prometheus/rules and prometheus/tests")
    return out


def set_base(new: str, root: Path = ROOT) -> list[Path]:
    """Point pyproject.toml's Runbook and every runbook_url under prometheus/rules and prometheus/tests at
    ``new``; the files changed."""
    if not _BASE.fullmatch(new):
        raise ValueError(f"{new!r}: want an http(s) address without '#', spaces or quotes")
    changed = []
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    edited, n = _PYPROJECT_LINE.subn(lambda m: m.group(1) + new + m.group(3), text)
    if n != 1:
        raise ValueError(f"{pyproject}: want one line 'Runbook = \"...\"' under [project.urls], found {n}")
    if edited != text:
        pyproject.write_text(edited)
        changed.append(pyproject)
    for path in _files(root):
        text = path.read_text()
        edited = _RUNBOOK_URL.sub(lambda m: m.group(1) + new + "#", text)
        if edited != text:
            path.write_text(edited)
            changed.append(path)
    return changed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout to work on (default: this one)")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true", help="exit 1 if a runbook_url or an anchor is wrong")
    what.add_argument("--set", metavar="URL", help="make URL the runbook's address everywhere")
    args = ap.parse_args()
    if args.set:
        try:
            for path in set_base(args.set, args.root):
                print(f"rewrote {path}")
        except ValueError as e:
            print(e, file=sys.stderr)
            return 2
    if args.check or args.set:
        found = problems(args.root)
        for p in found:
            print(p, file=sys.stderr)
        return 1 if found else 0
    print(base(args.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())

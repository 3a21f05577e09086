"""Screenshots of the landing page in headless Chromium (the Debian package ``chromium-headless-shell``).

``screenshot(url, out)`` takes one; ``pixels(path)`` reads the PNG back (8-bit RGB or RGBA, as Chromium writes
it) so that a test can check what a person would see. ``make screenshot`` runs this module on the demo:

    python -m tests.screenshot --config.file examples/demo-config.yml --out docs/landing-page.png

It starts the exporter on 127.0.0.1 and a free port, waits for its first refresh (and the history's), takes the
picture and stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

from tests.helpers import wait_ready

BROWSER = "chromium-headless-shell"
SIZE = (1280, 760)


def browser() -> str | None:
    """The browser's path, or None where the package is not installed."""
    return shutil.which(BROWSER)


def screenshot(url: str, out: Path, size: tuple[int, int] = SIZE, timeout: float = 60) -> Path:
    """A PNG of ``url`` at ``size`` (CSS pixels) in ``out``. Raises if the browser is missing or fails."""
    exe = browser()
    if exe is None:
        raise FileNotFoundError(f"{BROWSER} is not installed (Debian package {BROWSER}; make test-deps installs it)")
    with tempfile.TemporaryDirectory(prefix="spend-chromium-") as profile:
        # --no-sandbox: the suite runs as root in CI, where Chromium refuses its sandbox; the page is our own
        argv = [
            exe, "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", f"--screenshot={out}", url,
        ]  # fmt: skip
        env = {**os.environ, "HOME": profile}
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"{BROWSER} exited {done.returncode}: {done.stderr[-2000:]}")
    return out


def pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of a non-interlaced 8-bit RGB or RGBA PNG."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"{path}: depth {depth}, colour type {colour}, interlace {interlace}: not read here")
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if kind == 0 or (kind == 2 and line.count(0) == stride):  # as it is, or the row above again (most rows)
            line = line if kind == 0 else bytearray(prev)
            prev = line
            rows.append(bytes(line) if bpp == 3 else bytes(v for j, v in enumerate(line) if j % 4 != 3))
            continue
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        prev = line
        rows.append(bytes(line) if bpp == 3 else bytes(v for j, v in enumerate(line) if j % 4 != 3))
    return width, height, rows


def colours(rows: list[bytes]) -> dict[tuple[int, int, int], int]:
    """How many pixels of each RGB colour there are in ``rows`` (of ``pixels``)."""
    out: Counter[tuple[int, int, int]] = Counter()
    for row in rows:
        out.update(zip(row[0::3], row[1::3], row[2::3], strict=True))
    return dict(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config.file", dest="config", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--width", type=int, default=SIZE[0])
    parser.add_argument("--height", type=int, default=SIZE[1])
    args = parser.parse_args()
    port = _free_port()
    exporter = [sys.executable, "-m", "exporter.cli", "run", "--config.file", args.config]
    proc = subprocess.Popen([*exporter, "--web.listen-address", f"127.0.0.1:{port}"])
    try:
        deadline = time.monotonic() + 120
        why = wait_ready(f"http://127.0.0.1:{port}", proc, 120, poll=0.3)
        if why is not None:
            print(f"the exporter: {why}", file=sys.stderr)
            return 1
        # the history's backfill runs after the first refresh: wait for it, so the picture shows a steady state
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
                if not any(s["refreshing"] for s in json.load(r)["sources"]):
                    break
            time.sleep(0.5)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(f"http://127.0.0.1:{port}/", args.out, (args.width, args.height))
        print(f"{args.out}: {args.out.stat().st_size:,} bytes")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())

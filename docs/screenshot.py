"""Make the README's pictures of ember's TensorBoard dashboard with headless Chromium.

It trains two short runs of fashion-mnist-mlp on the real FashionMNIST the way a user does (`ember train`
with its default folders, the default learning rate and --lr 0.05), serves them with `ember board`, and
photographs what a user sees, TensorBoard's own defaults untouched (smoothing, the groups it opens):
  docs/tensorboard.png         the page TensorBoard opens on (Time Series): the epoch and iteration groups
  docs/tensorboard-images.png  the IMAGES page: the confusion matrix and misclassified test images
Needs Chromium (`apt-get install chromium`). Run from the repository root:
    .venv/bin/python docs/screenshot.py [--runs FOLDER] [--epochs 4] [--keep]
`--runs` reuses runs already in FOLDER instead of training.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1"]
PAGES = {  # file -> (TensorBoard page, window size); "" is the page TensorBoard opens on
    "tensorboard.png": ("", "1280,1400"),
    "tensorboard-images.png": ("#images", "1150,1000"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(work: Path, epochs: int) -> None:
    """Two runs of fashion-mnist-mlp, as `ember train` names them, in work/runs: its defaults and --lr 0.05."""
    for flags in ([], ["--lr", "0.05"]):
        subprocess.run([sys.executable, "-m", "ember", "train", "fashion-mnist-mlp", "--epochs", str(epochs),
                        "--no-progress", *flags], check=True, stdout=subprocess.DEVNULL, cwd=work)


def wait_until_served(port: int, run: str, deadline_s: float = 90) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with opener.open(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as response:
                if run.encode() in response.read():
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"screenshot: TensorBoard on port {port} did not serve {run} within {deadline_s:.0f} s")


def photograph(url: str, out: Path, size: str, chromium: str) -> None:
    profile = tempfile.mkdtemp(prefix="ember-chromium-")
    try:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                        "--virtual-time-budget=20000", f"--screenshot={out}", url],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    from PIL import Image

    with Image.open(out) as shot:  # 256 colours are plenty for a dashboard, and keep the file small
        small = shot.convert("RGB").quantize(colors=256)
    small.save(out, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=None, help="photograph the runs in this folder (no training)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each run trained")
    parser.add_argument("--keep", action="store_true", help="keep the trained runs (their folder is printed)")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("screenshot: error: Chromium not found; install it (apt-get install chromium)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="ember-screenshot-"))
    runs = args.runs or work / "runs"
    if args.runs is None:
        train(work, args.epochs)
    port = free_port()
    board = subprocess.Popen([sys.executable, "-m", "ember", "board", str(runs), "--port", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_served(port, "fashion-mnist-mlp/")
        for name, (page, size) in PAGES.items():
            # forceSVG: Time Series draws its charts with SVG instead of WebGL, which headless Chromium lacks
            photograph(f"http://127.0.0.1:{port}/?darkMode=false&forceSVG=true{page}", DOCS / name, size, chromium)
            print(f"wrote {DOCS / name} ({os.path.getsize(DOCS / name) // 1024} KiB)")
    finally:
        board.terminate()
        board.wait(timeout=30)
        if args.keep:
            print(f"runs kept in {runs}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

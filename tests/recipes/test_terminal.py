"""`ember train` in a real terminal (a pseudo-terminal read back through the pyte terminal emulator).

What a user sees at the end is the emulated screen: every printed line whole, above the bar; one complete
bar per epoch (loss, samples/s, time left), drawn before that epoch's evaluation lines; no stale bars.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from fakedata import write_fashion_mnist

pyte = pytest.importorskip("pyte", reason="the terminal tests read the screen with pyte: pip install -e .[dev]")

COLUMNS, ROWS = 120, 80
FLOAT = r"\d+\.\d+"
PRINTED = [  # every line that is not a bar: the seed's lines and ember's own
    r"Epoch [12]", r"-{31}", rf"loss: {FLOAT}  \[ *\d+/  800\]", r"Test Error:",
    rf" Accuracy: {FLOAT}%, Avg loss: {FLOAT}", r"Done!", r"ember: run \S+: checkpoints go to \S+, no TensorBoard logs",
]  # fmt: skip
BAR = re.compile(r"Epoch (\d)/2:")


def run_in_terminal(argv: list[str], cwd: Path, timeout: float = 120) -> tuple[int, list[str]]:
    """Run `argv` with stdin, stdout and stderr on a 120-column pseudo-terminal; exit status and screen lines."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    env = dict(os.environ, TERM="xterm", COLUMNS=str(COLUMNS), LINES=str(ROWS), OMP_NUM_THREADS="1",
               EMBER_OFFLINE="1")
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True,
                            start_new_session=True)
    os.close(slave)
    screen = pyte.Screen(COLUMNS, ROWS)
    stream = pyte.ByteStream(screen)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            stream.feed(chunk)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, [line.rstrip() for line in screen.display if line.strip()]


@pytest.mark.slow
def test_printed_lines_stay_whole_above_the_bar_and_each_epoch_bar_completes_first(tmp_path):
    write_fashion_mnist(tmp_path / "data", n_train=800, n_test=64)
    code, lines = run_in_terminal(
        [sys.executable, "-m", "ember", "train", "fashion-mnist-mlp", "--data-root", str(tmp_path / "data"),
         "--epochs", "2", "--batch-size", "2", "--progress", "--no-tensorboard", "--device", "cpu"],
        cwd=tmp_path,
    )  # fmt: skip
    screen = "\n".join(lines)
    assert code == 0, screen
    bars = [(i, line) for i, line in enumerate(lines) if BAR.match(line)]
    assert [BAR.match(line).group(1) for _, line in bars] == ["1", "2"], f"one bar per epoch, no stale ones:\n{screen}"
    for _, line in bars:
        assert "100%" in line and "400/400" in line, f"the bar is not complete: {line!r}"
        assert re.search(r"<\d\d:\d\d", line) and "loss=" in line and "samples/s=" in line, line
    others = [line for i, line in enumerate(lines) if i not in dict(bars)]
    for line in others:
        assert any(re.fullmatch(p, line) for p in PRINTED), f"a line glued to a bar, or broken: {line!r}\n{screen}"
    evaluations = [i for i, line in enumerate(lines) if line == "Test Error:"]
    assert len(evaluations) == 2 and all(bar < ev for (bar, _), ev in zip(bars, evaluations)), screen
    assert sum(line.startswith("loss: ") for line in others) == 8, screen  # steps 1, 101, 201, 301 of each epoch

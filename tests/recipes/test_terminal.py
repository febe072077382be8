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


def _controlling_terminal() -> None:
    """In the child (a new session, stdin on the pseudo-terminal): make it the controlling terminal, so that a
    Ctrl-C typed on it sends SIGINT to the child's process group as in a real shell."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_in_terminal(argv: list[str], cwd: Path, timeout: float = 120, columns: int = COLUMNS,
                    interrupt_when: str | None = None) -> tuple[int, list[str]]:
    """Run `argv` with stdin, stdout and stderr on a pseudo-terminal of `columns` columns; exit status and
    screen lines. With `interrupt_when`, type Ctrl-C once the screen matches that regular expression."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, columns, 0, 0))
    env = dict(os.environ, TERM="xterm", COLUMNS=str(columns), LINES=str(ROWS), OMP_NUM_THREADS="1",
               EMBER_OFFLINE="1")
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True,
                            start_new_session=True, preexec_fn=_controlling_terminal)
    os.close(slave)
    screen = pyte.Screen(columns, ROWS)
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
            if interrupt_when is not None and re.search(interrupt_when, "\n".join(screen.display)):
                os.write(master, b"\x03")
                interrupt_when = None
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


def mlp_argv(data: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "ember", "train", "fashion-mnist-mlp", "--data-root", str(data), "--epochs", "2",
            "--batch-size", "2", "--progress", "--no-tensorboard", "--device", "cpu", *flags]


@pytest.mark.slow
def test_at_60_columns_the_bar_keeps_its_loss_whole(tmp_path):
    write_fashion_mnist(tmp_path / "data", n_train=200, n_test=64)  # 100 steps an epoch
    code, lines = run_in_terminal(mlp_argv(tmp_path / "data"), cwd=tmp_path, columns=60)
    screen = "\n".join(lines)
    assert code == 0, screen
    bars = [line for line in lines if BAR.match(line)]
    assert [BAR.match(line).group(1) for line in bars] == ["1", "2"], screen
    for line in bars:
        assert "100/100" in line and re.search(r"loss=\d+\.\d{4}\]$", line), f"cut at 60 columns: {line!r}"


@pytest.mark.slow
def test_ctrl_c_leaves_no_echo_and_no_stale_bar_and_the_bar_shows_the_stop_iteration(tmp_path):
    write_fashion_mnist(tmp_path / "data", n_train=800, n_test=64)
    code, lines = run_in_terminal(mlp_argv(tmp_path / "data"), cwd=tmp_path,
                                  interrupt_when=r"Epoch 1/2: +\d+%.*\| +[1-9]\d*/400")
    screen = "\n".join(lines)
    assert code == 130, screen
    assert "^C" not in screen, screen
    bars = [line for line in lines if BAR.match(line)]
    assert len(bars) == 1, f"one bar, no stale copy:\n{screen}"
    stopped = re.search(r"Stopped by SIGINT at epoch 1, iteration (\d+);", screen)
    assert stopped, screen
    assert f" {stopped.group(1)}/400 " in bars[0], f"the bar and the stop message disagree:\n{screen}"
    assert any(line.startswith("SIGINT received: finishing the current iteration") for line in lines), screen


@pytest.mark.slow
def test_progress_on_a_pipe_writes_whole_lines(tmp_path):
    write_fashion_mnist(tmp_path / "data", n_train=800, n_test=64)
    env = dict(os.environ, OMP_NUM_THREADS="1", EMBER_OFFLINE="1")
    done = subprocess.run(mlp_argv(tmp_path / "data"), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, timeout=300)
    assert done.returncode == 0, done.stdout
    assert "\r" not in done.stdout and "\x1b" not in done.stdout, repr(done.stdout[-2000:])
    lines = [line.rstrip() for line in done.stdout.splitlines() if line.strip()]  # the seed's lines end in a space
    bars = [line for line in lines if BAR.match(line)]
    assert [BAR.match(line).group(1) for line in bars] == ["1", "2"], done.stdout  # one line per epoch
    assert all("400/400" in line and "loss=" in line for line in bars), bars
    for line in lines:
        assert line in bars or any(re.fullmatch(p, line) for p in PRINTED), f"a glued or broken line: {line!r}"

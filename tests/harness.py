"""Shared pieces of tests/reliability/ and tests/run/: tiny set-ups, bitwise state checks, CLI runs, child processes.

The test modules import it as `harness` (setup.cfg puts tests/ on the path); so do the child programs in
tests/reliability/programs/, which put tests/ on their own path first.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ember import create_trainer
from ember.engine import Engine, Events, order

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
PROGRAMS = TESTS / "reliability" / "programs"
CHECKPOINT_NAME = re.compile(r"^(best_)?.+_\d{9,}(_score=.+)?\.pt$")


def child_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: one thread each (the machine has 2 cores), offline data."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", EMBER_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("EMBER_DEBUG", None)
    env.update(extra)
    return env


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Bitwise equality of nested state dicts (tensors with torch.equal, including dtype and shape)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{where}: tensor vs {type(b).__name__}"
        same_kind = a.dtype == b.dtype and a.shape == b.shape
        assert same_kind, f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a, b), f"{where}: values differ (max abs diff {(a.double() - b.double()).abs().max()})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(map(str, a))} vs {b!r:.200}"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: {a!r:.200} vs {b!r:.200}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def load_payload(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A whole checkpoint file, read the way ember reads it (weights_only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_files(dirname: str | os.PathLike[str]) -> list[str]:
    """Names in `dirname` that carry a checkpoint's name (temp files excluded)."""
    return sorted(n for n in os.listdir(dirname) if CHECKPOINT_NAME.match(n) and not n.startswith(".tmp-"))


def temp_files(dirname: str | os.PathLike[str]) -> list[str]:
    return sorted(n for n in os.listdir(dirname) if n.startswith(".tmp-"))


def tiny_regression(features: int, targets: int, *, hidden: int | None = None, lr: float = 0.1,
                    loss_fn: Callable[[Any, Any], torch.Tensor] = F.mse_loss,
                    seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, Engine]:
    """A tiny trainer, seeded (`torch.manual_seed(seed)`) before the model is made: nn.Linear(features,
    targets), or Linear-ReLU-Linear through `hidden` units; plain SGD at `lr`; ember's trainer on `loss_fn`."""
    torch.manual_seed(seed)
    if hidden is None:
        model: nn.Module = nn.Linear(features, targets)
    else:
        model = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, targets))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return model, optimizer, create_trainer(model, optimizer, loss_fn)


# ---------------------------------------------------------------------------------------------- CLI runs
def write_tiny_mnist(root: Path, n_train: int = 48, n_test: int = 16) -> Path:
    """A small MNIST in torchvision's layout under root (tests/fakedata.py writes the real IDX format)."""
    from fakedata import write_mnist

    write_mnist(root, n_train=n_train, n_test=n_test)
    return root


def lenet_argv(root: Path, folder: Path, *extra: str, epochs: int = 1, batch_size: int = 8,
               tensorboard: bool = False) -> list[str]:
    """`ember` arguments of a short mnist-lenet run on the CPU: data from `root`, checkpoints in `folder`, no
    progress bar and (unless `tensorboard`) no TensorBoard logs, then `extra` (later flags win)."""
    quiet = [] if tensorboard else ["--no-tensorboard"]
    return ["train", "mnist-lenet", "--data-root", str(root), "--epochs", str(epochs), "--batch-size", str(batch_size),
            "--checkpoint-dir", str(folder), *quiet, "--no-progress", "--device", "cpu", *extra]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`ember <argv>` in this process: (exit status, stdout, stderr). It computes with one thread, as the
    child processes do (child_env), so that runs split between a child and this process match bit for bit."""
    from ember.recipes.cli import main

    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse errors
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ember: error:")]


# ---------------------------------------------------------------------------------------------- trainer hooks
class HandlerFault(RuntimeError):
    """The exception a test-only handler raises."""


def attach_hooks(
    engine: Engine,
    *,
    report: bool = False,
    pace: float = 0.0,
    pause_at: int | None = None,
    pause: float = 0.0,
    stuck: bool = False,
    corrupt_at: int | None = None,
    corrupt: Callable[[Any], Any] | None = None,
    fail_at: int | None = None,
) -> None:
    """Test-only behaviour on a trainer: print `ITER k` after each iteration (after its checkpoint), sleep
    `pace` per iteration and up to `pause` seconds after iteration `pause_at` (cut short when the trainer is
    asked to terminate, unless `stuck`), and replace the batch of iteration `corrupt_at` with
    `corrupt(batch)` (a NaN sample, a wrong shape...); a handler raises HandlerFault after iteration `fail_at`."""

    def after(e: Engine) -> None:
        k = e.state.iteration
        if report:
            print(f"ITER {k}", flush=True)
        if pace:
            time.sleep(pace)
        if k == pause_at:
            print(f"PAUSE {k}", flush=True)
            end = time.monotonic() + pause
            while time.monotonic() < end and (stuck or not e.should_terminate):
                time.sleep(0.02)

    def swap(e: Engine) -> None:
        if e.state.iteration + 1 == corrupt_at:
            e.state.batch = corrupt(e.state.batch)

    def fail(e: Engine) -> None:
        raise HandlerFault(f"handler fault injected after iteration {e.state.iteration}")

    after.ember_order = order.CHECKPOINT + 1  # type: ignore[attr-defined]  # after the iteration's checkpoint
    if report or pace or pause_at is not None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, after)
    if fail_at is not None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=fail_at), fail)
    if corrupt_at is not None and corrupt is not None:
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, swap)


@contextlib.contextmanager
def hooked_trainers(**hooks: Any) -> Iterator[None]:
    """While active, every trainer (an Engine with an optimizer) gets `attach_hooks(**hooks)` when it runs."""
    original = Engine.run

    def run(self: Engine, *args: Any, **kwargs: Any) -> Any:
        if hasattr(self, "optimizer") and not getattr(self, "_reliability_hooks", False):
            self._reliability_hooks = True
            attach_hooks(self, **hooks)
        return original(self, *args, **kwargs)

    Engine.run = run  # type: ignore[method-assign]
    try:
        yield
    finally:
        Engine.run = original  # type: ignore[method-assign]


def nan_inputs(batch: Any) -> Any:
    x, y = batch
    return torch.full_like(x, float("nan")), y


# ---------------------------------------------------------------------------------------------- children
class Child:
    """A child process whose stdout lines are collected by a thread, so tests can wait for a line."""

    def __init__(self, cmd: list[str], *, new_session: bool = False, stdin: bool = False, cwd: Path = REPO) -> None:
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=child_env(),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=new_session,
        )
        self.lines: list[str] = []
        self.err_lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._queue, self.lines), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, None, self.err_lines), daemon=True).start()

    @staticmethod
    def _pump(stream: Any, q: queue.Queue | None, store: list[str]) -> None:
        for line in stream:
            store.append(line.rstrip("\n"))
            if q is not None:
                q.put(line.rstrip("\n"))
        if q is not None:
            q.put(None)

    def wait_for(self, predicate: Callable[[str], Any], timeout: float = 120.0) -> str:
        """The next stdout line for which predicate is true; fails if the child ends or time runs out first."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise AssertionError(f"timed out after {timeout}s waiting for output; {self.describe()}") from None
            if line is None:
                raise AssertionError(f"child ended before the expected output; {self.describe()}")
            if predicate(line):
                return line

    def events(self, timeout: float = 120.0, **match: Any) -> dict[str, Any]:
        """The next JSON event line whose fields equal `match` (a tuple matches any of its values)."""

        def matches(line: str) -> bool:
            if not line.startswith("{"):
                return False
            event = json.loads(line)
            return all(event.get(k) in (v if isinstance(v, tuple) else (v,)) for k, v in match.items())

        return json.loads(self.wait_for(matches, timeout))

    def send(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def signal(self, signum: int, group: bool = False) -> None:
        if group:
            os.killpg(self.proc.pid, signum)
        else:
            self.proc.send_signal(signum)

    def wait(self, timeout: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"child did not exit within {timeout}s; {self.describe()}") from None

    @property
    def stdout(self) -> str:
        return "\n".join(self.lines)

    @property
    def stderr(self) -> str:
        return "\n".join(self.err_lines)

    def describe(self) -> str:
        command = " ".join(map(str, self.cmd))
        return f"$ {command}\n--- stdout:\n{self.stdout[-3000:]}\n--- stderr:\n{self.stderr[-3000:]}"

    def close(self) -> None:
        """Kill the child (and its session, if it has one) if it still runs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(self.proc.pid) == self.proc.pid:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                else:
                    self.proc.kill()
            self.proc.wait(30)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def python(program: str, *args: str) -> list[str]:
    """Command line running tests/reliability/programs/<program> with this interpreter."""
    return [sys.executable, str(PROGRAMS / program), *map(str, args)]

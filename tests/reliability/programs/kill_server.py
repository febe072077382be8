"""A fork server for test_reliability_kill.py: imports torch once, then forks one training run per command,
so that a test can SIGKILL many runs without paying Python + torch start-up each time.

Each stdin line is a JSON command {"dir", "config", "out", "hook", "hook_after", "pace", "async"}. The forked
run resumes from the newest checkpoint in "dir" (if any) and trains a small Dropout MLP on shuffled data,
checkpointing every iteration with the keep-last/keep-best settings of CONFIGS[config], in the background
with "async" (the hooks below then stop the writer thread, and training goes on up to the next save, which
waits for it). With "hook", once "hook_after" saves have been asked for, the run stops at that point of a
save and sleeps there to be killed:
  write   half of the temp file written         rename   temp file complete, not yet renamed
  evict   new file renamed in, old not deleted  saved    the save has returned
With "out", the final model and optimizer states are written there. Events go to stdout as JSON lines:
child {pid}; started {pid, step, stray}; saved {pid, step, path, thread} (a write has returned); hook {pid, kind,
step}; done {pid}; exit {pid, signal, code}.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import sys
import threading
import time
import traceback
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import ember.callbacks.checkpoint as ckmod
from ember.callbacks import Checkpoint
from ember.checkpoint.folder import CheckpointFolder
from ember.data import DeviceLoader
from ember.engine import Engine, Events
from ember.steps import create_trainer

EPOCHS, N, BATCH = 4, 40, 5  # 8 iterations per epoch, 32 in all
SCORES = [0.3, math.nan, 0.9, 0.1, math.inf, 0.5, 0.7, 0.2, -math.inf, 0.6, 0.4]
CONFIGS: dict[str, dict[str, Any]] = {
    "last": {"keep_last": 1},
    "best": {"keep_last": 1, "keep_best": 2, "monitor": lambda e: SCORES[e.state.iteration % len(SCORES)]},
    "best_only": {  # a falling score: nearly every save is a new best and evicts the previous one
        "keep_last": 0,
        "keep_best": 1,
        "mode": "min",
        "monitor": lambda e: math.nan if e.state.iteration % 4 == 0 else 100.0 / e.state.iteration,
    },
}


def emit(event: str, **fields: Any) -> None:
    """One JSON line, written with a single write so lines of the server and its children never mix."""
    os.write(1, (json.dumps({"ev": event, **fields}) + "\n").encode())


def noisy(batch: Any, device: Any, non_blocking: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs shifted by draws of Python's and NumPy's RNG: a resume that did not restore them would differ."""
    x, y = batch
    return x + 0.01 * random.random() + 0.01 * float(np.random.rand()), y


def temp_files(dirname: str) -> list[str]:
    return sorted(n for n in os.listdir(dirname) if n.startswith(ckmod.TMP_PREFIX)) if os.path.isdir(dirname) else []


def build() -> tuple[dict[str, Any], DeviceLoader]:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (N, 1, 6, 6), generator=g, dtype=torch.uint8)
    loader = DeviceLoader((images, torch.arange(N) % 4), BATCH, shuffle=True, seed=3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    trainer = create_trainer(model, optimizer, F.cross_entropy, prepare_batch=noisy)
    return {"model": model, "optimizer": optimizer, "trainer": trainer}, loader


def install_hook(kind: str | None, after: int) -> None:
    """Make the run stop (sleeping, to be killed) at `kind` of a save, from save number `after` on."""
    saves = [0]
    current = [0]  # the step being written (one write at a time, in the training or the writer thread)
    pause = 120.0

    def armed() -> bool:
        return kind is not None and saves[0] >= after

    def stop_here(step: int) -> None:
        emit("hook", pid=os.getpid(), kind=kind, step=step)
        time.sleep(pause)

    original_save = Checkpoint._save

    def _save(self: Checkpoint, *args: Any) -> str | None:
        saves[0] += 1
        return original_save(self, *args)

    Checkpoint._save = _save  # type: ignore[method-assign]

    original_write = CheckpointFolder.write

    def write(self: CheckpointFolder, payload: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        current[0] = step = payload["step"]
        path = original_write(self, payload, *args, **kwargs)
        emit("saved", pid=os.getpid(), step=step, path=path, thread=threading.current_thread().name)
        if kind == "saved" and armed():
            stop_here(step)
        return path

    CheckpointFolder.write = write  # type: ignore[method-assign]

    original_torch_save = torch.save

    def slow_torch_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if kind == "write" and armed() and isinstance(obj, dict) and obj.get("format") == ckmod.FORMAT:
            buffer = io.BytesIO()
            original_torch_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            stop_here(current[0])
        original_torch_save(obj, f, *args, **kwargs)

    torch.save = slow_torch_save

    original_replace = os.replace

    def slow_replace(src: Any, dst: Any) -> None:
        if kind == "rename" and armed() and os.path.basename(src).startswith(ckmod.TMP_PREFIX):
            stop_here(current[0])
        original_replace(src, dst)

    os.replace = slow_replace

    original_evict = CheckpointFolder.evict

    def slow_evict(self: CheckpointFolder) -> None:
        if kind == "evict" and armed():
            stop_here(current[0])
        original_evict(self)

    CheckpointFolder.evict = slow_evict  # type: ignore[method-assign]


def run(cmd: dict[str, Any]) -> None:
    install_hook(cmd.get("hook"), int(cmd.get("hook_after", 1)))
    objects, loader = build()
    trainer = objects["trainer"]
    Checkpoint.resume_latest(cmd["dir"], objects)
    stray = temp_files(cmd["dir"])
    trainer.add(Checkpoint(objects, cmd["dir"], every_iterations=1, async_save=bool(cmd.get("async")),
                           **CONFIGS[cmd["config"]]))
    # attach removed the temp files of dead processes: report what it left, for the test to check
    left = temp_files(cmd["dir"])
    emit("started", pid=os.getpid(), step=trainer.state.iteration, stray=stray, left=left)
    if cmd.get("pace"):
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda: time.sleep(cmd["pace"]))
    if trainer.state.max_epochs is None or not Engine._is_done(trainer.state):
        trainer.run(loader, max_epochs=EPOCHS)
    if cmd.get("out"):
        torch.save({"model": objects["model"].state_dict(), "optimizer": objects["optimizer"].state_dict(),
                    "iteration": trainer.state.iteration}, cmd["out"])
    emit("done", pid=os.getpid(), step=trainer.state.iteration)


def serve() -> None:
    torch.set_num_threads(1)
    for line in sys.stdin:
        cmd = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                run(cmd)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        emit("child", pid=pid)
        _, status = os.waitpid(pid, 0)
        emit("exit", pid=pid, signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
             code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None)


if __name__ == "__main__":
    serve()

"""Promise 9: the best files are the true top k, and hold the weights their score was computed from.

A run is killed (in-process: an exception no handler catches, raised at the n-th rename, link or delete of its
checkpoint folder) at every such step of its saves in turn, then resumed to the end: the best files left are
the top k of the scores recorded in any file that was renamed into place. A folder where a best file is lost
(what a kill between the regular file and its best link left in earlier versions) gets it back from the
regular file. With an Evaluate attached, best files are made right after the evaluations, whatever the save
schedule (every_iterations, every_epochs, evaluation every k epochs), and no warning comes before the first.
"""

from __future__ import annotations

import math
import os
import re
import warnings

import pytest
import torch
from harness import assert_same, checkpoint_files, load_payload, tiny_regression
from torch import nn
from torch.nn import functional as F

from ember.callbacks import Checkpoint, EvalEvents, Evaluate
from ember.engine import Engine, Events
from ember.steps import create_trainer

SCORES = [0.3, 0.9, 0.1, math.nan, 0.7, 0.8, 0.2, 0.95, 0.5, math.inf]  # by iteration, 1-based
KEEP_BEST = 2
NAME = re.compile(r"^(best_)?checkpoint_(\d{9})(_score=.*)?\.pt$")


class Killed(BaseException):
    """What a SIGKILL is to the run: nothing after it happens."""


def build():
    model, optimizer, trainer = tiny_regression(4, 2, hidden=4)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(3, 4, generator=g), torch.randn(3, 2, generator=g)) for _ in range(len(SCORES))]
    return {"model": model, "optimizer": optimizer, "trainer": trainer}, batches


def run(folder, resume: bool) -> None:
    objects, batches = build()
    if resume:
        Checkpoint.resume_latest(folder, objects)
    objects["trainer"].add(Checkpoint(objects, folder, every_iterations=1, keep_last=1, keep_best=KEEP_BEST,
                                      monitor=lambda e: SCORES[e.state.iteration - 1]))
    if objects["trainer"].state.iteration < len(SCORES):
        objects["trainer"].run(batches, max_epochs=1)


def top_k(steps: set[int]) -> list[int]:
    finite = [s for s in steps if math.isfinite(SCORES[s - 1])]
    return sorted(sorted(finite, key=lambda s: (SCORES[s - 1], s), reverse=True)[:KEEP_BEST])


def best_steps(folder) -> list[int]:
    return sorted(int(m.group(2)) for n in os.listdir(folder) if (m := NAME.match(n)) and m.group(1))


@pytest.fixture
def file_ops(monkeypatch, tmp_path):
    """Count renames, links and deletes in tmp_path, raise Killed at the `kill_at`-th, and record the steps
    whose file was renamed into place (its score is then recorded on disk)."""
    state = {"count": 0, "kill_at": None, "recorded": set()}
    real = {name: getattr(os, name) for name in ("replace", "link", "unlink")}
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not what this tests: keep it fast

    def wrap(name):
        def op(*args, **kwargs):
            if any(str(tmp_path) in os.fspath(arg) for arg in args):
                state["count"] += 1
                if state["count"] == state["kill_at"]:
                    raise Killed(f"killed at {name} {args}")
            result = real[name](*args, **kwargs)
            match = NAME.match(os.path.basename(os.fspath(args[-1])))
            if name == "replace" and match:
                state["recorded"].add(int(match.group(2)))
            return result
        return op

    for name in real:
        monkeypatch.setattr(os, name, wrap(name))
    return state


def test_a_kill_at_any_file_operation_leaves_the_true_top_k_after_resume(tmp_path, file_ops):
    run(tmp_path / "straight", resume=False)
    total = file_ops["count"]
    assert best_steps(tmp_path / "straight") == top_k(set(range(1, len(SCORES) + 1))) == [2, 8]
    assert total > 20
    for kill_at in range(1, total + 1):
        folder = tmp_path / f"kill{kill_at}"
        file_ops.update(count=0, kill_at=kill_at, recorded=set())
        with pytest.raises(Killed):
            run(folder, resume=False)
        recorded_before = set(file_ops["recorded"])
        file_ops["kill_at"] = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run(folder, resume=True)
        recorded = recorded_before | file_ops["recorded"]
        assert best_steps(folder) == top_k(recorded), f"kill at file operation {kill_at}: {sorted(os.listdir(folder))}"
        for step in best_steps(folder):
            [name] = [n for n in os.listdir(folder) if n.startswith(f"best_checkpoint_{step:09d}")]
            assert load_payload(folder / name)["score"] == SCORES[step - 1]


def test_a_lost_best_file_is_made_again_from_its_regular_file(tmp_path):
    """The folder an earlier version left after a kill between a regular file's rename and its best link."""
    objects, batches = build()
    objects["trainer"].add(Checkpoint(objects, tmp_path, every_iterations=1, keep_last=None, keep_best=KEEP_BEST,
                                      monitor=lambda e: SCORES[e.state.iteration - 1]))
    objects["trainer"].add_event_handler(Events.ITERATION_COMPLETED(once=6), lambda e: e.terminate())
    objects["trainer"].run(batches[:3], max_epochs=4)
    assert best_steps(tmp_path) == [2, 6]
    (tmp_path / "best_checkpoint_000000002_score=0.9.pt").unlink()
    # left: regular files 1 to 6 and best 6; the true top two are 2 (0.9) and 6 (0.8)
    objects, batches = build()
    Checkpoint.resume_latest(tmp_path, objects)
    assert objects["trainer"].state.iteration == 6
    objects["trainer"].add(Checkpoint(objects, tmp_path, every_iterations=1, keep_last=1, keep_best=KEEP_BEST,
                                      monitor=lambda e: SCORES[e.state.iteration - 1]))
    objects["trainer"].add_event_handler(Events.ITERATION_COMPLETED(once=7), lambda e: e.terminate())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        objects["trainer"].run(batches[:3], max_epochs=4)
    assert objects["trainer"].state.iteration == 7
    assert best_steps(tmp_path) == [2, 6]
    remade = load_payload(tmp_path / "best_checkpoint_000000002_score=0.9.pt")
    assert remade["step"] == 2 and remade["score"] == 0.9


# ---------------------------------------------------------------------------------------------- issue 12.4
def evaluated_run(tmp_path, *, every_iterations=None, every_epochs=None, eval_every=1, before=False):
    """A trainer with an Evaluate whose score depends on the weights; returns what each evaluation saw."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.2), F.mse_loss)
    evaluator = Engine(lambda engine, batch: None)
    seen: dict[int, tuple[float, dict]] = {}

    @evaluator.on(Events.COMPLETED)
    def score(engine):
        engine.state.metrics["score"] = float(model[0].weight.detach().sum())

    ckpt = Checkpoint({"model": model}, tmp_path, every_iterations=every_iterations, every_epochs=every_epochs,
                      keep_last=None, keep_best=2, monitor="val/score")
    if before:
        trainer.add(ckpt)
    trainer.add(Evaluate(evaluator, [0], every_epochs=eval_every))
    trainer.add_event_handler(
        EvalEvents.EVALUATED, lambda e: seen.update({e.state.iteration: (
            e.state.metrics["val/score"], {k: v.clone() for k, v in model.state_dict().items()})}))
    if not before:
        trainer.add(ckpt)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(3, 4, generator=g), torch.randn(3, 2, generator=g)) for _ in range(5)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "monitor is not in engine.state.metrics" before the first evaluation
        trainer.run(batches, max_epochs=6)
    return seen


@pytest.mark.parametrize(
    "schedule",
    [
        {"every_iterations": 3},
        {"every_iterations": 3, "before": True},
        {"every_epochs": 1},
        {"every_epochs": 1, "eval_every": 2},
        {"every_epochs": 1, "eval_every": 2, "before": True},
        {"every_iterations": 7, "eval_every": 3},
    ],
    ids=["iterations", "iterations-attached-first", "epochs", "eval-every-2", "eval-every-2-attached-first",
         "iterations-7-eval-every-3"],
)
def test_best_files_hold_the_weights_their_score_was_computed_from(tmp_path, schedule):
    seen = evaluated_run(tmp_path, **schedule)
    assert len(seen) >= 2
    ranked = sorted(seen, key=lambda it: (seen[it][0], it), reverse=True)[:2]
    best = {n: load_payload(tmp_path / n) for n in checkpoint_files(tmp_path) if n.startswith("best_")}
    assert sorted(p["step"] for p in best.values()) == sorted(ranked), sorted(best)
    for payload in best.values():
        score, weights = seen[payload["step"]]
        assert payload["score"] == score
        assert_same(weights, payload["objects"]["model"], f"best file of iteration {payload['step']}")
    for name in checkpoint_files(tmp_path):  # a file records a score only for its own weights (or none)
        payload = load_payload(tmp_path / name)
        assert payload["score"] in (None, seen.get(payload["step"], (None,))[0]), name

"""Every recipe, stopped at a mid-epoch checkpoint and resumed, prints what its straight run prints.

Each recipe trains 2 epochs of 8 iterations on tiny fake data three ways: straight; stopped after iteration 11
(`--max-iterations`, a checkpoint in the middle of epoch 2); resumed from that checkpoint. Markers printed at
the end of iteration 11 and at the start of iteration 12 split the output: the stopped run prints the straight
run's lines up to the stop, and the resumed run, from its first iteration on, the straight run's lines after it,
epoch totals included (docs/order-and-state.md: every stateful handler, built-in or the recipe's own, carries
its state). Timings are masked; ember's own lines about the run (its folder, the stop, the resume) are left out.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fakedata import accept_fake_cifar10, offline, write_cifar10, write_fashion_mnist, write_mnist

from ember.engine import Events
from ember.engine import order as order_levels
from ember.recipes import RECIPES
from ember.recipes.cli import main
from ember.recipes.common import RunContext

STOP = 11  # epoch 2, iteration 3 of 8
STOPPED, RESUMING = "<<end of iteration 11>>", "<<start of iteration 12>>"
RUN_LINES = re.compile(r"^(ember: |Stopped after iteration |Resumed from |No earlier run )")
TIMINGS = [(re.compile(r"\d+\.\d+ s since start"), "T s since start"),
           (re.compile(r"\d+\.\d+ ms"), "T ms")]  # fmt: skip


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    write_fashion_mnist(root / "fashion", n_train=256, n_test=64)
    write_mnist(root / "mnist", n_train=256, n_test=64)
    write_cifar10(root / "cifar", n_train=250, n_test=64)
    return {"fashion-mnist": root / "fashion", "mnist": root / "mnist", "cifar10": root / "cifar"}


class _Say:
    def __init__(self, event: object, text: str) -> None:
        self.event, self.text = event, text

    def attach(self, engine: object) -> None:
        engine.add_event_handler(self.event, self._say)

    def _say(self, _: object) -> None:
        print(self.text)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch, datasets):
    """In the test's folder, offline, fake CIFAR-10 accepted, and the two markers printed by every run."""
    monkeypatch.chdir(tmp_path)
    offline(monkeypatch, tmp_path)
    fit = RunContext.fit

    def marked_fit(self, trainer, loader, objects, **kwargs):
        trainer.add(_Say(Events.ITERATION_COMPLETED(once=STOP), STOPPED), order=order_levels.LAST + 1)
        trainer.add(_Say(Events.ITERATION_STARTED(once=STOP + 1), RESUMING), order=order_levels.FIRST - 1)
        return fit(self, trainer, loader, objects, **kwargs)

    monkeypatch.setattr(RunContext, "fit", marked_fit)
    with accept_fake_cifar10(datasets["cifar10"] / "cifar-10-batches-py"):
        yield


def printed(capsys, datasets, name: str, *flags: str) -> list[str]:
    """The lines `ember train name` prints on stdout, without ember's lines about the run, timings masked."""
    main(["train", name, "--data-root", str(datasets[RECIPES[name].dataset]), "--epochs", "2", "--batch-size", "32",
          "--no-progress", "--no-tensorboard", "--device", "cpu", *flags])
    lines = []
    for line in capsys.readouterr().out.splitlines():
        for pattern, mask in TIMINGS:
            line = pattern.sub(mask, line)
        if not RUN_LINES.match(line):
            lines.append(line)
    return lines


def split(lines: list[str], marker: str) -> tuple[list[str], list[str]]:
    assert lines.count(marker) == 1, f"{marker} printed {lines.count(marker)} times:\n" + "\n".join(lines)
    i = lines.index(marker)
    return lines[:i], lines[i + 1:]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
def test_a_resumed_run_prints_what_the_straight_run_prints(capsys, datasets, name):
    straight = printed(capsys, datasets, name, "--checkpoint-dir", "straight")
    stopped = printed(capsys, datasets, name, "--checkpoint-dir", "part", "--max-iterations", str(STOP))
    resumed = printed(capsys, datasets, name, "--checkpoint-dir", "part", "--resume")
    before, rest = split(straight, STOPPED)
    between, after = split(rest, RESUMING)
    assert between == [], "the stop is not mid-epoch"
    stopped_before, stopped_after = split(stopped, STOPPED)
    assert stopped_before == before
    assert stopped_after == [], "\n".join(stopped_after)  # nothing after a stop that reads as if training went on
    resumed_after = split(resumed, RESUMING)[1]
    assert resumed_after == after, "\n".join(["straight:", *after, "", "resumed:", *resumed_after])

"""The record of a recipe: its name, the seed program it reproduces and its default hyperparameters."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ember.recipes.common import RunContext


class RecipeError(Exception):
    """A problem with a recipe's inputs that the command line reports in one line (exit status 1)."""


@dataclass(frozen=True)
class Recipe:
    """A recipe: its name, the seed program it reproduces (`program`, "000" for seeds/000, "-" for none), the
    dataset, a one-line summary, `train(args, run)`, and its defaults for --epochs, --batch-size, --lr and
    --seed (`seed`: the random seed, unlike `program`); `shuffle` says whether the seed shuffles its training
    data, `add_arguments(parser)` adds the recipe's own flags.
    """

    name: str
    dataset: str
    summary: str
    train: Callable[[argparse.Namespace, RunContext], int]
    epochs: int
    batch_size: int
    lr: float
    program: str = "-"
    seed: int = 0
    shuffle: bool = False
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None

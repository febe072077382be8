"""The `ember` command line: listing, per-recipe help, usage errors, and the two ways to start it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ember
from ember.engine import Engine
from ember.recipes import RECIPES
from ember.recipes.cli import main, split_recipe

VENV_BIN = Path(sys.executable).parent


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """`ember argv...` in this process: exit status (from a return or SystemExit), stdout, stderr."""
    try:
        rc = main(list(argv))
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_shows_each_recipe_with_its_seed_and_dataset(capsys):
    rc, out, _ = run_main(capsys, "list")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["recipe", "seed", "dataset"]
    rows = {line.split()[0]: line.split()[1:3] for line in lines[1:]}
    assert rows == {name: [r.program, r.dataset] for name, r in RECIPES.items()}


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_help_lists_flags_with_their_defaults(name, capsys):
    recipe = RECIPES[name]
    rc, out, _ = run_main(capsys, "train", name, "--help")
    assert rc == 0
    text = " ".join(out.split())
    assert f"(seed {recipe.program})" in text
    for flag, default in [("--epochs", recipe.epochs), ("--batch-size", recipe.batch_size), ("--lr", recipe.lr),
                          ("--seed", recipe.seed), ("--data-path", "fast"), ("--device", "auto")]:
        assert flag in text
        assert f"(default: {default})" in text, (flag, default)


def test_switches_that_are_on_by_default_say_so_in_the_help(capsys):
    rc, out, _ = run_main(capsys, "train", "fashion-mnist-mlp", "--help")
    text = " ".join(out.split())
    assert rc == 0 and "misclassified test images (default: on)" in text, text


def test_scheduler_flag_is_in_the_plateau_recipe_help(capsys):
    rc, out, _ = run_main(capsys, "train", "mnist-mlp-plateau", "--help")
    assert rc == 0 and "--scheduler {plateau,step,multistep,exponential}" in out
    assert "(default: plateau)" in " ".join(out.split())


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "argument --epochs: must be a positive integer, got 0"),
        (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--lr", "-1"], "argument --lr: must be a positive number, got -1"),
        (["--scheduler", "cosine"], "argument --scheduler: invalid choice: 'cosine'"),
        (["--num-workers", "-3"], "argument --num-workers: must be 0 or more, got -3"),
        (["--lr", "abc"], "argument --lr: expected a positive number such as 0.01 or 1e-3, got 'abc'"),
        (["--epochs", "two"], "argument --epochs: expected a positive integer, got 'two'"),
        (["--seed", "1.5"], "argument --seed: expected an integer, got '1.5'"),
    ],
)
def test_bad_flag_is_a_usage_error_in_two_lines(flags, message, capsys):
    rc, out, err = run_main(capsys, "train", "mnist-mlp-plateau", *flags)
    assert rc == 2 and out == ""
    usage, error = err.splitlines()
    assert usage.startswith("usage: ember train mnist-mlp-plateau [flags]") and "--help" in usage
    assert error.startswith("ember train mnist-mlp-plateau: error: ") and message in error


def test_version(capsys):
    rc, out, _ = run_main(capsys, "--version")
    assert rc == 0 and out.strip() == f"ember {ember.__version__}"


@pytest.mark.parametrize("argv", [
    ["train", "--epochs", "0", "mnist-mlp-plateau"],
    ["train", "mnist-mlp-plateau", "--epochs", "0"],
    ["train", "--batch-size", "8", "mnist-mlp-plateau", "--epochs=0"],
])  # fmt: skip
def test_flags_go_before_or_after_the_recipe_name(argv, capsys):
    rc, _, err = run_main(capsys, *argv)
    assert rc == 2 and "ember train mnist-mlp-plateau: error: argument --epochs: must be a positive integer" in err
    assert split_recipe(["--epochs", "1", "--resume", "fashion-mnist-mlp"]) == (
        "fashion-mnist-mlp", ["--epochs", "1", "--resume"])


def test_max_iterations_is_in_the_help(capsys):
    rc, out, _ = run_main(capsys, "train", "fashion-mnist-mlp", "--help")
    assert rc == 0 and "--max-iterations N" in out and "--resume [RUN]" in out


def test_state_repr_is_short_and_shows_no_tensors():
    engine = Engine(lambda e, batch: batch.sum())
    engine.run([torch.randn(500, 500)] * 3)
    text = repr(engine.state)
    assert len(text) < 400 and "tensor(" not in text and re.search(r"iteration\W+3\b", text), text


def test_unknown_recipe_is_a_usage_error_naming_the_recipes(capsys):
    rc, out, err = run_main(capsys, "train", "no-such-recipe")
    assert rc == 2 and out == ""
    assert "invalid choice: 'no-such-recipe'" in err and "mnist-lenet" in err


def test_train_without_a_name_is_a_usage_error(capsys):
    rc, _, err = run_main(capsys, "train")
    assert rc == 2 and "train needs a recipe NAME" in err


def test_unknown_command_is_a_usage_error(capsys):
    rc, _, err = run_main(capsys, "fly")
    assert rc == 2 and "invalid choice: 'fly'" in err


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "EMBER_OFFLINE": "1"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)


def test_python_dash_m_ember_lists_the_recipes():
    done = _run([sys.executable, "-m", "ember", "list"])
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in RECIPES)


def test_installed_console_script_runs():
    script = VENV_BIN / "ember"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}; install the package with pip install -e .")
    done = _run([str(script), "list"])
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()[1:]] == list(RECIPES)


def test_every_flag_has_one_role_and_the_sets_are_derived_from_it():
    from ember.recipes import RECIPES
    from ember.recipes.flags import FLAGS, MAY_DIFFER, NOT_ADOPTED, NOT_HPARAMS, NOT_SAVED, build_parser

    dests = {a.dest for a in build_parser(RECIPES["fashion-mnist-mlp"])._actions if a.dest != "help"}
    assert dests == set(FLAGS), dests ^ set(FLAGS)
    assert NOT_ADOPTED == {"checkpoint_dir", "resume", "progress", "show_plan", "max_iterations", "device"}
    assert NOT_SAVED == {"resume"}
    assert NOT_HPARAMS == {"data_root", "logdir", "tensorboard", "checkpoint_dir", "checkpoint_every", "keep_last",
                           "async_checkpoint", "resume", "progress", "show_plan", "max_iterations", "log_every",
                           "images", "histograms", "graph"}
    assert MAY_DIFFER == {"epochs", "resume", "checkpoint_dir", "logdir", "progress", "tensorboard",
                          "checkpoint_every", "keep_last", "async_checkpoint", "max_iterations", "device",
                          "num_workers", "data_root", "data_path", "compile", "cuda_graph", "channels_last",
                          "show_plan", "log_every", "images", "histograms", "graph"}

"""Recipes outside ember's source: docs/recipes.md's "Write your own recipe" file, run as a file, as a module and
through an installed package's entry point; each appears in `ember list` and gets every common flag plus its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from fakedata import offline, write_fashion_mnist

from ember.callbacks import Checkpoint
from ember.recipes.cli import main

RECIPES_DOC = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"


def readme_recipe() -> str:
    """The Python block of docs/recipes.md that starts with `# my_recipe.py`."""
    blocks = re.findall(r"```python\n(# my_recipe\.py\n.*?)```", RECIPES_DOC.read_text(), re.S)
    assert len(blocks) == 1, "docs/recipes.md's recipe block is gone"
    return blocks[0]


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """docs/recipes.md's recipe as tmp/my_recipe.py, an installed package registering it, fake FashionMNIST."""
    (tmp_path / "my_recipe.py").write_text(readme_recipe())
    (tmp_path / "my_recipe.py").with_name("other.py").write_text(
        readme_recipe() + "\nSMALL = Recipe(name='fashion-mnist-small', program='-', dataset='fashion-mnist',"
        " summary='small', train=train, epochs=1, batch_size=64, lr=0.1, add_arguments=add_arguments)\n"
    )
    info = tmp_path / "wide_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wide-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ember.recipes]\nfashion-mnist-wide = my_recipe:RECIPE\n")
    write_fashion_mnist(tmp_path / "fashion", n_train=128, n_test=64)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    offline(monkeypatch, tmp_path)
    return tmp_path


def train(capsys, spec: str, *flags: str) -> tuple[int, str, str]:
    rc = main(["train", spec, "--data-root", "fashion", "--epochs", "1", "--no-tensorboard", "--device", "cpu",
               *flags])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("spec", ["my_recipe.py", "my_recipe.py:RECIPE", "my_recipe:RECIPE", "fashion-mnist-wide"])
def test_a_users_recipe_trains_with_common_flags_and_its_own(user_folder, capsys, spec):
    rc, out, err = train(capsys, spec, "--width", "32", "--batch-size", "32", "--checkpoint-dir", "ck")
    assert rc == 0, err
    assert re.search(r"^test accuracy \d+\.\d%$", out, re.M), out
    saved = torch.load(Checkpoint.latest("ck"), weights_only=True)["objects"]["run"]["config"]
    assert saved["recipe"] == "fashion-mnist-wide" and saved["width"] == 32 and saved["batch_size"] == 32


def test_a_named_recipe_of_a_file_and_the_listing(user_folder, capsys):
    rc, out, err = train(capsys, "other.py:SMALL", "--checkpoint-dir", "ck", "--max-iterations", "1")
    assert rc == 0, err
    assert main(["list", "other.py:SMALL"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert {"fashion-mnist-mlp", "fashion-mnist-wide", "fashion-mnist-small"} <= set(listed)


def test_a_spec_that_names_no_recipe_is_one_line(user_folder, capsys):
    assert main(["train", "other.py:NOPE"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other.py has no NOPE; it defines RECIPE, SMALL" in err, err


def test_a_recipe_without_a_seed_program_says_no_seed_in_its_help(user_folder, capsys):
    with pytest.raises(SystemExit) as stopped:  # argparse's --help
        main(["train", "other.py:SMALL", "--help"])
    out = capsys.readouterr().out
    assert stopped.value.code == 0
    assert "(seed -)" not in out and "small" in out, out

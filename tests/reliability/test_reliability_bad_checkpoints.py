"""Promise 5: bad checkpoints through `ember train --resume`: truncated, empty, random bytes, another model's,
a pickle that would run code. One clear error line naming the file, exit status 1, no traceback, nothing
executed, nothing changed. (The class-level cases are in tests/checkpoint/test_checkpoint.py.)"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from harness import error_lines, lenet_argv, load_payload, run_cli, write_tiny_mnist

from ember.callbacks import Checkpoint

NAME = "checkpoint_000000004.pt"


@pytest.fixture(scope="module")
def setting(tmp_path_factory, offline_data_for_module):
    """Data and one good mnist-lenet checkpoint (iteration 4)."""
    base = tmp_path_factory.mktemp("badckpt")
    root = write_tiny_mnist(base / "mnist")
    code, out, err = run_cli(lenet_argv(root, base / "good", "--max-iterations", "4"))
    assert code == 0, err
    return {"root": root, "base": base, "good": (base / "good" / NAME).read_bytes()}


class Evil:
    """Unpickling this would run a shell command that creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def other_model(good: bytes, path: Path) -> None:
    path.write_bytes(good)
    payload = load_payload(path)
    model = payload["objects"]["model"]
    del model["fc3.bias"]
    model["fc1.weight"] = torch.zeros(100, 400)
    model["extra.weight"] = torch.zeros(3)
    torch.save(payload, path)


BAD = {
    "truncated": (lambda good, path: path.write_bytes(good[: len(good) // 2]), "corrupt or incomplete"),
    "empty": (lambda good, path: path.write_bytes(b""), "empty"),
    "random": (lambda good, path: path.write_bytes(os.urandom(5000)), "corrupt or incomplete"),
    "pickle": (lambda good, path: torch.save({"format": "ember-checkpoint", "x": Evil(path.parent / "PWNED")}, path),
               "could execute code when unpickled"),
    "other-model": (other_model, "missing keys.*fc3.bias.*unexpected keys.*extra.weight.*fc1.weight: checkpoint "
                                 r"\(100, 400\) vs model \(120, 400\)"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_resume_from_a_bad_checkpoint_is_one_clear_error(setting, tmp_path, kind):
    make, expected = BAD[kind]
    folder = tmp_path / "ckpt"
    folder.mkdir()
    make(setting["good"], folder / NAME)
    before = (folder / NAME).read_bytes()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        code, out, err = run_cli(lenet_argv(setting["root"], folder, "--resume"))
    assert code == 1, out + err
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    import re

    assert str(folder / NAME) in lines[0] and re.search(expected, lines[0]), lines[0]
    assert "Resumed" not in out and "starting from the beginning" not in out
    assert not (folder / "PWNED").exists(), "the pickle's code ran"
    assert os.listdir(folder) == [NAME] and (folder / NAME).read_bytes() == before, "the folder was changed"


def test_resume_falls_back_past_a_corrupt_newest_checkpoint(setting, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / NAME).write_bytes(setting["good"])
    newest = folder / "checkpoint_000000005.pt"
    newest.write_bytes(setting["good"][:1000])
    with pytest.warns(RuntimeWarning, match=f"skipping checkpoint {newest}"):
        code, out, err = run_cli(lenet_argv(setting["root"], folder, "--resume"))
    assert code == 0 and f"Resumed from {folder / NAME} at epoch 1, iteration 4" in out, out + err
    # the corrupt file counted as the oldest of --keep-last 2, so it went first
    assert sorted(os.listdir(folder)) == [NAME, "checkpoint_000000006.pt"]
    assert load_payload(Checkpoint.latest(folder))["step"] == 6

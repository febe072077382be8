"""Promise 8: a damaged or unusable checkpoint is never loaded, and loading is all or nothing.

Every load checks each record of the file against its CRC-32: bit flips anywhere in the file either fail the
check (naming the file) or touch nothing that loads. Malformed files (no 'objects', garbage RNG states,
negative or inconsistent counters) and files of NaN/Inf weights or optimizer state are refused before any
object changes; `resume_latest` and `ember train --resume` then fall back to the newest good file with a
warning naming the bad one. A `load_state_dict` that fails half-way gives the objects loaded before it
their previous state back.
"""

from __future__ import annotations

import math
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import offline
from harness import assert_same, error_lines, lenet_argv, load_payload, run_cli, write_tiny_mnist
from torch import nn
from torch.nn import functional as F

from ember.callbacks import Checkpoint, CheckpointError, CorruptCheckpointError
from ember.steps import create_trainer
from ember.utils.rng import get_rng_state


def make_run(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = create_trainer(model, optimizer, F.cross_entropy)
    return {"model": model, "optimizer": optimizer, "trainer": trainer}


def data(n: int = 4):
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(5, 6, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(n)]


@pytest.fixture
def folder(tmp_path) -> Path:
    """Checkpoints of iterations 2 and 4 (every 2 iterations, all kept)."""
    objects = make_run()
    objects["trainer"].add(Checkpoint(objects, tmp_path, every_iterations=2, keep_last=None))
    objects["trainer"].run(data(), max_epochs=1)
    return tmp_path


def snapshot(objects) -> dict:
    return {
        "model": {k: v.clone() for k, v in objects["model"].state_dict().items()},
        "optimizer": objects["optimizer"].state_dict()["state"].copy(),
        "trainer": objects["trainer"].state_dict(),
        "rng": torch.get_rng_state(),
    }


def assert_unchanged(objects, before) -> None:
    after = snapshot(objects)
    assert_same(before["model"], after["model"], "model")
    assert before["optimizer"].keys() == after["optimizer"].keys()
    assert before["trainer"] == after["trainer"]
    assert torch.equal(before["rng"], after["rng"]), "the RNG was restored from a refused file"


def test_every_flipped_bit_is_caught_or_changes_nothing_that_loads(folder):
    path = folder / "checkpoint_000000004.pt"
    good = path.read_bytes()
    reference = load_payload(path)
    rng = random.Random(7)
    tensors = [t for t in reference["objects"]["model"].values()] + [reference["rng"]["torch"]]
    spans = [(good.find(t.numpy().tobytes()), t.numel() * t.element_size()) for t in tensors]
    assert all(start > 0 for start, _ in spans)
    in_tensors = {start + rng.randrange(size) for start, size in spans for _ in range(15)}
    positions = sorted(set(rng.sample(range(len(good)), 200)) | in_tensors)
    caught = 0
    for position in positions:
        flipped = bytearray(good)
        flipped[position] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(flipped))
        objects = make_run(seed=3)
        before = snapshot(objects)
        try:
            Checkpoint.load(path, objects)
        except CorruptCheckpointError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc), str(exc)
            assert_unchanged(objects, before)
            caught += 1
            continue
        assert position not in in_tensors, f"a flip in a tensor's bytes (at {position}) was not caught"
        # undetected: only bytes that load as nothing (zip padding, timestamps) may differ
        assert_same(reference, load_payload(path), f"bit flip at byte {position} loaded silently")
    assert caught >= 0.8 * len(positions), f"only {caught} of {len(positions)} flips were caught"


def test_a_flip_in_the_weights_names_the_record(folder):
    path = folder / "checkpoint_000000004.pt"
    raw = bytearray(path.read_bytes())
    weight = load_payload(path)["objects"]["model"]["0.weight"]
    start = bytes(raw).find(weight.numpy().tobytes())
    assert start > 0
    raw[start + 5] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match=r"checkpoint_000000004\.pt .* record .*data/\d+ fails its CRC-32"):
        Checkpoint.load(path, make_run())
    with pytest.warns(RuntimeWarning, match=r"skipping checkpoint .*checkpoint_000000004\.pt"):
        assert Checkpoint.latest(folder) == str(folder / "checkpoint_000000002.pt")
    objects = make_run(seed=5)
    skipped = r"skipping checkpoint .*checkpoint_000000004\.pt: the file .*CRC-32.*trying the previous"
    with pytest.warns(RuntimeWarning, match=skipped):
        assert Checkpoint.resume_latest(folder, objects) == str(folder / "checkpoint_000000002.pt")
    assert objects["trainer"].state.iteration == 2


def rewrite(path: Path, change) -> None:
    payload = load_payload(path)
    change(payload)
    torch.save(payload, path)


def _set_trainer(key, value):
    return lambda p: p["objects"]["trainer"].__setitem__(key, value)


MALFORMED = {
    "no-objects": (lambda p: p.pop("objects"), "no 'objects' dict"),
    "objects-list": (lambda p: p.__setitem__("objects", [1, 2]), "'objects' is a list"),
    "rng-int": (lambda p: p.__setitem__("rng", 5), "'rng' is a int"),
    "rng-python": (lambda p: p["rng"]["python"].__setitem__("state", [1, 2, 3]), "python generator state"),
    "rng-torch": (lambda p: p["rng"].__setitem__("torch", torch.zeros(7, dtype=torch.uint8)), "torch generator"),
    "rng-numpy": (lambda p: p["rng"]["numpy"].__setitem__("key", "garbage"), "numpy generator state"),
    "negative-iteration": (_set_trainer("iteration", -7), "iteration -7, not a count"),
    "other-iteration": (_set_trainer("iteration", 3), "iteration 3, but the file was saved at iteration 4"),
    "negative-step": (lambda p: p.__setitem__("step", -7), "'step' is -7"),
    "epoch-length": (_set_trainer("epoch_length", 0), "epoch_length 0"),
    "model-not-dict": (lambda p: p["objects"].__setitem__("model", 3), "'model' is a int, not a state_dict"),
    "nan-weights": (lambda p: p["objects"]["model"]["2.bias"].fill_(math.nan), r"model\.2\.bias hold NaN or Inf"),
    "inf-momentum": (lambda p: p["objects"]["optimizer"]["state"][0]["momentum_buffer"].fill_(math.inf),
                     r"optimizer\.state\.0\.momentum_buffer hold NaN or Inf"),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_a_malformed_or_non_finite_file_changes_nothing_and_resume_falls_back(folder, kind):
    change, expected = MALFORMED[kind]
    newest = folder / "checkpoint_000000004.pt"
    rewrite(newest, change)
    objects = make_run(seed=3)
    before = snapshot(objects)
    random.seed(11)
    with pytest.raises(CorruptCheckpointError) as info:
        Checkpoint.load(newest, objects)
    text = str(info.value)
    assert str(newest) in text and re.search(expected, text) and "\n" not in text, text
    assert_unchanged(objects, before)
    assert random.random() == random.Random(11).random(), "python's RNG was touched"

    with pytest.warns(RuntimeWarning, match=r"skipping checkpoint .*checkpoint_000000004\.pt"):
        assert Checkpoint.resume_latest(folder, objects) == str(folder / "checkpoint_000000002.pt")
    assert objects["trainer"].state.iteration == 2


class Failing:
    """An object whose load_state_dict fails, after the optimizer, engine and RNG-free objects were loaded."""

    def state_dict(self):
        return {"x": 1}

    def load_state_dict(self, state):
        raise ValueError("this object refuses")


def test_a_load_state_dict_that_fails_gives_the_loaded_objects_their_state_back(tmp_path):
    objects = make_run()
    objects["zz"] = Failing()
    objects["trainer"].add(Checkpoint(objects, tmp_path, every_iterations=2))
    objects["trainer"].run(data(), max_epochs=1)

    fresh = make_run(seed=3)
    fresh["trainer"].run(data(2), max_epochs=1)  # some optimizer state and counters to lose
    fresh["zz"] = Failing()
    before = snapshot(fresh)
    momentum = {k: v["momentum_buffer"].clone() for k, v in fresh["optimizer"].state_dict()["state"].items()}
    rng = get_rng_state()
    with pytest.raises(CheckpointError, match=r"could not restore 'zz'.*this object refuses; nothing was changed"):
        Checkpoint.load(Checkpoint.latest(tmp_path), fresh)
    assert_unchanged(fresh, before)
    for key, value in fresh["optimizer"].state_dict()["state"].items():
        assert torch.equal(value["momentum_buffer"], momentum[key])
    assert_same(rng["torch"], get_rng_state()["torch"])
    np.testing.assert_array_equal(rng["numpy"]["key"], get_rng_state()["numpy"]["key"])


def test_an_optimizer_of_other_groups_is_refused_before_anything_changes(folder):
    objects = make_run(seed=3)
    model = objects["model"]
    objects["optimizer"] = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[2].parameters()}])
    before = snapshot(objects)
    with pytest.raises(CheckpointError, match=r"nothing was changed: 'optimizer' has 1 parameter groups in the "):
        Checkpoint.load(folder / "checkpoint_000000004.pt", objects)
    assert_unchanged(objects, before)


# ---------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def lenet_setting(tmp_path_factory, offline_data_for_module):
    base = tmp_path_factory.mktemp("integrity")
    root = write_tiny_mnist(base / "mnist")
    code, out, err = run_cli(lenet_argv(root, base / "good", "--max-iterations", "4", "--checkpoint-every", "2"))
    assert code == 0, err
    return root, base / "good"


def flip_weights(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x04
    path.write_bytes(bytes(raw))


CLI_BAD = {
    "bit-flip": (flip_weights, "fails its CRC-32 check"),
    "nan-weights": (lambda p: rewrite(p, lambda q: q["objects"]["model"]["fc1.weight"].fill_(math.nan)),
                    "model.fc1.weight hold NaN or Inf"),
    "garbage-rng": (lambda p: rewrite(p, lambda q: q.__setitem__("rng", 5)), "'rng' is a int"),
    "no-objects": (lambda p: rewrite(p, lambda q: q.pop("objects")), "no 'objects' dict"),
}


@pytest.mark.parametrize("kind", list(CLI_BAD))
def test_cli_resume_falls_back_past_a_bad_newest_file_with_one_warning(lenet_setting, tmp_path, monkeypatch, kind):
    offline(monkeypatch, tmp_path)
    root, good = lenet_setting
    folder = tmp_path / "ckpt"
    shutil.copytree(good, folder)
    damage, expected = CLI_BAD[kind]
    damage(folder / "checkpoint_000000004.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = run_cli(lenet_argv(root, folder, "--resume", "--max-iterations", "5"))
    assert code == 0 and f"Resumed from {folder / 'checkpoint_000000002.pt'}" in out, out + err
    skipped = [str(w.message) for w in caught if "checkpoint_000000004.pt" in str(w.message)]
    assert len(skipped) == 1 and expected in skipped[0] and "\n" not in skipped[0], skipped
    assert "TerminateOnNan" not in err and not error_lines(err)

    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(good / "checkpoint_000000004.pt", only)
    damage(only / "checkpoint_000000004.pt")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        code, out, err = run_cli(lenet_argv(root, only, "--resume"))
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and str(only / "checkpoint_000000004.pt") in lines[0], err
    assert expected in lines[0] and "Traceback" not in err

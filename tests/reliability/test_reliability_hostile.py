"""Issue 25 items 4 and 5: small hostile or malformed checkpoint files.

Each test builds a newest file from a good one, changes one thing in it with plain `torch.save` (so its
checksums are right), and resumes the folder: loading stays bounded by the file's size, the file is skipped
with one warning naming it and what is wrong (a CheckpointError where it is loaded alone), and the run
continues from the good file before it, unchanged by the bad one. One rule for every kind of bad file.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch
from harness import load_payload, tiny_regression

from ember.callbacks import Checkpoint, CheckpointError
from ember.run import RunRecord

GOOD, BAD = "checkpoint_000000002.pt", "checkpoint_000000004.pt"


def shared_sublists(levels: int = 60) -> list:
    """A list that holds one sublist twice at every level: 2^levels paths in about 1.6 KB of pickle."""
    node: list = [0.0]
    for _ in range(levels):
        node = [node, node]
    return node


def nested(levels: int = 5000) -> list:
    node: list = []
    for _ in range(levels):
        node = [node]
    return node


def with_optimizer_state(key: str, value) -> callable:
    def change(payload: dict) -> None:
        payload["objects"]["optimizer"]["state"][0][key] = value
    return change


def set_run(value) -> callable:
    def change(payload: dict) -> None:
        payload["objects"]["run"] = value
    return change


def drop_all_but(*keep: str) -> callable:
    def change(payload: dict) -> None:
        payload["objects"] = {k: v for k, v in payload["objects"].items() if k in keep}
    return change


def other_groups(payload: dict) -> None:
    groups = payload["objects"]["optimizer"]["param_groups"]
    groups.append({**groups[0], "params": [99]})


CASES = {
    # item 4: without end (each ran past 60 s before)
    "shared-sublists": (with_optimizer_state("bomb", shared_sublists()), "would visit .* places from .* entries"),
    "zero-stride-tensor": (with_optimizer_state("momentum_buffer", torch.zeros(1).expand(10**14)),
                           "1e\\+14 elements stored as 1.*expanded views"),
    # item 5: errors that escaped CheckpointError
    "5000-levels": (with_optimizer_state("deep", nested()), "nest more than 100 levels deep"),
    "config-a-list": (set_run({"run_id": "r", "config": [1, 2]}), "run record has a config that is a list"),
    "no-config": (set_run({"run_id": "r"}), "run record has no config"),
    "no-trainer": (drop_all_but("model", "optimizer", "run"), "not in the checkpoint: \\['trainer'\\]"),
    "only-model": (drop_all_but("model"), "not in the checkpoint: \\['optimizer', 'trainer', 'run'\\]"),
    "other-optimizer-groups": (other_groups, "has 2 parameter groups in the checkpoint but 1 here"),
}


def make_objects() -> dict:
    model, optimizer, trainer = tiny_regression(3, 2)
    optimizer.param_groups[0]["momentum"] = 0.9
    return {"model": model, "optimizer": optimizer, "trainer": trainer, "run": RunRecord("r", {"lr": 0.1})}


@pytest.fixture(scope="module")
def good_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    objects = make_objects()
    objects["trainer"].add(Checkpoint(objects, folder, every_iterations=2, keep_last=None, save_handlers=False))
    data = [(torch.randn(4, 3), torch.randn(4, 2)) for _ in range(4)]
    objects["trainer"].run(data, max_epochs=1)
    assert sorted(p.name for p in folder.glob("*.pt")) == [GOOD, BAD]
    return folder


@pytest.mark.parametrize("kind", list(CASES))
def test_a_bad_newest_file_is_skipped_with_one_warning_in_bounded_time(good_files, tmp_path, kind):
    change, expected = CASES[kind]
    (tmp_path / GOOD).write_bytes((good_files / GOOD).read_bytes())
    payload = load_payload(good_files / BAD)
    change(payload)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # the pickler recurses through 5000 levels
    try:
        torch.save(payload, tmp_path / BAD)
    finally:
        sys.setrecursionlimit(limit)
    assert (tmp_path / BAD).stat().st_size < 100_000  # small files

    objects = make_objects()
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match=f"skipping checkpoint {tmp_path / BAD}: .*{expected}") as seen:
        path = Checkpoint.resume_latest(tmp_path, objects)
    assert time.monotonic() - start < 20, "loading was not bounded by the file's size"
    assert path == str(tmp_path / GOOD) and objects["trainer"].state.iteration == 2
    assert len([w for w in seen if "skipping" in str(w.message)]) == 1, [str(w.message) for w in seen]

    with pytest.raises(CheckpointError, match=expected) as raised:  # loaded alone: one CheckpointError
        Checkpoint.load(tmp_path / BAD, make_objects())
    assert str(tmp_path / BAD) in str(raised.value)

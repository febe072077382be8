"""Issue 25 item 10, the smaller findings: a checkpoint folder removed during a run is created again with one
warning; a folder sync that fails with EIO is warned about; files beyond keep_last that a kill between the
last save and its clean-up left are deleted when the run is next resumed."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import warnings

import pytest
import torch
from harness import checkpoint_files, tiny_regression

import ember.utils.atomic
from ember.callbacks import Checkpoint
from ember.engine import Events


def data(n: int = 6) -> list:
    torch.manual_seed(1)
    return [(torch.randn(4, 3), torch.randn(4, 2)) for _ in range(n)]


def test_a_checkpoint_folder_removed_during_the_run_is_made_again_with_one_warning(tmp_path):
    model, optimizer, trainer = tiny_regression(3, 2)
    folder = tmp_path / "ckpt"
    trainer.add(Checkpoint({"model": model}, folder, every_iterations=1))
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda e: shutil.rmtree(folder))
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=4), lambda e: shutil.rmtree(folder))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer.run(data(), max_epochs=1)
    removed = [w for w in seen if "was removed while the run was going" in str(w.message)]
    assert len(removed) == 1 and str(folder) in str(removed[0].message)
    assert checkpoint_files(folder) == ["checkpoint_000000006.pt"]


def test_a_folder_sync_that_fails_with_eio_is_warned_about(tmp_path, monkeypatch):
    real = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        return real(fd)

    monkeypatch.setattr(ember.utils.atomic.os, "fsync", fsync)
    model, _, trainer = tiny_regression(3, 2)
    trainer.add(Checkpoint({"model": model}, tmp_path))
    with pytest.warns(RuntimeWarning, match=f"could not sync the folder {tmp_path} .*Input/output error"):
        trainer.run(data(2), max_epochs=1)
    assert checkpoint_files(tmp_path) == ["checkpoint_000000002.pt"]


def test_files_a_kill_kept_from_eviction_are_deleted_when_the_run_resumes(tmp_path):
    model, optimizer, trainer = tiny_regression(3, 2)
    objects = {"model": model, "optimizer": optimizer, "trainer": trainer}
    trainer.add(Checkpoint(objects, tmp_path, every_iterations=2, keep_last=None))  # as if eviction never ran
    trainer.run(data(), max_epochs=1)
    assert len(checkpoint_files(tmp_path)) == 3

    model, optimizer, trainer = tiny_regression(3, 2)
    objects = {"model": model, "optimizer": optimizer, "trainer": trainer}
    Checkpoint.resume_latest(tmp_path, objects)
    trainer.add(Checkpoint(objects, tmp_path, keep_last=2))
    assert checkpoint_files(tmp_path) == ["checkpoint_000000004.pt", "checkpoint_000000006.pt"]

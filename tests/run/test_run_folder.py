"""`ember.fit` and its run folder (`ember.run.RunFolder`): one-line errors in fit's own terms, a folder made for a
run that never saved is removed, the folder's lock, and a new run refusing another run's TensorBoard events."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

import ember
from ember.run import RunError, RunFolder
from ember.steps import create_trainer


def tiny_run(folder, *, model: nn.Module | None = None, data=None, **kwargs):
    torch.manual_seed(0)
    model = model or nn.Linear(2, 1)
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss)
    data = data if data is not None else [(torch.randn(4, 2), torch.randn(4, 1)) for _ in range(3)]
    return ember.fit(trainer, data, objects={"model": model}, checkpoint_dir=folder, progress=False, **kwargs)


def test_a_script_whose_model_changed_gets_one_line_in_fits_terms(tmp_path, capsys):
    assert tiny_run(tmp_path, max_epochs=1).exit_status == 0
    with pytest.raises(RunError) as caught:
        tiny_run(tmp_path, max_epochs=2, resume=True, model=nn.Linear(3, 1))
    text = str(caught.value)
    assert "\n" not in text and "strict=False" not in text, text
    assert "shape mismatches: weight: checkpoint (1, 2) vs model (1, 3)" in text and "without resume=True" in text


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def broken():
        raise OSError("no data")
        yield

    with pytest.raises(OSError, match="no data"):
        tiny_run(None, max_epochs=1, data=broken())
    assert list(Path("checkpoints").iterdir()) == []
    with pytest.raises(OSError, match="no data"):
        tiny_run(tmp_path / "named", max_epochs=1, data=broken())
    assert not (tmp_path / "named").exists()


def test_fit_refuses_a_folder_another_run_holds_and_frees_it_after(tmp_path):
    other = RunFolder.open(tmp_path / "ck")
    other.lock()
    with pytest.raises(RunError, match=rf"ck is in use by another run \(pid {os.getpid()}\)"):
        tiny_run(tmp_path / "ck", max_epochs=1)
    other.close()
    assert tiny_run(tmp_path / "ck", max_epochs=1).exit_status == 0


def test_a_new_run_refuses_a_tensorboard_folder_with_events_and_a_resume_continues_it(tmp_path):
    assert tiny_run(tmp_path / "a", max_epochs=1, tensorboard=tmp_path / "tb").exit_status == 0
    events = {p: p.read_bytes() for p in (tmp_path / "tb").rglob("*") if p.is_file()}
    with pytest.raises(RunError, match="already holds the TensorBoard events of another run"):
        tiny_run(tmp_path / "b", max_epochs=1, tensorboard=tmp_path / "tb")
    assert {p: p.read_bytes() for p in (tmp_path / "tb").rglob("*") if p.is_file()} == events
    assert not (tmp_path / "b").exists()
    assert tiny_run(tmp_path / "a", max_epochs=2, tensorboard=tmp_path / "tb", resume=True).exit_status == 0


def test_resume_with_max_iterations_reached_trains_nothing(tmp_path, capsys):
    assert tiny_run(tmp_path, max_epochs=2, max_iterations=4).exit_status == 0
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = tiny_run(tmp_path, max_epochs=2, max_iterations=4, resume=True)
    assert result.exit_status == 0 and not result.finished and result.stop_reason == "max_iterations"
    assert "Nothing to do: the run in" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files

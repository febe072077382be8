"""Promise 6: bad data and arguments give one clear error line from `ember train` and a non-zero status:
a batch of the wrong structure or shape (naming the iteration and what was received), a missing dataset,
a checkpoint or log folder that cannot be written, and a full disk during a save (earlier checkpoints intact).
As root, chmod does not stop writes, so the unwritable folders are paths under a regular file."""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import warnings

import pytest
import torch
from fakedata import offline
from harness import (
    checkpoint_files,
    error_lines,
    hooked_trainers,
    lenet_argv,
    load_payload,
    run_cli,
    temp_files,
    write_tiny_mnist,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory, offline_data_for_module):
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist"))


def one_error(code: int, err: str, expected_code: int = 1) -> str:
    lines = error_lines(err)
    assert code == expected_code and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


CORRUPT = {
    "structure": (lambda b: [b[0]], "expected a batch (inputs, targets), got list[Tensor(shape=(8, 1, 32, 32)"),
    "shape": (lambda b: (b[0][:, :, :20, :20], b[1]), "Tensor(shape=(8, 1, 20, 20)"),
    "mapping": (lambda b: {"image": b[0]}, "got dict{'image': Tensor(shape=(8, 1, 32, 32)"),
}


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_a_bad_batch_names_the_iteration_and_what_was_received(root, tmp_path, kind):
    corrupt, received = CORRUPT[kind]
    with hooked_trainers(corrupt_at=3, corrupt=corrupt), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = run_cli(lenet_argv(root, tmp_path, "--checkpoint-every", "2"))
    line = one_error(code, err)
    assert "at epoch 1, iteration 3" in line and received in line, line
    # the step of iteration 3 never finished: no checkpoint claims it; iteration 2's is intact
    assert checkpoint_files(tmp_path) == ["checkpoint_000000002.pt"]
    assert any("NOT saving after" in str(w.message) for w in caught)


def test_missing_dataset(tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path)
    code, out, err = run_cli(lenet_argv(tmp_path / "nowhere", tmp_path / "ckpt"))
    line = one_error(code, err, expected_code=2)
    assert "MNIST data not found" in line and str(tmp_path / "nowhere") in line and "--data-root" in line


@pytest.mark.parametrize("which", ["checkpoint", "log"])
def test_a_folder_that_cannot_be_written(root, tmp_path, which):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file where a folder should be")
    bad = blocker / "sub"
    if which == "checkpoint":
        code, out, err = run_cli(lenet_argv(root, bad))
        expected = f"cannot use {bad} as the checkpoint folder"
    else:
        code, out, err = run_cli(lenet_argv(root, tmp_path / "ckpt", "--logdir", str(bad), tensorboard=True))
        expected = f"cannot write TensorBoard logs to {bad}"
    line = one_error(code, err)
    assert expected in line and "Not a directory" in line, line
    assert "Epoch" not in out, "training must not start"


@pytest.mark.parametrize("background", [False, True], ids=["sync", "async"])
def test_full_disk_during_a_save_keeps_the_earlier_checkpoints(root, tmp_path, monkeypatch, background):
    real_save = torch.save
    saves = []

    def full_disk(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 3:  # the third checkpoint: half written, then the disk is full
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[:1000])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f, *args, **kwargs)

    folder = tmp_path / "ckpt"
    monkeypatch.setattr(torch, "save", full_disk)
    flags = ["--async-checkpoint"] if background else []  # the background write's failure: the same one line
    code, out, err = run_cli(lenet_argv(root, folder, "--checkpoint-every", "2", "--keep-last", "5", *flags))
    line = one_error(code, err)
    assert f"could not write checkpoint {folder / 'checkpoint_000000006.pt'} at iteration 6" in line, line
    assert "No space left on device" in line and "earlier checkpoints are untouched" in line
    assert checkpoint_files(folder) == ["checkpoint_000000002.pt", "checkpoint_000000004.pt"]
    assert temp_files(folder) == []
    assert [load_payload(folder / n)["step"] for n in checkpoint_files(folder)] == [2, 4]

    monkeypatch.setattr(torch, "save", real_save)  # space freed: the run resumes from iteration 4
    code, out, err = run_cli(lenet_argv(root, folder, "--resume"))
    assert code == 0 and "iteration 4" in out, out + err


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--lr", "inf", "argument --lr: must be a finite number, got inf"),
        ("--lr", "nan", "argument --lr: must be a finite number, got nan"),
        ("--seed", "18446744073709551616", "argument --seed: must be an integer from -9223372036854775808 to "
                                           "9223372036854775807, got 18446744073709551616"),
        ("--num-workers", "-1", "argument --num-workers: must be 0 or more, got -1"),
    ],
)
def test_bad_flag_values_are_refused_in_one_line(root, tmp_path, flag, value, expected):
    code, out, err = run_cli(lenet_argv(root, tmp_path / "ckpt", flag, value))
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and errors[0].endswith(expected), err
    assert "Traceback" not in err and "Epoch" not in out and not (tmp_path / "ckpt").exists()


@pytest.fixture
def small_disk(tmp_path):
    """make(kib): a folder on a tmpfs of that size (mounted for the test, as root), to really fill up."""
    mounted = []

    def make(kib: int):
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        if os.name != "posix" or os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("filling a real disk needs root to mount a small tmpfs")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_really_full_disk_says_so_for_checkpoints_and_keeps_the_earlier_ones(root, tmp_path, small_disk):
    code, out, err = run_cli(lenet_argv(root, tmp_path / "probe", "--max-iterations", "1"))
    assert code == 0, err
    size = os.path.getsize(tmp_path / "probe" / "checkpoint_000000001.pt")
    folder = small_disk((size * 5 // 2) // 1024 + 8) / "ckpt"  # room for two checkpoints, not three
    code, out, err = run_cli(lenet_argv(root, folder, "--checkpoint-every", "1", "--keep-last", "5"))
    line = one_error(code, err)
    assert "could not write checkpoint" in line and f"the disk is full (No space left on device) in {folder}" in line
    assert "unexpected pos" not in line and "earlier checkpoints are untouched" in line, line
    assert checkpoint_files(folder) == ["checkpoint_000000001.pt", "checkpoint_000000002.pt"]
    assert temp_files(folder) == []
    assert [load_payload(folder / n)["step"] for n in checkpoint_files(folder)] == [1, 2]


def test_a_really_full_disk_says_so_for_tensorboard_logs(root, tmp_path, small_disk):
    disk = small_disk(64)
    logdir = disk / "tb"
    logdir.mkdir()
    (disk / "filler").write_bytes(b"\0" * (44 * 1024))  # leave 20 KiB: the first events fit, later ones not
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out, err = run_cli(lenet_argv(root, tmp_path / "ckpt", "--logdir", str(logdir), "--epochs", "40",
                                            "--checkpoint-every", "2", tensorboard=True))
    line = one_error(code, err)
    assert f"cannot write TensorBoard logs to {logdir}: the disk is full (No space left on device)" in line, line
    assert "Exception in thread" not in err and "Traceback" not in err, err
    assert any(os.path.getsize(logdir / n) > 0 for n in os.listdir(logdir)), "the first events are kept"
    assert checkpoint_files(tmp_path / "ckpt"), "the checkpoints (on another disk) are not affected"

"""Sharded checkpoint folders (ember.checkpoint.sharded) in one process: layout, manifest, verification and
fallback, retention and best-k on folders, exact resume, and DCP's metadata unpickled without code.

The multi-process cases (FSDP2, resharding, kills, elastic restarts) are in tests/distributed/test_fsdp.py.
"""

from __future__ import annotations

import os
import pickle
import threading
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import ember
from ember.callbacks import Checkpoint
from ember.checkpoint import sharded
from ember.checkpoint.format import CheckpointError, CorruptCheckpointError
from ember.steps import create_trainer

DATA = [(torch.randn(8, 4, generator=torch.Generator().manual_seed(i)), torch.tensor([i % 2] * 8)) for i in range(6)]


def build() -> tuple[nn.Module, torch.optim.Optimizer, ember.Engine]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    return model, optimizer, create_trainer(model, optimizer, nn.CrossEntropyLoss(), "cpu")


def train(folder: Path, epochs: int = 2, **kwargs) -> tuple[nn.Module, torch.optim.Optimizer, ember.RunResult]:
    model, optimizer, trainer = build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ember.fit(trainer, DATA, max_epochs=epochs, objects={"model": model, "optimizer": optimizer},
                           checkpoint_dir=folder, checkpoint_every=2, sharded=True, progress=False, **kwargs)
    result.warnings = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    return model, optimizer, result


def states_equal(a: nn.Module, b: nn.Module, oa: torch.optim.Optimizer, ob: torch.optim.Optimizer) -> bool:
    same = all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    for pa, pb in zip(a.parameters(), b.parameters()):
        for key in oa.state[pa]:
            same = same and torch.equal(torch.as_tensor(oa.state[pa][key]), torch.as_tensor(ob.state[pb][key]))
    return same


def checkpoints(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".dcp"))


def test_a_sharded_checkpoint_is_a_folder_with_a_manifest_listing_every_file(tmp_path: Path) -> None:
    train(tmp_path / "run", keep_last=2)
    assert checkpoints(tmp_path / "run") == ["checkpoint_000000010.dcp", "checkpoint_000000012.dcp"]
    folder = tmp_path / "run" / "checkpoint_000000012.dcp"
    assert sorted(os.listdir(folder)) == [".metadata", "__0_0.distcp", sharded.MANIFEST]
    payload = torch.load(folder / sharded.MANIFEST, weights_only=True)
    assert payload["step"] == 12 and payload["sharded"]["world_size"] == 1
    assert set(payload["sharded"]["files"]) == {".metadata", "__0_0.distcp"}
    assert {"trainer", "run", "handlers"} <= set(payload["objects"]) and "model" not in payload["objects"]
    assert "rng" in payload and payload["objects"]["trainer"]["iteration"] == 12
    assert not [n for n in os.listdir(tmp_path / "run") if n.startswith(".tmp-")]


def test_resume_from_a_sharded_folder_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    straight_model, straight_opt, _ = train(tmp_path / "straight", epochs=3)
    train(tmp_path / "cut", epochs=3, max_iterations=7)
    model, opt, result = train(tmp_path / "cut", epochs=3, resume=True)
    assert result.resumed_from.endswith("checkpoint_000000007.dcp")
    assert states_equal(straight_model, model, straight_opt, opt)


def flip_bit(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_shard_is_named_and_the_previous_folder_is_used(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(run, keep_last=3)
    flip_bit(run / "checkpoint_000000012.dcp" / "__0_0.distcp")
    model, optimizer, trainer = build()
    with pytest.warns(RuntimeWarning) as caught:
        path = Checkpoint.resume_latest(run, {"model": model, "optimizer": optimizer, "trainer": trainer})
    assert path.endswith("checkpoint_000000010.dcp") and trainer.state.iteration == 10
    named = [str(w.message) for w in caught if "checkpoint_000000012.dcp" in str(w.message)]
    assert len(named) == 1 and "__0_0.distcp fails its CRC-32" in named[0], [str(w.message) for w in caught]


def test_a_folder_without_manifest_or_with_a_missing_file_is_skipped(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(run, keep_last=3)
    (run / "checkpoint_000000012.dcp" / sharded.MANIFEST).unlink()
    (run / "checkpoint_000000010.dcp" / ".metadata").unlink()
    with pytest.warns(RuntimeWarning) as caught:
        assert Checkpoint.latest(run).endswith("checkpoint_000000008.dcp")
    text = " ".join(str(w.message) for w in caught)
    assert f"checkpoint_000000012.dcp is corrupt or incomplete: it has no {sharded.MANIFEST}" in text
    assert "checkpoint_000000010.dcp is corrupt or incomplete: .metadata is missing" in text


def test_a_torn_save_leaves_only_a_temp_folder_which_the_next_start_removes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(run, keep_last=2, epochs=1)
    torn = run / f".tmp-checkpoint_000000008.dcp-{2**22 + 12345}-abcd1234"  # no such pid: its process is gone
    torn.mkdir()
    (torn / "__0_0.distcp").write_bytes(b"half")
    assert Checkpoint.latest(run).endswith("checkpoint_000000006.dcp")
    train(run, epochs=2, resume=True)
    assert not torn.exists()


def test_keep_last_and_keep_best_work_on_folders(tmp_path: Path) -> None:
    model, optimizer, trainer = build()
    scores = dict(enumerate([5.0, 1.0, 4.0, 3.0, 2.0, 0.5], start=1))  # by iteration
    saver = Checkpoint({"model": model, "optimizer": optimizer}, tmp_path, every_iterations=1, keep_last=2,
                       monitor=lambda e: scores[e.state.iteration], keep_best=2, sharded=True)
    trainer.add(saver)
    trainer.run(DATA, max_epochs=1)
    names = checkpoints(tmp_path)
    assert [n for n in names if not n.startswith("best_")] == ["checkpoint_000000005.dcp", "checkpoint_000000006.dcp"]
    assert sorted(n.split("_score=")[1] for n in names if n.startswith("best_")) == ["4.dcp", "5.dcp"]
    best = tmp_path / next(n for n in names if n.endswith("=5.dcp"))
    assert torch.load(best / sharded.MANIFEST, weights_only=True)["step"] == 1


def test_dcp_metadata_is_unpickled_without_running_code(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(run, keep_last=1, epochs=1)
    folder = run / "checkpoint_000000006.dcp"

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with pytest.raises(CheckpointError, match="refused and NOT executed"):
        (folder / ".metadata").write_bytes(pickle.dumps(Evil()))
        files = torch.load(folder / sharded.MANIFEST, weights_only=True)
        sharded._reader(str(folder)).read_metadata()
    assert not (tmp_path / "pwned").exists()
    with pytest.warns(RuntimeWarning, match=r"\.metadata"), pytest.raises(CheckpointError):
        model, optimizer, trainer = build()
        Checkpoint.resume_latest(run, {"model": model, "optimizer": optimizer, "trainer": trainer})
    assert not (tmp_path / "pwned").exists()
    assert files["step"] == 6


def test_a_folder_of_another_architecture_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(run, keep_last=1, epochs=1)
    torch.manual_seed(1)
    other = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    before = [p.clone() for p in other.parameters()]
    with pytest.raises(CheckpointError, match="cannot load"):
        Checkpoint.load(Checkpoint.latest(run), {"model": other})
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters()))
    with pytest.raises(CorruptCheckpointError):
        sharded.read_manifest(str(tmp_path))


# ---------------------------------------------------------------------------------------------- in the background
def test_an_async_sharded_save_holds_the_weights_of_the_time_it_was_asked_for(tmp_path: Path, monkeypatch) -> None:
    model, optimizer, trainer = build()
    release, write = threading.Event(), sharded.write_shards

    def held(tmp, path, state, group=None):
        assert release.wait(30)  # the write starts only after the weights changed
        write(tmp, path, state, group)

    monkeypatch.setattr(sharded, "write_shards", held)
    saver = Checkpoint({"model": model, "optimizer": optimizer}, tmp_path, every_epochs=1000, keep_last=2,
                       sharded=True, async_save=True, save_on_completed=False)
    trainer.add(saver)
    trainer.run(DATA[:3], max_epochs=1)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    assert saver.save(trainer) is None  # the shards are being written; nothing is committed yet
    assert checkpoints(tmp_path) == [] and [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # right after the save was asked for: the folder must not see this
    release.set()
    assert saver.wait().endswith("checkpoint_000000003.dcp")
    loaded, _, _ = build()
    Checkpoint.load(tmp_path / "checkpoint_000000003.dcp", {"model": loaded})
    assert all(torch.equal(first[k], v) for k, v in loaded.state_dict().items())


def test_the_save_in_flight_is_a_temp_folder_until_its_commit(tmp_path: Path, monkeypatch) -> None:
    model, optimizer, trainer = build()
    saver = Checkpoint({"model": model, "optimizer": optimizer}, tmp_path, every_iterations=2, keep_last=3,
                       sharded=True, async_save=True, save_on_completed=False)
    seen = []
    trainer.add_event_handler(ember.Events.ITERATION_COMPLETED, lambda e: seen.append(checkpoints(tmp_path)))
    trainer.add(saver)
    trainer.run(DATA[:5], max_epochs=1)
    # (seen before the saves of each iteration) the save of iteration 2 is committed when iteration 4 saves, 4's
    # at the end of the run
    assert seen == [[], [], [], [], ["checkpoint_000000002.dcp"]], seen
    assert checkpoints(tmp_path) == ["checkpoint_000000002.dcp", "checkpoint_000000004.dcp"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_a_failed_async_sharded_write_raises_at_the_next_save_and_keeps_the_previous_folder(tmp_path: Path,
                                                                                            monkeypatch) -> None:
    model, optimizer, trainer = build()
    saver = Checkpoint({"model": model, "optimizer": optimizer}, tmp_path, every_iterations=2, keep_last=3,
                       sharded=True, async_save=True)
    write = sharded.write_shards

    def failing(tmp, path, state, group=None):
        if "000000004" in path:
            raise CheckpointError(f"could not write the sharded checkpoint {path}: disk gone")
        write(tmp, path, state, group)

    monkeypatch.setattr(sharded, "write_shards", failing)
    trainer.add(saver)
    with pytest.raises(CheckpointError, match="000000004.dcp: disk gone"):
        trainer.run(DATA, max_epochs=1)
    assert trainer.state.iteration == 6
    assert checkpoints(tmp_path) == ["checkpoint_000000002.dcp"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_resume_from_async_sharded_folders_is_bit_identical(tmp_path: Path) -> None:
    straight_model, straight_opt, _ = train(tmp_path / "straight", epochs=3)
    _, _, cut = train(tmp_path / "cut", epochs=3, max_iterations=7, async_checkpoint=True)
    assert checkpoints(tmp_path / "cut") == ["checkpoint_000000006.dcp", "checkpoint_000000007.dcp"]
    model, opt, result = train(tmp_path / "cut", epochs=3, resume=True, async_checkpoint=True)
    assert result.resumed_from.endswith("checkpoint_000000007.dcp")
    assert states_equal(straight_model, model, straight_opt, opt)


# ---------------------------------------------------------------------------------------------- the epoch's end
def with_scheduler(folder: Path, epochs: int, **kwargs) -> tuple[nn.Module, torch.optim.Optimizer, ember.RunResult]:
    """`train` with an LR schedule stepped at each epoch's end (state that a folder saved before it lacks)."""
    model, optimizer, trainer = build()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    trainer.add_event_handler(ember.Events.EPOCH_COMPLETED, lambda _: scheduler.step())
    result = ember.fit(trainer, DATA, max_epochs=epochs, checkpoint_dir=folder, sharded=True, progress=False,
                       objects={"model": model, "optimizer": optimizer, "scheduler": scheduler}, **kwargs)
    return model, optimizer, result


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_a_folder_saved_at_an_epochs_last_iteration_is_written_again_after_the_epoch_end(tmp_path: Path,
                                                                                        async_save: bool) -> None:
    model, optimizer, trainer = build()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    trainer.add_event_handler(ember.Events.EPOCH_COMPLETED, lambda _: scheduler.step())
    saver = Checkpoint({"model": model, "optimizer": optimizer, "scheduler": scheduler}, tmp_path,
                       every_iterations=3, keep_last=None, sharded=True, async_save=async_save)
    trainer.add(saver)
    pending: list[tuple[int, bool]] = []

    def look(engine: ember.Engine) -> None:
        saver.wait()
        pending.append((engine.state.iteration, torch.load(Path(saver.last_path) / sharded.MANIFEST,
                                                            weights_only=True)["epoch_end_pending"]))

    look.ember_order = 500  # after the checkpoint
    trainer.add_event_handler(ember.Events.ITERATION_COMPLETED(every=3), look)
    trainer.run(DATA, max_epochs=1)
    assert pending == [(3, False), (6, True)]  # iteration 6's folder was written before the epoch's end
    final = torch.load(tmp_path / "checkpoint_000000006.dcp" / sharded.MANIFEST, weights_only=True)
    assert final["epoch_end_pending"] is False and final["objects"]["scheduler"]["last_epoch"] == 1


def test_a_folder_cut_at_an_epochs_last_iteration_resumes_through_that_end(tmp_path: Path) -> None:
    straight_model, straight_opt, _ = with_scheduler(tmp_path / "straight", epochs=2)
    with_scheduler(tmp_path / "cut", epochs=2, max_iterations=6)
    manifest = torch.load(tmp_path / "cut" / "checkpoint_000000006.dcp" / sharded.MANIFEST, weights_only=True)
    assert manifest["epoch_end_pending"] is True and manifest["objects"]["scheduler"]["last_epoch"] == 0
    model, opt, result = with_scheduler(tmp_path / "cut", epochs=2, resume=True)
    assert result.resumed_from.endswith("checkpoint_000000006.dcp")
    assert opt.param_groups[0]["lr"] == straight_opt.param_groups[0]["lr"] == 0.0025
    assert states_equal(straight_model, model, straight_opt, opt)


def test_an_exception_in_the_epoch_end_writes_no_single_file_among_the_folders(tmp_path: Path) -> None:
    model, optimizer, trainer = build()
    trainer.add(Checkpoint({"model": model, "optimizer": optimizer}, tmp_path, every_iterations=4, keep_last=None,
                           sharded=True, save_on_exception=True))

    def broken(_: ember.Engine) -> None:
        raise RuntimeError("a handler of the epoch's end failed")

    trainer.add_event_handler(ember.Events.EPOCH_COMPLETED, broken)
    with pytest.warns(RuntimeWarning, match="NOT saving after RuntimeError"), pytest.raises(RuntimeError):
        trainer.run(DATA, max_epochs=1)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_000000004.dcp"]

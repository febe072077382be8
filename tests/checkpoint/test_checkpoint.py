"""Checkpoint: round trips of every kind of state, RNG, keep-last/best-k, atomic writes, corrupt files, latest()."""

from __future__ import annotations

import gc
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ember.callbacks.checkpoint as ckmod
from ember.callbacks.checkpoint import Checkpoint, CheckpointError, CorruptCheckpointError
from ember.engine import Engine, Events
from ember.steps import create_trainer
from ember.utils.rng import get_rng_state, set_rng_state


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))


def make_data(n: int = 6, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(5, 4, generator=g), torch.randn(5, 2, generator=g)) for _ in range(n)]


def make_run(opt: str = "adam", seed: int = 0):
    model = make_model(seed)
    if opt == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    trainer = create_trainer(model, optimizer, nn.functional.mse_loss)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: scheduler.step())
    return model, optimizer, scheduler, trainer


def files(dirname) -> set[str]:
    return set(os.listdir(dirname))


def assert_state_equal(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_state_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_state_equal(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_round_trip_restores_model_optimizer_scheduler_scaler_and_engine(tmp_path, opt):
    model, optimizer, scheduler, trainer = make_run(opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=7)
    objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    trainer.add(Checkpoint(objects, tmp_path, every_iterations=5))
    trainer.run(make_data(), max_epochs=2)
    assert files(tmp_path) == {"checkpoint_000000012.pt"}

    model2, optimizer2, scheduler2, trainer2 = make_run(opt, seed=7)
    scaler2 = torch.amp.GradScaler("cpu")
    fresh = {"model": model2, "optimizer": optimizer2, "scheduler": scheduler2, "scaler": scaler2, "trainer": trainer2}
    info = Checkpoint.load(tmp_path / "checkpoint_000000012.pt", fresh)
    assert (info["step"], info["epoch"]) == (12, 2)
    assert_state_equal(model.state_dict(), model2.state_dict())
    assert_state_equal(optimizer.state_dict(), optimizer2.state_dict())
    assert optimizer2.state_dict()["state"], "optimizer state (moments/momentum) must be restored"
    assert scheduler2.state_dict() == scheduler.state_dict()
    assert scaler2.state_dict() == scaler.state_dict() and scaler2.get_scale() == 2.0**10
    assert trainer2.state_dict() == trainer.state_dict()
    assert trainer2.state.iteration == 12


def test_rng_state_survives_weights_only_round_trip(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.standard_normal()  # and in numpy's legacy state
    torch.save(get_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(3), torch.randn(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), random.gauss(0, 1), np.random.standard_normal(3), torch.randn(3))
    assert got[:2] == expected[:2]
    np.testing.assert_array_equal(got[2], expected[2])
    assert torch.equal(got[3], expected[3])


def test_checkpoint_restores_rng_draws(tmp_path):
    model, optimizer, _, trainer = make_run()
    ckpt = trainer.add(Checkpoint({"model": model, "optimizer": optimizer}, tmp_path))
    trainer.run(make_data(3), max_epochs=1)
    after_save = (random.random(), np.random.rand(2).tolist(), torch.rand(2))
    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    Checkpoint.load(ckpt.last_path, {"model": make_model()})
    assert (random.random(), np.random.rand(2).tolist()) == after_save[:2]
    assert torch.equal(torch.rand(2), after_save[2])


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    dataset = torch.utils.data.TensorDataset(torch.randn(24, 4), torch.randn(24, 2))

    def setup():
        model, optimizer, scheduler, trainer = make_run("sgd")
        loader = torch.utils.data.DataLoader(dataset, batch_size=6, shuffle=True)
        return {"model": model, "optimizer": optimizer, "scheduler": scheduler, "trainer": trainer}, loader

    torch.manual_seed(5)
    straight, loader = setup()
    straight["trainer"].run(loader, max_epochs=3)

    torch.manual_seed(5)
    first, loader = setup()
    first["trainer"].add(Checkpoint(first, tmp_path))
    first["trainer"].run(loader, max_epochs=1)
    torch.manual_seed(777)  # a new process would not share the RNG state
    resumed, loader = setup()
    path = Checkpoint.resume_latest(tmp_path, resumed)
    assert path is not None and path.endswith("checkpoint_000000004.pt")
    resumed["trainer"].run(loader, max_epochs=3)
    assert resumed["trainer"].state.iteration == 12
    assert_state_equal(straight["model"].state_dict(), resumed["model"].state_dict())


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_a_save_keeps_nothing_once_it_is_done(tmp_path, async_save):
    """Memory stays flat over a run saving every iteration: after the first 80 saves (buffers, caches warm),
    150 more leave no Python container behind and less than one small allocation per save in all (issue 25
    saw RSS grow over 470 saves; a path string or a list kept per save fails this)."""
    model, optimizer, _, trainer = make_run()
    trainer.add(Checkpoint({"model": model, "optimizer": optimizer, "trainer": trainer}, tmp_path,
                           every_iterations=1, keep_last=2, async_save=async_save))
    data = make_data(10)
    counts = []
    for epochs in (8, 23):
        trainer.run(data, max_epochs=epochs)
        gc.collect()
        counts.append((len(gc.get_objects()), sys.getallocatedblocks()))
    assert trainer.state.iteration == 230 and len(files(tmp_path)) == 2
    (objects_before, blocks_before), (objects_after, blocks_after) = counts
    assert objects_after - objects_before <= 2, f"Python containers after 80 and 230 saves: {counts}"
    assert blocks_after - blocks_before < 100, f"allocated blocks after 80 and 230 saves: {counts}"


def test_keep_last_k(tmp_path):
    model, optimizer, _, trainer = make_run()
    trainer.add(Checkpoint({"model": model}, tmp_path, every_iterations=1, keep_last=3))
    trainer.run(make_data(7), max_epochs=1)
    assert files(tmp_path) == {f"checkpoint_{s:09d}.pt" for s in (5, 6, 7)}


def test_keep_last_none_keeps_all_and_epoch_saves(tmp_path):
    model, optimizer, _, trainer = make_run()
    trainer.add(Checkpoint({"model": model}, tmp_path, prefix="run", keep_last=None))
    trainer.run(make_data(3), max_epochs=3)
    assert files(tmp_path) == {f"run_{s:09d}.pt" for s in (3, 6, 9)}


@pytest.mark.parametrize(
    ("mode", "scores", "best"),
    [
        ("max", [math.nan, 0.5, math.nan, 0.9, math.inf, 0.7, 0.1, math.nan], {4: "0.9", 6: "0.7"}),
        ("min", [3.0, -math.inf, 1.0, math.nan, 2.0, 5.0], {3: "1", 5: "2"}),
    ],
)
def test_keep_best_k_ignores_nan_and_inf(tmp_path, mode, scores, best):
    model, optimizer, _, trainer = make_run()
    seen = []

    def score(engine: Engine) -> float:
        seen.append(engine.state.iteration)
        return scores[engine.state.iteration - 1]

    trainer.add(
        Checkpoint({"model": model}, tmp_path, every_iterations=1, monitor=score, mode=mode, keep_best=2, keep_last=1)
    )
    trainer.run(make_data(len(scores)), max_epochs=1)
    assert seen == list(range(1, len(scores) + 1))
    expected = {f"best_checkpoint_{s:09d}_score={text}.pt" for s, text in best.items()}
    assert files(tmp_path) == expected | {f"checkpoint_{len(scores):09d}.pt"}
    for name in expected:
        info = Checkpoint.load(tmp_path / name, {"model": make_model()})
        assert info["score"] == scores[info["step"] - 1]


def test_monitor_metric_key_and_restart_adopts_earlier_files(tmp_path):
    model, optimizer, _, trainer = make_run()
    accs = iter([0.2, 0.8, 0.5, 0.6])
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(acc=next(accs)))
    trainer.add(Checkpoint({"model": model}, tmp_path, monitor="acc", keep_best=1, keep_last=1))
    trainer.run(make_data(2), max_epochs=2)
    assert files(tmp_path) == {"best_checkpoint_000000004_score=0.8.pt", "checkpoint_000000004.pt"}

    model2, optimizer2, _, trainer2 = make_run()
    trainer2.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(acc=next(accs)))
    trainer2.add(Checkpoint({"model": model2}, tmp_path, monitor="acc", keep_best=1, keep_last=1))
    assert Checkpoint.resume_latest(tmp_path, {"model": model2, "trainer": trainer2})
    trainer2.run(make_data(2), max_epochs=4)
    # 0.5 and 0.6 never beat the adopted 0.8; the old regular file was evicted by the new ones
    assert files(tmp_path) == {"best_checkpoint_000000004_score=0.8.pt", "checkpoint_000000008.pt"}


def test_failed_write_keeps_previous_file_and_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    model, optimizer, _, trainer = make_run()
    ckpt = trainer.add(Checkpoint({"model": model, "optimizer": optimizer}, tmp_path, every_iterations=1))
    trainer.run(make_data(1), max_epochs=1)
    good = tmp_path / "checkpoint_000000001.pt"
    good_bytes = good.read_bytes()
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_save)
    trainer.state.iteration = 2
    with pytest.raises(CheckpointError, match="No space left"):
        ckpt.save(trainer)
    assert files(tmp_path) == {"checkpoint_000000001.pt"}
    monkeypatch.undo()

    def broken_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(ckmod.os, "replace", broken_replace)
    trainer.state.iteration = 3
    with pytest.raises(CheckpointError, match="rename failed"):
        ckpt.save(trainer)
    monkeypatch.undo()
    assert files(tmp_path) == {"checkpoint_000000001.pt"}
    assert good.read_bytes() == good_bytes
    assert Checkpoint.latest(tmp_path) == str(good)


def test_stray_temp_files_are_ignored_then_removed(tmp_path):
    model, optimizer, _, trainer = make_run()
    trainer.add(Checkpoint({"model": model}, tmp_path))
    trainer.run(make_data(2), max_epochs=1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stray = tmp_path / f".tmp-checkpoint_000000009.pt-{dead_pid}-deadbeef"
    stray.write_bytes(b"PK\x03\x04partial")
    live = tmp_path / f".tmp-checkpoint_000000009.pt-{os.getppid()}-cafe0001"
    live.write_bytes(b"being written by another live process")
    assert Checkpoint.latest(tmp_path) == str(tmp_path / "checkpoint_000000002.pt")
    model2, _, _, trainer2 = make_run()
    trainer2.add(Checkpoint({"model": model2}, tmp_path))
    assert not stray.exists()
    assert live.exists()


def test_refuses_state_that_would_not_load_weights_only(tmp_path):
    class NumpyState:
        def state_dict(self):
            return {"table": np.zeros(3)}

        def load_state_dict(self, state):
            pass

    model, optimizer, _, trainer = make_run()
    ckpt = trainer.add(Checkpoint({"model": model, "extra": NumpyState()}, tmp_path))
    with pytest.raises(CheckpointError, match=r"weights_only.*\['extra'\]\['table'\] is a numpy.ndarray"):
        trainer.run(make_data(2), max_epochs=1)
    assert files(tmp_path) == set()
    assert ckpt.last_path is None


def _saved_checkpoint(tmp_path, iterations: int = 2):
    model, optimizer, _, trainer = make_run()
    ckpt = trainer.add(Checkpoint({"model": model, "optimizer": optimizer}, tmp_path))
    trainer.run(make_data(iterations), max_epochs=1)
    return ckpt.last_path


def test_load_missing_and_empty_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint.load(tmp_path / "nope.pt", {"model": make_model()})
    empty = tmp_path / "checkpoint_000000001.pt"
    empty.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match=r"checkpoint_000000001.pt is empty.*corrupt or incomplete"):
        Checkpoint.load(empty, {"model": make_model()})


def test_load_truncated_and_random_bytes(tmp_path):
    path = _saved_checkpoint(tmp_path)
    data = Path(path).read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    for bad in (truncated, noise):
        model = make_model(5)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(CorruptCheckpointError, match=rf"{bad.name} \(\d+ bytes\) is corrupt or incomplete"):
            Checkpoint.load(bad, {"model": model})
        assert_state_equal(before, model.state_dict())


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "checkpoint_000000001.pt"
    torch.save({"format": "ember-checkpoint", "objects": {"model": _Evil(str(marker))}}, evil)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not a plain checkpoint.*NOT executed"):
        Checkpoint.load(evil, {"model": make_model()})
    assert not marker.exists()
    with pytest.warns(RuntimeWarning, match="checkpoint_000000001.pt"):
        assert Checkpoint.latest(tmp_path) is None
    assert not marker.exists()


def test_load_into_a_different_model_lists_the_keys(tmp_path):
    path = _saved_checkpoint(tmp_path)
    other = nn.Sequential(nn.Linear(4, 8), nn.Identity(), nn.ReLU(), nn.Dropout(), nn.Linear(8, 3), nn.Linear(3, 3))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        Checkpoint.load(path, {"model": other})
    text = str(info.value)
    assert "missing keys (in the model, not in the checkpoint): 5.weight, 5.bias" in text
    assert "unexpected keys (in the checkpoint, not in the model): 1.weight, 1.bias, 1.running_mean" in text
    assert "4.weight: checkpoint (2, 8) vs model (3, 8)" in text and "4.bias: checkpoint (2,) vs model (3,)" in text
    assert "nothing was changed" in text and "strict=False" in text
    assert_state_equal(before, other.state_dict())

    with pytest.warns(RuntimeWarning, match="partially"):
        Checkpoint.load(path, {"model": other}, strict=False)
    saved = torch.load(path, weights_only=True)["objects"]["model"]
    assert torch.equal(other[0].weight, saved["0.weight"])
    assert torch.equal(other[4].weight, before["4.weight"])


def test_load_reports_missing_objects_and_plain_state_dicts(tmp_path):
    path = _saved_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"not in the checkpoint: \['ema'\]"):
        Checkpoint.load(path, {"model": make_model(), "ema": make_model()})
    plain = tmp_path / "plain.pt"
    torch.save(make_model().state_dict(), plain)
    with pytest.raises(CheckpointError, match="not an ember checkpoint"):
        Checkpoint.load(plain, {"model": make_model()})


def test_latest_orders_by_recorded_step_not_mtime_and_skips_corrupt_newest(tmp_path):
    model, optimizer, _, trainer = make_run()
    trainer.add(Checkpoint({"model": model, "optimizer": optimizer}, tmp_path, every_iterations=2, keep_last=None))
    trainer.run(make_data(6), max_epochs=1)
    step2, step4, step6 = (tmp_path / f"checkpoint_{s:09d}.pt" for s in (2, 4, 6))
    assert Checkpoint.latest(tmp_path) == str(step6)
    future = step6.stat().st_mtime + 1000
    os.utime(step2, (future, future))
    assert Checkpoint.latest(tmp_path) == str(step6)

    step6.write_bytes(step6.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match=r"checkpoint_000000006\.pt.*corrupt or incomplete"):
        assert Checkpoint.latest(tmp_path) == str(step4)
    # a file named as step 8 but holding step 2 sorts by what is inside
    (tmp_path / "checkpoint_000000008.pt").write_bytes(step2.read_bytes())
    with pytest.warns(RuntimeWarning, match="checkpoint_000000006"):
        assert Checkpoint.latest(tmp_path) == str(step4)

    fresh_model, fresh_opt, _, fresh_trainer = make_run(seed=3)
    with pytest.warns(RuntimeWarning, match="checkpoint_000000006"):
        path = Checkpoint.resume_latest(tmp_path, {"model": fresh_model, "trainer": fresh_trainer})
    assert path == str(step4) and fresh_trainer.state.iteration == 4
    assert Checkpoint.latest(tmp_path / "missing") is None


def test_non_finite_parameters_are_never_saved(tmp_path):
    model, optimizer, _, trainer = make_run()
    trainer.add(Checkpoint({"model": model, "optimizer": optimizer}, tmp_path, every_iterations=2, keep_last=2))

    @trainer.on(Events.ITERATION_COMPLETED(once=5))
    def poison(engine):
        with torch.no_grad():
            model[0].weight[0, 0] = math.nan

    good = tmp_path / "checkpoint_000000004.pt"
    with pytest.warns(RuntimeWarning, match=r"NOT saving iteration 5 .*model\.0\.weight.*checkpoint_000000004\.pt"):
        trainer.run(make_data(5), max_epochs=1)  # the save at COMPLETED (iteration 5) is refused
    assert files(tmp_path) == {"checkpoint_000000002.pt", "checkpoint_000000004.pt"}
    restored = make_model()
    Checkpoint.load(good, {"model": restored})
    assert all(torch.isfinite(t).all() for t in restored.state_dict().values() if t.is_floating_point())


def test_no_save_after_terminate_on_nan(tmp_path):
    model, optimizer, _, trainer = make_run()
    ckpt = trainer.add(Checkpoint({"model": model}, tmp_path, every_iterations=1, keep_last=1))
    trainer.run(make_data(2), max_epochs=1)
    trainer.state.terminated_on_nan = (1, 3)
    trainer.state.iteration = 3
    with pytest.warns(RuntimeWarning, match=r"NOT saving the stopped run \(iteration 3\): TerminateOnNan found a "
                                            r"non-finite value at epoch 1, iteration 3"):
        assert ckpt.save() is None
    assert files(tmp_path) == {"checkpoint_000000002.pt"}


def test_wrapped_models_save_the_inner_module(tmp_path):
    inner = make_model()
    for wrapped in (nn.DataParallel(inner), torch.compile(inner)):
        trainer = Engine(lambda e, b: None)
        ckpt = trainer.add(Checkpoint({"model": wrapped}, tmp_path, keep_last=None))
        trainer.run([0], max_epochs=1)
        state = torch.load(ckpt.last_path, weights_only=True)["objects"]["model"]
        assert set(state) == set(inner.state_dict())
        plain = make_model(seed=9)
        Checkpoint.load(ckpt.last_path, {"model": plain})
        assert_state_equal(inner.state_dict(), plain.state_dict())
        rewrapped = nn.DataParallel(make_model(seed=9))
        Checkpoint.load(ckpt.last_path, {"model": rewrapped})
        assert_state_equal(inner.state_dict(), rewrapped.module.state_dict())


def test_save_on_exception(tmp_path):
    model, optimizer, _, trainer = make_run()
    trainer.add(Checkpoint({"model": model}, tmp_path, every_epochs=10, save_on_exception=True))

    @trainer.on(Events.ITERATION_COMPLETED(once=3))
    def boom(engine):
        raise KeyError("boom")

    with pytest.raises(KeyError):
        trainer.run(make_data(5), max_epochs=1)
    assert files(tmp_path) == {"checkpoint_000000003.pt"}


def test_argument_checks(tmp_path):
    model = make_model()
    with pytest.raises(ValueError, match="monitor"):
        Checkpoint({"model": model}, tmp_path, keep_best=2)
    with pytest.raises(TypeError, match="state_dict"):
        Checkpoint({"model": model, "x": object()}, tmp_path)
    with pytest.raises(ValueError, match="mode"):
        Checkpoint({"model": model}, tmp_path, monitor="acc", mode="up")
    with pytest.raises(ValueError, match="keep no checkpoint"):
        Checkpoint({"model": model}, tmp_path, keep_last=0)


def test_distributed_single_process_group(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model, optimizer, _, trainer = make_run()
        trainer.add(Checkpoint({"model": model}, tmp_path / "ckpt"))
        trainer.run(make_data(2), max_epochs=1)
    finally:
        torch.distributed.destroy_process_group()
    assert files(tmp_path / "ckpt") == {"checkpoint_000000002.pt"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_and_cuda_model_load_on_cpu(tmp_path):
    model = make_model().cuda()
    optimizer = torch.optim.Adam(model.parameters())
    trainer = create_trainer(model, optimizer, nn.functional.mse_loss, device="cuda")
    ckpt = trainer.add(Checkpoint({"model": model, "optimizer": optimizer}, tmp_path))
    trainer.run(make_data(2), max_epochs=1)
    expected = torch.rand(3, device="cuda")
    torch.cuda.manual_seed_all(1234)
    cpu_model = make_model(seed=4)
    Checkpoint.load(ckpt.last_path, {"model": cpu_model})
    assert torch.equal(torch.rand(3, device="cuda"), expected)
    assert_state_equal({k: v.cpu() for k, v in model.state_dict().items()}, cpu_model.state_dict())


def _adam(lr: float | torch.Tensor) -> torch.optim.Optimizer:
    return torch.optim.Adam(make_model().parameters(), lr=lr, foreach=False)


@pytest.mark.parametrize("saved_as", ["tensor", "number"])
@pytest.mark.parametrize("loaded_as", ["tensor", "number"])
def test_optimizer_hyperparameters_keep_the_loading_runs_form(tmp_path, saved_as, loaded_as):
    """A scheduler (and a CUDA graph) hold the optimizer's tensor learning rate: loading must update that very
    tensor on its device, not swap in the file's CPU copy; a float stays a float. Flags like `foreach` stay."""
    saved = _adam(torch.tensor(0.1) if saved_as == "tensor" else 0.1)
    saved.param_groups[0]["lr"] = torch.tensor(0.025) if saved_as == "tensor" else 0.025
    Checkpoint({"optimizer": saved}, tmp_path).save(Engine(lambda engine, batch: None))

    held = torch.tensor(0.1)
    loaded = torch.optim.Adam(make_model().parameters(), lr=held if loaded_as == "tensor" else 0.1)
    Checkpoint.load(Checkpoint.latest(tmp_path), {"optimizer": loaded})
    lr = loaded.param_groups[0]["lr"]
    if loaded_as == "tensor":
        assert lr is held and float(held) == pytest.approx(0.025)
    else:
        assert type(lr) is float and lr == pytest.approx(0.025)
    assert loaded.param_groups[0]["foreach"] is None  # this run's choice, not the saved foreach=False


def test_ember_checkpoint_is_the_public_face_and_one_rule_names_the_implicit_objects(tmp_path):
    import ember.checkpoint as checkpoints
    from ember.checkpoint.handler_states import implicit_objects

    assert set(checkpoints.__all__) == {"load", "latest", "resume_latest", "CheckpointError",
                                        "CorruptCheckpointError", "HandlerStates"}
    model, optimizer, _, trainer = make_run()
    trainer.scaler = torch.amp.GradScaler("cpu", enabled=True)
    saver = trainer.add(Checkpoint({"model": model, "optimizer": optimizer}, tmp_path))
    trainer.run(make_data(2), max_epochs=1)
    path = checkpoints.latest(tmp_path)
    assert path == str(tmp_path / "checkpoint_000000002.pt")
    held = set(torch.load(path, weights_only=True)["objects"])
    assert held == {"model", "optimizer", "trainer", "scaler", "handlers"} and set(saver.objects) == held
    model2, optimizer2, _, trainer2 = make_run(seed=1)
    trainer2.scaler = torch.amp.GradScaler("cpu", enabled=True)
    implicit = implicit_objects(trainer2, {"trainer": trainer2}, saved=held)
    assert set(implicit) == {"scaler", "handlers"}
    assert set(implicit_objects(trainer2, {"trainer": trainer2}, saved={"trainer"})) == set()
    assert checkpoints.resume_latest(tmp_path, {"model": model2, "optimizer": optimizer2, "trainer": trainer2}) == path
    assert torch.equal(model2[0].weight, model[0].weight) and trainer2.state.iteration == 2
    with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
        checkpoints.load(tmp_path / "nothing.pt", {"model": model2})

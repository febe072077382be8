"""TensorBoardLogger: event files read back, a real tensorboard server's HTTP API, histograms, hparams, errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ember.callbacks.tensorboard import TensorBoardLogger
from ember.engine import Engine, Events, create_trainer


class CountingTensor(torch.Tensor):
    """A tensor that counts how often its value is read back with .item() (a device sync on a GPU)."""

    reads = 0

    def item(self) -> float:
        CountingTensor.reads += 1
        return super().item()


def make_trainer(seed: int = 0) -> tuple[Engine, torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A real trainer on a tiny regression problem, with 8 batches per epoch."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = [(torch.randn(4, 3), torch.randn(4, 1)) for _ in range(8)]
    return create_trainer(model, optimizer, torch.nn.MSELoss()), model, data


def record_losses(engine: Engine) -> dict[int, float]:
    """Iteration -> the loss the step returned (the test reads every step; the logger must not)."""
    losses: dict[int, float] = {}
    engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.__setitem__(e.state.iteration, float(e.state.output))
    )
    return losses


def set_metrics(engine: Engine) -> None:
    """Fill metrics at EPOCH_COMPLETED like an evaluation callback would (numbers, a tensor, a dict, a list)."""
    epoch = engine.state.epoch
    engine.state.metrics.update(
        accuracy=0.25 * epoch,
        val_loss=torch.tensor(2.0 / epoch),
        per_class={"a": 1.0 + epoch, "b": 0.5},
        confusion=[[1, 0], [0, 1]],
    )


def accumulate(logdir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def steps_values(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_event_files_hold_loss_metrics_and_hparams(tmp_path: Path) -> None:
    trainer, _, data = make_trainer()
    losses = record_losses(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, set_metrics)
    logger = trainer.add(TensorBoardLogger(tmp_path, log_every=3, hparams={"lr": 0.05, "opt": "sgd", "b": (1, 2)}))
    trainer.run(data, max_epochs=2)

    acc = accumulate(tmp_path)
    loss = steps_values(acc, "train/loss")
    assert [s for s, _ in loss] == [3, 6, 9, 12, 15]
    assert [v for _, v in loss] == pytest.approx([losses[s] for s in (3, 6, 9, 12, 15)], rel=1e-6)
    assert steps_values(acc, "epoch/accuracy") == [(1, 0.25), (2, 0.5)]
    assert steps_values(acc, "epoch/val_loss") == [(1, 2.0), (2, 1.0)]
    assert steps_values(acc, "epoch/per_class/a") == [(1, 2.0), (2, 3.0)]
    assert [s for s, _ in steps_values(acc, "epoch/time_s")] == [1, 2]
    assert not any("confusion" in tag for tag in acc.Tags()["scalars"])
    assert steps_values(acc, "hparam/accuracy") == [(2, 0.5)]
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(acc.PluginTagToContent("hparams"))
    assert logger.writer is not None and logger.writer.file_writer is None  # closed at COMPLETED


def test_loss_is_read_only_on_logged_iterations(tmp_path: Path) -> None:
    engine = Engine(lambda e, b: torch.tensor(float(e.state.iteration)).as_subclass(CountingTensor))
    engine.add(TensorBoardLogger(tmp_path, log_every=4))
    CountingTensor.reads = 0
    engine.run(range(10), max_epochs=1)
    assert CountingTensor.reads == 2
    assert steps_values(accumulate(tmp_path), "train/loss") == [(4, 4.0), (8, 8.0)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only: never via a proxy


def fetch_json(url: str) -> object:
    with DIRECT.open(url, timeout=5) as response:
        return json.loads(response.read())


def tensorboard_command(logdir: Path, port: int) -> list[str]:
    exe = Path(sys.executable).with_name("tensorboard")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "tensorboard.main"]
    return base + ["--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"]


def test_real_tensorboard_server_serves_the_scalars(tmp_path: Path) -> None:
    trainer, _, data = make_trainer(seed=1)
    losses = record_losses(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, set_metrics)
    trainer.add(TensorBoardLogger(tmp_path, log_every=2))
    trainer.run(data, max_epochs=2)

    port = free_port()
    base = f"http://127.0.0.1:{port}/data/plugin/scalars"
    server = subprocess.Popen(tensorboard_command(tmp_path, port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        tags: dict = {}
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"tensorboard exited early: {server.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                tags = fetch_json(f"{base}/tags")  # type: ignore[assignment]
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                tags = {}
            if "train/loss" in tags.get(".", {}) and "epoch/accuracy" in tags.get(".", {}):
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"tensorboard at port {port} did not serve the run's scalars within 30 s; tags: {tags}")

        def scalars(tag: str) -> list[tuple[int, float]]:
            query = urllib.parse.urlencode({"run": ".", "tag": tag})
            return [(step, value) for _, step, value in fetch_json(f"{base}/scalars?{query}")]  # type: ignore[union-attr]

        loss = scalars("train/loss")
        assert [s for s, _ in loss] == list(range(2, 17, 2))
        assert [v for _, v in loss] == pytest.approx([losses[s] for s in range(2, 17, 2)], rel=1e-6)
        assert scalars("epoch/accuracy") == [(1, 0.25), (2, 0.5)]
    finally:
        server.kill()
        server.wait(timeout=10)
        server.stderr.close()  # type: ignore[union-attr]


def test_exception_in_a_handler_propagates_and_closes_the_writer(tmp_path: Path) -> None:
    engine = Engine(lambda e, b: torch.tensor(0.5 * e.state.iteration))
    logger = engine.add(TensorBoardLogger(tmp_path, log_every=1))

    @engine.on(Events.ITERATION_COMPLETED(once=3))
    def fail(_: Engine) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        engine.run(range(10), max_epochs=1)
    assert logger.writer.file_writer is None
    assert steps_values(accumulate(tmp_path), "train/loss") == [(1, 0.5), (2, 1.0), (3, 1.5)]


def test_histograms_of_weights_and_gradients(tmp_path: Path) -> None:
    trainer, model, data = make_trainer()
    trainer.add(TensorBoardLogger(tmp_path, log_every=0, histograms_every=1, model=model))
    trainer.run(data, max_epochs=2)
    acc = accumulate(tmp_path)
    wanted = {"weights/weight", "weights/bias", "grads/weight", "grads/bias"}
    assert wanted <= set(acc.Tags()["histograms"])
    assert "train/loss" not in acc.Tags()["scalars"]
    weight = acc.Histograms("weights/weight")
    assert [h.step for h in weight] == [1, 2]
    assert weight[-1].histogram_value.num == model.weight.numel()
    assert weight[-1].histogram_value.max == pytest.approx(model.weight.max().item(), rel=1e-6)


def test_bad_arguments_and_outputs_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model="):
        TensorBoardLogger(tmp_path, histograms_every=1)
    with pytest.raises(ValueError, match="log_every"):
        TensorBoardLogger(tmp_path, log_every=-1)
    engine = Engine(lambda e, b: (torch.zeros(2), torch.zeros(2)))
    engine.add(TensorBoardLogger(tmp_path, log_every=1))
    with pytest.raises(TypeError, match="output_transform"):
        engine.run(range(2))
    engine = Engine(lambda e, b: {"loss": torch.tensor(3.0)})
    engine.add(TensorBoardLogger(tmp_path / "t", log_every=1, output_transform=lambda out: out["loss"]))
    engine.run(range(2))
    assert steps_values(accumulate(tmp_path / "t"), "train/loss") == [(1, 3.0), (2, 3.0)]


def test_only_rank_zero_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    engine = Engine(lambda e, b: torch.tensor(1.0))
    logger = engine.add(TensorBoardLogger(tmp_path / "rank1", log_every=1))
    engine.run(range(3))
    assert logger.writer is None
    assert not (tmp_path / "rank1").exists()

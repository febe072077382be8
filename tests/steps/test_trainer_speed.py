"""create_trainer's speed options: cuda_graph (refused off CUDA, exact on CUDA), compile, channels_last."""

import contextlib
from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ember.engine import Events
from ember.steps import create_trainer
from ember.steps.cuda_graph import GraphedStep as _GraphedStep

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def batches(shape: tuple[int, ...], n: int = 5, size: int = 6, last: int | None = None,
            device: str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Learnable batches: the label is the index of the largest of an input's first three values."""
    g = torch.Generator().manual_seed(1)
    sizes = [size] * n + ([last] if last else [])
    xs = [torch.randn(b, *shape, generator=g) for b in sizes]
    return [(x.to(device), x.flatten(1)[:, :3].argmax(1).to(device)) for x in xs]


def losses(model: nn.Module, data: list, make_opt=None, **options) -> list[float]:
    optimizer = (make_opt or (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)))(model.parameters())
    trainer = create_trainer(model, optimizer, nn.functional.cross_entropy, **options)
    seen: list[torch.Tensor] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output))
    trainer.run(data, max_epochs=2)
    return [float(v) for v in seen]


def test_cuda_graph_is_refused_at_create_time_without_a_cuda_device():
    model = mlp()
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device; .*cuda_graph=False"):
        create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.cross_entropy, "cpu",
                       cuda_graph=True)


def test_channels_last_trains_a_cnn_like_the_plain_path():
    data = batches((1, 8, 8), last=4)
    plain = losses(cnn(), data)
    model = cnn()
    fast = losses(model, data, channels_last=True)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert len(fast) == len(plain) == 12
    assert sum(plain[6:]) < sum(plain[:6])  # it learns: the second epoch's losses are lower
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compile_trains_a_tiny_model_like_the_plain_path():
    data = batches((8,))
    plain = losses(mlp(), data)
    compiled = losses(mlp(), data, compile=True)
    assert sum(plain[5:]) < sum(plain[:5])
    torch.testing.assert_close(compiled, plain, rtol=1e-4, atol=1e-5)


def test_compile_rejects_a_non_mode():
    model = mlp()
    with pytest.raises(TypeError, match="compile must be a bool or a torch.compile mode name"):
        create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.cross_entropy,
                       compile=3)


def _refusal(model: nn.Module, optimizer: torch.optim.Optimizer, **options) -> str:
    with pytest.raises(ValueError) as refused:
        create_trainer(model, optimizer, nn.functional.cross_entropy, "cuda", cuda_graph=True, **options)
    return str(refused.value)


def test_cuda_graph_refuses_what_a_captured_step_cannot_honour_before_looking_for_a_gpu():
    model = mlp()
    params = list(model.parameters())
    assert "Adagrad, which keeps part of its state on the host" in _refusal(model, torch.optim.Adagrad(params))
    assert "LBFGS" in _refusal(model, torch.optim.LBFGS(params))
    tensor_lr = torch.optim.SGD(params, lr=torch.tensor(0.1))
    assert "fused=True" in _refusal(model, tensor_lr)
    assert "GradScaler" in _refusal(model, torch.optim.SGD(params, lr=0.1), amp="fp16")
    assert "accumulate=2" in _refusal(model, torch.optim.SGD(params, lr=0.1), accumulate=2)
    for mode in ("reduce-overhead", "max-autotune"):
        assert f"compile={mode!r} makes its own CUDA graphs" in _refusal(model, torch.optim.Adam(params), compile=mode)
    # what a captured step can honour gets as far as the device checks (the model here is on the CPU)
    after = "needs the model on the GPU" if torch.cuda.is_available() else "need a CUDA device"
    for ok in ({"compile": "max-autotune-no-cudagraphs"}, {"compile": True}, {"amp": "bf16"}):
        assert after in _refusal(model, torch.optim.Adam(params), **ok)
    fused = torch.optim.SGD(params, lr=torch.tensor(0.1), fused=True)
    assert after in _refusal(model, fused)


def test_cuda_graph_refuses_a_ddp_model(tmp_path):
    import torch.distributed as torch_dist

    torch_dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = nn.parallel.DistributedDataParallel(mlp())
        assert "DistributedDataParallel" in _refusal(model, torch.optim.SGD(model.parameters(), lr=0.1))
    finally:
        torch_dist.destroy_process_group()


def test_graphed_step_turns_on_capturable_and_refuses_changed_hyperparameters():
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = _GraphedStep(lambda x, y: (x, x.sum()), optimizer)
    step._make_capturable()
    assert all(group["capturable"] for group in optimizer.param_groups)
    step.hyper = step._hyperparameters()
    step._check_hyperparameters()  # unchanged: nothing raised
    optimizer.param_groups[0]["lr"] = 5e-4  # what a scheduler does to a float learning rate
    with pytest.raises(RuntimeError, match=r"\['lr'\] changed after the training step was captured"):
        step._check_hyperparameters()


@needs_cuda
@pytest.mark.parametrize("make_opt", [lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                                      lambda p: torch.optim.Adam(p, lr=1e-2)], ids=["sgd", "adam"])
def test_cuda_graph_step_matches_the_eager_step(make_opt):
    data = batches((1, 8, 8), n=7, last=4, device="cuda")
    plain = losses(cnn().cuda(), data, make_opt, device="cuda")
    graphed = losses(cnn().cuda(), data, make_opt, device="cuda", cuda_graph=True)
    assert len(graphed) == len(plain) == 16
    torch.testing.assert_close(graphed, plain, rtol=1e-4, atol=1e-5)


@needs_cuda
def test_cuda_graph_follows_a_tensor_learning_rate_and_refuses_a_float_one_changing():
    data = batches((8,), n=8, device="cuda")
    model = mlp().cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(1e-2, device="cuda"), capturable=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0 / (1 + i))
    trainer = create_trainer(model, optimizer, nn.functional.cross_entropy, "cuda", cuda_graph=True)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: scheduler.step())
    trainer.run(data, max_epochs=1)
    assert float(optimizer.param_groups[0]["lr"]) == pytest.approx(1e-2 / 9)

    model = mlp().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0 / (1 + i))
    trainer = create_trainer(model, optimizer, nn.functional.cross_entropy, "cuda", cuda_graph=True)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: scheduler.step())
    with pytest.raises(RuntimeError, match="changed after the training step was captured as a CUDA graph"):
        trainer.run(data, max_epochs=1)


class _Ops(TorchDispatchMode):
    """Records the name of every aten op run inside it (forward, backward and optimizer alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.__name__] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_a_training_iteration_runs_the_tensor_ops_of_a_hand_written_step_and_no_more(momentum):
    """zero_grad, forward, loss, backward, step: the engine and its step add one detach, no copy, no sync."""
    data = batches((8,), n=2)

    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    trainer = create_trainer(model, optimizer, nn.functional.cross_entropy)
    trainer.run(data[:1], max_epochs=1)  # the first step creates the momentum buffers
    with _Ops() as ember:
        trainer.run(data[1:], max_epochs=1)

    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    for i, (x, y) in enumerate(data):
        with _Ops() if i else contextlib.nullcontext() as plain:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    assert ember.ops - plain.ops == Counter({"detach.default": 1})  # the loss it outputs, a view (no copy)
    assert plain.ops - ember.ops == Counter()

"""CUDA graphs for the training step: the checks that refuse what a capture cannot honour, and the captured step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ember.steps.batch import Amp, CompileMode


def check_cuda_graph(
    device: torch.device, model: nn.Module, optimizer: torch.optim.Optimizer, amp: Amp | None, accumulate: int,
    compile: bool | CompileMode,
) -> None:
    """Refuse, at create time and with the reason, the settings a captured training step cannot honour
    (what the set-up asks for first, then whether this machine and device can capture it).

    Args:
        device: the device the trainer runs on.
        model: the model the step trains.
        optimizer: the optimizer the step steps.
        amp: the trainer's mixed precision.
        accumulate: batches per optimizer step.
        compile: the trainer's torch.compile setting.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise ValueError(
            "cuda_graph=True cannot capture a DistributedDataParallel model (DDP must be built on a side stream "
            "and run 11 eager iterations first); under torchrun leave cuda_graph=False"
        )
    if not isinstance(optimizer, torch.optim.SGD) and "capturable" not in optimizer.defaults:
        raise ValueError(
            f"cuda_graph=True cannot capture {type(optimizer).__name__}, which keeps part of its state on the "
            "host; use SGD or an optimizer with a `capturable` option (Adam, AdamW, RMSprop...)"
        )
    if isinstance(optimizer, torch.optim.SGD) and any(
        isinstance(g["lr"], torch.Tensor) and not g.get("fused") for g in optimizer.param_groups
    ):
        raise ValueError(
            "cuda_graph=True: SGD reads a tensor learning rate on the host unless it is fused; "
            "pass SGD(..., lr=torch.tensor(lr, device='cuda'), fused=True)"
        )
    if amp == "fp16":
        raise ValueError(
            "cuda_graph=True cannot capture fp16's GradScaler (it syncs to skip inf steps); use amp='bf16'"
        )
    if accumulate != 1:
        raise ValueError(f"cuda_graph=True captures one optimizer step per batch, not {accumulate=}")
    if isinstance(compile, str) and _makes_cuda_graphs(compile):
        raise ValueError(
            f"compile={compile!r} makes its own CUDA graphs; with cuda_graph=True use compile=True or "
            "compile='max-autotune-no-cudagraphs'"
        )
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(
            f"CUDA graphs need a CUDA device; this trainer runs on {device.type!r}"
            f"{'' if torch.cuda.is_available() else ' and no CUDA GPU is available'}: "
            "pass device='cuda' with the model on the GPU, or leave cuda_graph=False"
        )
    if any(p.device.type != "cuda" for p in model.parameters()):
        raise ValueError("cuda_graph=True needs the model on the GPU: call model.to('cuda') first")
    current = torch.cuda.current_device()
    if device.index is not None and device.index != current:
        raise ValueError(
            f"cuda_graph=True captures on the current CUDA device (cuda:{current}), not {device}: call "
            f"torch.cuda.set_device({device.index}) before create_trainer"
        )


def _makes_cuda_graphs(mode: str) -> bool:
    """Whether torch.compile's `mode` captures CUDA graphs itself (reduce-overhead, max-autotune)."""
    import torch._inductor

    try:
        return bool(torch._inductor.list_mode_options(mode).get("triton.cudagraphs"))
    except RuntimeError:
        return False  # not a mode name: torch.compile itself will say so


def _frozen(value: Any) -> Any:
    """A comparable snapshot of an optimizer hyperparameter: tensors by identity, tuples item by item."""
    if isinstance(value, torch.Tensor):
        return ("tensor", id(value))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


class GraphedStep:
    """The whole training step captured once as a CUDA graph, then replayed on static input buffers.

    It follows torch's whole-network capture recipe: the first `WARMUP` batches train eagerly on a side
    stream (which also builds the optimizer state and any torch.compile code), grads are set to None so
    backward allocates them from the graph's pool, then forward, loss, backward and optimizer step are
    captured on that stream and replayed for every batch of the same shape; each replay refills the same
    .grad tensors, so no zero_grad is needed. A batch of another shape (a last, smaller batch) runs eagerly
    on the same grads. Optimizers that have `capturable` (Adam, AdamW...) get it turned on. Hyperparameters
    are baked into the graph, so changing one afterwards (a float learning rate stepped by a scheduler)
    raises instead of being silently ignored; tensor learning rates updated in place are read by the graph.
    """

    WARMUP = 3

    def __init__(self, run: Callable[[Any, Any], tuple[Any, torch.Tensor]], optimizer: torch.optim.Optimizer) -> None:
        self.run = run
        self.optimizer = optimizer
        self.stream: torch.cuda.Stream | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.signature: tuple | None = None
        self.warm = 0
        self.static: tuple[Any, ...] = ()
        self.hyper: list[dict[str, Any]] = []

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, Any, Any, torch.Tensor]:
        """One training step on (x, y); returns (x, y, y_pred, loss) as the step computed them."""
        signature = (x.shape, x.dtype, y.shape, y.dtype)
        if self.signature is None:
            self.signature = signature
            self.stream = torch.cuda.Stream(device=x.device)
            self._make_capturable()
        if signature != self.signature:
            self.optimizer.zero_grad(set_to_none=self.graph is None)
            y_pred, loss = self.run(x, y)
            return x, y, y_pred, loss
        if self.graph is None:
            return self._warmup_or_capture(x, y)
        self._check_hyperparameters()
        sx, sy, s_pred, s_loss = self.static
        sx.copy_(x, non_blocking=True)
        sy.copy_(y, non_blocking=True)
        self.graph.replay()
        return sx, sy, s_pred, s_loss.detach().clone()

    def _make_capturable(self) -> None:
        for group in self.optimizer.param_groups:
            if group.get("capturable") is False:
                group["capturable"] = True
            device = group["params"][0].device if group["params"] else None
            for key, value in group.items():
                if isinstance(value, torch.Tensor) and device is not None and value.device != device:
                    group[key] = value.to(device)  # a CPU tensor would be read once, at capture
        for p, state in self.optimizer.state.items():
            step = state.get("step") if isinstance(state, dict) else None
            if isinstance(step, torch.Tensor) and step.device != p.device:
                state["step"] = step.to(p.device)

    def _warmup_or_capture(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, Any, Any, torch.Tensor]:
        stream = self.stream
        assert stream is not None
        stream.wait_stream(torch.cuda.current_stream())
        if self.warm < self.WARMUP:
            self.warm += 1
            x.record_stream(stream)
            y.record_stream(stream)
            with torch.cuda.stream(stream):
                self.optimizer.zero_grad(set_to_none=True)
                y_pred, loss = self.run(x, y)
            torch.cuda.current_stream().wait_stream(stream)
            return x, y, y_pred, loss
        sx, sy = x.clone(), y.clone()  # the batch's own strides: a compiled model's guards check them
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            s_pred, s_loss = self.run(sx, sy)
        self.graph, self.static = graph, (sx, sy, s_pred, s_loss)
        self.hyper = self._hyperparameters()
        graph.replay()
        return sx, sy, s_pred, s_loss.detach().clone()

    def _hyperparameters(self) -> list[dict[str, Any]]:
        return [{k: _frozen(v) for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]

    def _check_hyperparameters(self) -> None:
        now = self._hyperparameters()
        if now == self.hyper:
            return
        changed = sorted({k for old, new in zip(self.hyper, now) for k in new if old.get(k) != new[k]})
        raise RuntimeError(
            f"optimizer hyperparameter(s) {changed} changed after the training step was captured as a CUDA "
            "graph, which would keep replaying the captured values; for a scheduled learning rate give the "
            "optimizer a GPU tensor, e.g. Adam(params, lr=torch.tensor(1e-3, device='cuda'), "
            "capturable=True) or SGD(params, lr=torch.tensor(0.1, device='cuda'), fused=True) "
            "(schedulers then update it in place; keep momentum and betas fixed, e.g. "
            "OneCycleLR(cycle_momentum=False)), or train with cuda_graph=False"
        )

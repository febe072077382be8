"""Step factories: `create_trainer` (zero_grad, forward, loss, backward, step) and `create_evaluator`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ember.engine.engine import Engine
from ember.engine.errors import describe
from ember.engine.events import Events
from ember.engine.observers import exception_observer

PrepareBatch = Callable[[Any, Any, bool], tuple[Any, Any]]
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def default_prepare_batch(
    batch: Any, device: torch.device | str | None = None, non_blocking: bool = True
) -> tuple[Any, Any]:
    """Split a batch into (inputs, targets) and move both to `device`."""
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        raise TypeError(
            f"expected a batch (inputs, targets), got {describe(batch)}; "
            "pass prepare_batch= to create_trainer/create_evaluator to unpack other batch structures"
        )
    x, y = batch
    if device is not None:
        x = x.to(device, non_blocking=non_blocking)
        y = y.to(device, non_blocking=non_blocking)
    return x, y


def _device_type(device: torch.device | str | None, model: nn.Module) -> str:
    if device is not None:
        return torch.device(device).type
    p = next(model.parameters(), None)
    return p.device.type if p is not None else "cpu"


def _autocast(
    amp: str | None, device_type: str, cache: bool = True
) -> Callable[[], contextlib.AbstractContextManager]:
    if amp is None:
        return contextlib.nullcontext
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    dtype = AMP_DTYPES[amp]
    return lambda: torch.autocast(device_type=device_type, dtype=dtype, cache_enabled=cache)


def _check_cuda_graph(
    device: torch.device, model: nn.Module, optimizer: torch.optim.Optimizer, amp: str | None, accumulate: int,
    compile: bool | str,
) -> None:
    """Refuse, at create time and with the reason, the settings a captured training step cannot honour
    (what the set-up asks for first, then whether this machine and device can capture it)."""
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


def _compiled(model: nn.Module, compile: bool | str) -> nn.Module:
    """`model`, or torch.compile of it (`compile` True for the default mode, or the mode's name)."""
    if compile is False or compile is None:
        return model
    if compile is not True and not isinstance(compile, str):
        raise TypeError(f"compile must be a bool or a torch.compile mode name, got {compile!r}")
    return torch.compile(model, mode=None if compile is True else compile)


def _frozen(value: Any) -> Any:
    """A comparable snapshot of an optimizer hyperparameter: tensors by identity, tuples item by item."""
    if isinstance(value, torch.Tensor):
        return ("tensor", id(value))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


class _GraphedStep:
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


def create_trainer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    device: torch.device | str | None = None,
    *,
    non_blocking: bool = True,
    accumulate: int = 1,
    clip_grad_norm: float | None = None,
    amp: str | None = None,
    prepare_batch: PrepareBatch | None = None,
    output_transform: Callable[[Any, Any, Any, torch.Tensor], Any] | None = None,
    cuda_graph: bool = False,
    compile: bool | str = False,
    channels_last: bool = False,
) -> Engine:
    """An Engine whose step trains `model` on one batch and outputs the detached loss (no host sync).

    Speed options: `compile` runs the step's forward through torch.compile (True, or a mode name such as
    "max-autotune-no-cudagraphs"); `channels_last` puts the model and 4-D inputs in channels-last memory
    format (faster convolutions, above all under bf16 on GPUs); `cuda_graph` captures the whole step (forward,
    loss, backward, optimizer step) as one CUDA graph after a few eager warm-up batches (see `_GraphedStep`).
    """
    if not isinstance(accumulate, int) or accumulate < 1:
        raise ValueError(f"accumulate must be a positive integer, got {accumulate!r}")
    prepare = prepare_batch or default_prepare_batch
    device_type = _device_type(device, model)
    if cuda_graph:
        device = device if device is not None else next(model.parameters()).device
        _check_cuda_graph(torch.device(device), model, optimizer, amp, accumulate, compile)
    autocast = _autocast(amp, device_type, cache=not cuda_graph)
    scaler = torch.amp.GradScaler(device_type) if amp == "fp16" else None
    params = [p for p in model.parameters() if p.requires_grad]
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = _compiled(model, compile)

    def forward_backward_step(x: Any, y: Any, step: bool = True) -> tuple[Any, torch.Tensor]:
        """Forward, loss, backward and (when `step`) the optimizer step of one batch; no zero_grad."""
        with autocast():
            y_pred = net(x)
            loss = loss_fn(y_pred, y)
        scaled = loss / accumulate if accumulate > 1 else loss
        if scaler is not None:
            scaler.scale(scaled).backward()
        else:
            scaled.backward()
        if step:
            if scaler is not None:
                if clip_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
            else:
                if clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                optimizer.step()
        return y_pred, loss

    graphed = _GraphedStep(forward_backward_step, optimizer) if cuda_graph else None

    def train_step(engine: Engine, batch: Any) -> Any:
        if not model.training:
            model.train()
        x, y = prepare(batch, device, non_blocking)
        if channels_last and isinstance(x, torch.Tensor) and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if graphed is not None:
            x, y, y_pred, loss = graphed(x, y)
        else:
            it = engine.state.iteration
            if accumulate == 1 or it % accumulate == 1:
                optimizer.zero_grad(set_to_none=True)
            y_pred, loss = forward_backward_step(x, y, accumulate == 1 or it % accumulate == 0)
        if output_transform is not None:
            return output_transform(x, y, y_pred, loss)
        return loss.detach()

    trainer = Engine(train_step)
    trainer.model = model
    trainer.optimizer = optimizer
    trainer.scaler = scaler
    return trainer


def _is_ignite_metric(metric: Any) -> bool:
    try:
        from ignite.metrics import Metric
    except ImportError:
        return False
    return isinstance(metric, Metric)


def create_evaluator(
    model: nn.Module,
    metrics: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    *,
    non_blocking: bool = True,
    prepare_batch: PrepareBatch | None = None,
    amp: str | None = None,
) -> Engine:
    """An Engine that runs `model` in eval mode without gradients and fills `state.metrics` at COMPLETED."""
    prepare = prepare_batch or default_prepare_batch
    autocast = _autocast(amp, _device_type(device, model))
    metrics = dict(metrics or {})
    for name, metric in metrics.items():
        if not all(callable(getattr(metric, m, None)) for m in ("reset", "update", "compute")):
            raise TypeError(f"metric {name!r} needs reset(), update(output) and compute(); got {metric!r}")
        if device is not None and _is_ignite_metric(metric) and torch.device(device).type != "cpu":
            metric._device = torch.device(device)  # accumulate on the evaluator's device: no per-batch sync

    @torch.no_grad()
    def eval_step(engine: Engine, batch: Any) -> tuple[Any, Any]:
        x, y = prepare(batch, device, non_blocking)
        with autocast():
            y_pred = model(x)
        return y_pred, y

    evaluator = Engine(eval_step)
    evaluator.model = model
    ignite_metrics = {n: m for n, m in metrics.items() if _is_ignite_metric(m)}
    plain_metrics = {n: m for n, m in metrics.items() if n not in ignite_metrics}
    was_training = [model.training]

    def started(engine: Engine) -> None:
        was_training[0] = model.training
        model.eval()
        engine.state.metrics.clear()
        for metric in metrics.values():
            metric.reset()

    def iteration_completed(engine: Engine) -> None:
        for metric in ignite_metrics.values():
            metric.iteration_completed(engine)
        for metric in plain_metrics.values():
            metric.update(engine.state.output)

    def completed(engine: Engine) -> None:
        for name, metric in ignite_metrics.items():
            metric.completed(engine, name)
        for name, metric in plain_metrics.items():
            value = metric.compute()
            if isinstance(value, torch.Tensor) and value.ndim == 0:
                value = value.item()
            engine.state.metrics[name] = value
        model.train(was_training[0])

    @exception_observer
    def restore_mode(engine: Engine, exc: BaseException) -> None:
        model.train(was_training[0])

    evaluator.add_event_handler(Events.STARTED, started)
    if metrics:
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, iteration_completed)
    evaluator.add_event_handler(Events.COMPLETED, completed)
    evaluator.add_event_handler(Events.EXCEPTION_RAISED, restore_mode)
    return evaluator

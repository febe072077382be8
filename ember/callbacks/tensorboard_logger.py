"""TensorBoard logging in one layout for every run: one TensorBoard run per training run, train and
validation side by side, per epoch and per iteration, with throughput, learning rates, gradient norm,
pictures of the evaluation and hparams; `run_name` names a run for the HParams table."""

from __future__ import annotations

import math
import numbers
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ember import distributed as dist
from ember.callbacks._epoch_totals import EpochTotals
from ember.callbacks._output import as_number, batch_size_of, loss_of, step_in_epoch
from ember.callbacks.correct_counter import CorrectCounter
from ember.callbacks.eval_pictures import CONFUSION_MATRIX, MISCLASSIFIED, confusion_matrix_image, misclassified_grid
from ember.callbacks.evaluate import EvalEvents
from ember.engine import Engine, Events, exception_observer
from ember.engine import order as order_levels
from ember.utils import checks

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

TRAIN, VAL = "train", "val"
# TensorBoard's Time Series page opens the first two tag groups (a tag's group is its part before the first
# "/", groups in name order): "epoch" and "iteration" sort first, then "pictures", "val_best" and "weights".
EPOCH, ITERATION, PICTURES, BEST, WEIGHTS = "epoch", "iteration", "pictures", "val_best", "weights"
# Metrics where lower is better, for the `val_best/<name>` curves; for every other one higher is better.
LOWER_IS_BETTER = ("loss", "error", "mse", "mae")


def _hparam_value(value: Any) -> bool | int | float | str:
    """A value TensorBoard's hparams accept: numbers, bools and strings as they are, anything else as its str."""
    if isinstance(value, (bool, int, float, str)):
        return value
    number = as_number(value)
    return float(number) if isinstance(number, numbers.Real) else str(value)


def run_name(run_id: str, recipe: str, flags: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """A short name for a run that tells it from its neighbours in TensorBoard's HParams table: the flags
    that differ from the recipe's defaults, the run's start time and the recipe, e.g.
    `lr=0.05 epochs=4 · 12-07 02:52:48 · fashion-mnist-mlp` for run id `20261207-025248`. The table cuts long
    names at their end, so what tells runs apart comes first; runs with the same name would be merged into
    one row, so the whole run id (its time, and any `-2` suffix) stays in it.

    Args:
        run_id: the run's id (`YYYYMMDD-HHMMSS`, maybe with a suffix; any other id is used as it is).
        recipe: the recipe's name.
        flags: the run's flags as given (before `auto` values are resolved), by argparse name.
        defaults: the recipe's defaults, by the same names; a flag missing here is left out.
    """
    changed = []
    for key, value in flags.items():
        if key not in defaults or value == defaults[key]:
            continue
        flag = key.replace("_", "-")
        changed.append(flag if value is True else f"no-{flag}" if value is False else f"{flag}={value}")
    match = re.fullmatch(r"\d{4}(\d\d)(\d\d)-(\d\d)(\d\d)(\d\d)(.*)", run_id)
    stamp = f"{match[1]}-{match[2]} {match[3]}:{match[4]}:{match[5]}{match[6]}" if match else run_id
    return " · ".join(part for part in (" ".join(changed), stamp, recipe) if part)


def lower_is_better(name: str) -> bool:
    """Whether a metric called `name` improves downwards (losses, errors)."""
    return any(word in name.lower() for word in LOWER_IS_BETTER)


class TensorBoardLogger:
    """Writes a run to TensorBoard in ember's layout (see docs/tensorboard.md): one TensorBoard run, the
    folder `logdir`, whose x axis is the iteration for every chart:

    - `epoch/<name>/train` and `epoch/<name>/val` at the last iteration of each epoch, side by side in the
      `epoch` group: `epoch/loss/*` (train: the mean of the epoch's step losses, summed on the device and
      read once per epoch), `epoch/accuracy/*` (train: from `correct=` a CorrectCounter or a "correct" count
      in the step's output), and one pair for every number in `state.metrics` named `train/<name>` or
      `val/<name>` (Evaluate's prefix); and `epoch/samples_per_s`, `epoch/time_s` (the training part of the
      epoch) and on CUDA `epoch/peak_memory_mib`. In a group of its own, `val_best/<name>`: the best
      validation value so far.
    - every `log_every` iterations: `iteration/loss`, `iteration/grad_norm` (global L2 norm of the
      gradients, computed on the device at those steps only) and `iteration/lr` (`iteration/lr_group{i}`
      with several parameter groups), the rate the iteration used.
    - the pictures `pictures/confusion_matrix` and `pictures/misclassified` when the evaluator has
      EvalPictures attached; `histograms_every` epochs the weights and gradients as histograms
      `weights/<param>` and `weights/<param>/grad`; with `graph=True` the model graph (traced once on the
      first batch).
    - hparams (TensorBoard's HParams plugin, not scalar charts) at COMPLETED, listed under `run_name`, with the
      run's final and best validation values as metrics; `hparams_if(engine)` can veto them for a run that
      will be resumed.

    Values are read from the device only on the iterations that log and once per epoch. A resumed run
    (restored with `load_state_dict` from a checkpoint holding `state_dict()`) continues the same folder:
    events past the checkpoint are purged, and the resumed epoch's time, loss and accuracy cover the whole
    epoch. Only rank 0 writes under torch.distributed. Its order (READ) runs it after Evaluate and before
    Checkpoint whatever order they were attached in, and a Checkpoint on the same engine saves its state with
    every other handler's (docs/order-and-state.md): nothing to pass.

    Args:
        logdir: the run's folder.
        log_every: iterations between per-iteration points (0: none).
        histograms_every: epochs between weight/gradient histograms (0: none; needs the model).
        graph: write the model graph once.
        model: the trained model (default: the trainer's `model` attribute), for gradients, histograms, graph.
        hparams: the run's hyperparameters for the HParams dashboard.
        run_name: the run's name in the HParams table (default: its folder); `run_name()` makes a short one.
        hparams_if: called at COMPLETED; hparams are written only when it returns True (default: always).
        output_transform: picks the loss out of the step's output.
        correct: a CorrectCounter wrapping the trainer's loss function, for the training accuracy.
        class_names: names of the classes, for the pictures.
        flush_secs: how often the event files are flushed.
    """

    ember_order = order_levels.READ

    def __init__(
        self,
        logdir: str | os.PathLike[str],
        *,
        log_every: int = 100,
        histograms_every: int = 0,
        graph: bool = False,
        model: torch.nn.Module | None = None,
        hparams: Mapping[str, Any] | None = None,
        run_name: str | None = None,
        hparams_if: Callable[[Engine], bool] | None = None,
        output_transform: Callable[[Any], Any] | None = None,
        correct: CorrectCounter | None = None,
        class_names: Sequence[str] | None = None,
        flush_secs: int = 30,
    ) -> None:
        checks.non_negative_int("log_every", log_every, "a number of iterations >= 0 (0 = no loss)")
        checks.non_negative_int("histograms_every", histograms_every, "a number of epochs >= 0")
        if histograms_every and model is None:
            raise ValueError("histograms_every > 0 needs the model: pass model=<your nn.Module>")
        self.logdir = os.fspath(logdir)
        self.log_every = log_every
        self.histograms_every = histograms_every
        self.graph = graph
        self.model = model
        self.hparams = {str(k): _hparam_value(v) for k, v in (hparams or {}).items()}
        # not `name`: a handler's `name` is part of its key in checkpoints (docs/order-and-state.md)
        self.run_name = run_name
        self.hparams_if = hparams_if
        self.output_transform = output_transform
        self.correct = correct
        self.class_names = list(class_names) if class_names is not None else None
        self.flush_secs = flush_secs
        self.main = dist.is_main()
        self.writer: SummaryWriter | None = None
        self.final: dict[str, float] = {}
        self.best: dict[str, float] = {}
        self._epoch: EpochTotals | None = None
        self._carried: dict[str, Any] | None = None
        self._lrs: list[Any] = []
        self._evaluations = self._evaluations_logged = 0
        self._graph_done = False
        if self.main:
            _check_writable(self.logdir)

    # ------------------------------------------------------------------ wiring
    def attach(self, engine: Engine) -> None:
        """Register the logging handlers on `engine` (nothing on ranks other than 0)."""
        if not self.main:
            return
        engine.add_event_handler(Events.STARTED, self._open)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        if self.log_every:
            engine.add_event_handler(Events.ITERATION_STARTED(every=self.log_every), self._snapshot_lrs)
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.log_every), self._log_iteration)
        if not engine.has_registered_events(EvalEvents.EVALUATED):
            engine.register_events(EvalEvents.EVALUATED)
        engine.add_event_handler(EvalEvents.EVALUATED, self._count_evaluation)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._log_epoch)
        engine.add_event_handler(Events.TERMINATE, self._flush)
        engine.add_event_handler(Events.COMPLETED, self._on_completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)

    def _model(self, engine: Engine) -> torch.nn.Module | None:
        return dist.unwrap(self.model or getattr(engine, "model", None))

    def _cuda_device(self, engine: Engine) -> torch.device | None:
        """The model's CUDA device, or None when it trains elsewhere (no CUDA context is made for nothing)."""
        model = self._model(engine)
        param = next(model.parameters(), None) if model is not None else None
        return param.device if param is not None and param.device.type == "cuda" else None

    def _open(self, engine: Engine) -> None:
        """Open the writer; on a resumed run, purge what was logged after the checkpoint."""
        from ember.callbacks._tb_writer import SummaryWriter  # imported here: `import ember` stays light

        if self.writer is not None and self.writer.file_writer is not None:
            return
        s = engine.state
        resumed = s.iteration > 0
        if resumed:
            _next_second_if_taken(self.logdir)
        # The writer starts with a session-start marker: TensorBoard takes each one after a run's first as a
        # restart and drops the points from its step on (what a killed run logged after its checkpoint). Every
        # chart's step is the iteration, so one marker covers the epoch charts too.
        self.writer = SummaryWriter(self.logdir, flush_secs=self.flush_secs,
                                    purge_step=s.iteration + 1 if resumed else 0)

    # ------------------------------------------------------------------ per iteration
    def _epoch_started(self, engine: Engine) -> None:
        carried = self._carried if self._carried and self._carried.get("epoch") == engine.state.epoch else None
        self._carried = None
        self._epoch = EpochTotals(engine.state.epoch, carried)
        if self.correct is not None:
            self.correct.take()
        if (cuda := self._cuda_device(engine)) is not None:
            torch.cuda.reset_peak_memory_stats(cuda)

    def _iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        loss = loss_of(output, self.output_transform)
        count = output.get("correct") if isinstance(output, Mapping) and self.correct is None else None
        epoch = self._epoch
        assert epoch is not None
        epoch.add(loss, count, batch_size_of(engine.state.batch) or 0)
        if engine.state.epoch_length and step_in_epoch(engine) == engine.state.epoch_length:
            epoch.end = time.perf_counter()

    def _optimizer_lrs(self, engine: Engine) -> list[Any]:
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is None:
            return []
        return [lr.detach().clone() if isinstance(lr := g["lr"], torch.Tensor) else float(lr)
                for g in optimizer.param_groups]

    def _snapshot_lrs(self, engine: Engine) -> None:
        self._lrs = self._optimizer_lrs(engine)

    def _grad_norm(self, engine: Engine) -> torch.Tensor | None:
        model = self._model(engine)
        grads = [p.grad for p in model.parameters() if p.grad is not None] if model is not None else []
        if not grads:
            return None
        norm = torch.nn.utils.get_total_norm(grads)
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            norm = norm / scaler.get_scale()  # fp16: the gradients are still scaled
        return norm

    def _log_iteration(self, engine: Engine) -> None:
        """Loss, gradient norm and learning rates of this iteration, read from the device in one go."""
        output = engine.state.output
        loss = loss_of(output, self.output_transform)
        norm = self._grad_norm(engine)
        values: list[Any] = [loss, norm if norm is not None else math.nan, *self._lrs]
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        if tensors:
            device = tensors[0].device
            values = torch.stack([torch.as_tensor(v, device=device).double().reshape(()) for v in values]).tolist()
        step, writer = engine.state.iteration, self.writer
        assert writer is not None
        writer.add_scalar(f"{ITERATION}/loss", float(values[0]), step)
        if norm is not None:
            writer.add_scalar(f"{ITERATION}/grad_norm", float(values[1]), step)
        lrs = values[2:]
        for i, lr in enumerate(lrs):
            writer.add_scalar(f"{ITERATION}/lr" if len(lrs) == 1 else f"{ITERATION}/lr_group{i}", float(lr), step)
        if self.graph and not self._graph_done:
            self._write_graph(engine)

    def _write_graph(self, engine: Engine) -> None:
        """Trace the model once on one input of the current batch, in eval mode (no statistics change)."""
        self._graph_done = True
        model, batch = self._model(engine), engine.state.batch
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if model is None or not isinstance(x, torch.Tensor):
            return
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # add_graph traces with torch.jit.trace, TensorBoard's graph format; its deprecation is not the user's
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
                self.writer.add_graph(model, x[:1].to(device))  # type: ignore[union-attr]
        finally:
            model.train(was_training)

    # ------------------------------------------------------------------ per epoch
    def _count_evaluation(self, engine: Engine) -> None:
        self._evaluations += 1

    def _log_epoch(self, engine: Engine) -> None:
        s, epoch, writer = engine.state, self._epoch, self.writer
        assert writer is not None
        step = s.iteration  # the epoch's last iteration: every chart of the run shares one x axis
        if epoch is not None and epoch.epoch == s.epoch and epoch.steps:
            if self.correct is not None and (count := self.correct.take()) is not None:
                epoch.correct = count + epoch.correct
                epoch.counted = epoch.samples
            mean, accuracy = epoch.read()
            seconds = epoch.elapsed()
            writer.add_scalar(f"{EPOCH}/loss/{TRAIN}", mean, step)
            if accuracy is not None:
                writer.add_scalar(f"{EPOCH}/accuracy/{TRAIN}", accuracy, step)
            writer.add_scalar(f"{EPOCH}/time_s", seconds, step)
            writer.add_scalar(f"{EPOCH}/samples_per_s", epoch.samples / seconds if seconds > 0 else 0.0, step)
            if (cuda := self._cuda_device(engine)) is not None:
                writer.add_scalar(f"{EPOCH}/peak_memory_mib", torch.cuda.max_memory_allocated(cuda) / 2**20, step)
        # With Evaluate, validation values are new only after an evaluation (it may run every n epochs).
        fresh = self._evaluations == 0 or self._evaluations > self._evaluations_logged
        self._evaluations_logged = self._evaluations
        for split in (TRAIN, VAL):
            if split == VAL and not fresh:
                continue
            for name, value in s.metrics.items():
                if name.startswith(f"{split}/"):
                    self._log_metric(split, name[len(split) + 1:], value, step)
        if self.histograms_every and s.epoch % self.histograms_every == 0:
            self._log_histograms(engine, step)

    def _log_metric(self, split: str, name: str, value: Any, step: int) -> None:
        writer = self.writer
        assert writer is not None
        suffix = "" if split == VAL else f"/{split}"  # the pictures are the evaluation's
        if name == CONFUSION_MATRIX and isinstance(value, torch.Tensor) and value.ndim == 2:
            writer.add_image(f"{PICTURES}/{name}{suffix}", confusion_matrix_image(value, self.class_names), step,
                             dataformats="HWC")
            return
        if name == MISCLASSIFIED and isinstance(value, Mapping):
            grid = misclassified_grid(value["images"], value["predicted"], value["true"], self.class_names)
            writer.add_image(f"{PICTURES}/{name}{suffix}", grid, step, dataformats="HWC")
            return
        number = as_number(value)
        if not isinstance(number, numbers.Real):
            return
        number = float(number)
        writer.add_scalar(f"{EPOCH}/{name}/{split}", number, step)
        if split == VAL and math.isfinite(number):
            self.final[name] = number
            better = min if lower_is_better(name) else max
            self.best[name] = better(self.best.get(name, number), number)
            writer.add_scalar(f"{BEST}/{name}", self.best[name], step)

    def _log_histograms(self, engine: Engine, step: int) -> None:
        writer, model = self.writer, self._model(engine)
        assert writer is not None and model is not None
        for name, param in model.named_parameters():
            writer.add_histogram(f"{WEIGHTS}/{name}", param.detach(), step)
            if param.grad is not None:
                writer.add_histogram(f"{WEIGHTS}/{name}/grad", param.grad.detach(), step)

    # ------------------------------------------------------------------ end of run
    def _flush(self, engine: Engine) -> None:
        if self.writer is not None:
            self.writer.flush()

    def _on_completed(self, engine: Engine) -> None:
        if self.hparams and self.writer is not None and (self.hparams_if is None or self.hparams_if(engine)):
            self.write_hparams()
        self.close()

    def write_hparams(self) -> None:
        """Write the hparams into the run, so that its values (final and best validation) are the HParams
        metrics, listed under `run_name` when one was given.

        No experiment summary is written: TensorBoard then lists the union of every run's hparams (runs
        of different recipes have different flags) and, as metrics, the scalars of the session's run.
        """
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        _, start, end = hparams_summaries(dict(self.hparams), {})
        if self.run_name:  # the HParams table lists a session under its group name (else under its run's folder)
            plugin_data = start.value[0].metadata.plugin_data
            data = HParamsPluginData.FromString(plugin_data.content)
            data.session_start_info.group_name = self.run_name
            plugin_data.content = data.SerializeToString()
        assert self.writer is not None
        file_writer = self.writer._get_file_writer()  # reopens the event file if the run closed it
        file_writer.add_summary(start)
        file_writer.add_summary(end)

    @exception_observer
    def _on_exception(self, engine: Engine, exc: BaseException) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the event file; a later run reopens it (SummaryWriter does so on its next write)."""
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The epoch in progress (elapsed seconds, samples, loss and correct sums) and the best validation
        values, for checkpoints: a resumed epoch adds to them, so its figures cover the whole epoch."""
        state: dict[str, Any] = {"best": dict(self.best), "final": dict(self.final)}
        epoch = self._epoch
        if epoch is not None and epoch.end is None:
            correct = epoch.correct
            if self.correct is not None and self.correct.count is not None:
                correct = self.correct.count + correct
                counted = epoch.samples
            else:
                counted = epoch.counted
            loss_sum = float(epoch.loss_sum)
            state["epoch"] = {"epoch": epoch.epoch, "elapsed_s": epoch.elapsed(), "samples": epoch.samples,
                              "steps": epoch.steps, "loss_sum": loss_sum, "correct": int(correct),
                              "counted": counted}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` saved; the epoch in progress is carried into the same epoch when it resumes."""
        self.best = {str(k): float(v) for k, v in state.get("best", {}).items()}
        self.final = {str(k): float(v) for k, v in state.get("final", {}).items()}
        self._carried = dict(state["epoch"]) if state.get("epoch") else None


def _next_second_if_taken(logdir: str) -> None:
    """Wait for the next second when an event file of this second exists: TensorBoard reads a folder's files
    in name order, and the name holds whole seconds, then a per-process counter (".10" sorts before ".9")."""
    now = int(time.time())
    names = os.listdir(logdir) if os.path.isdir(logdir) else []
    if any(name.startswith(f"events.out.tfevents.{now}.") for name in names):
        time.sleep(now + 1 - time.time())


def _check_writable(logdir: str) -> None:
    """Create `logdir` and prove it can be written now, so a bad folder is reported before training starts."""
    os.makedirs(logdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=logdir):
        pass

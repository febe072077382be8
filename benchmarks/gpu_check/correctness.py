"""The correctness parts: the CUDA-only tests, no syncs on quiet iterations, CUDA graph = eager, NCCL DDP."""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
import traceback
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_check.parts import NO_CUDA, Context, call_main

REPO = Path(__file__).resolve().parents[2]
CUDA_REASON = "needs a CUDA device"


# --- the tests that skip without CUDA ---------------------------------------------------------------------


def cuda_test_files(root: Path = REPO / "tests") -> list[Path]:
    """The test files that mention the CUDA skip reason (pytest then keeps only the tests that carry it)."""
    return sorted(p for p in root.rglob("test_*.py") if CUDA_REASON in p.read_text())


class CudaTestsOnly:
    """pytest plugin: keep the tests skipped with "needs a CUDA device" when CUDA is absent; record outcomes."""

    def __init__(self) -> None:
        self.outcomes: dict[str, dict[str, Any]] = {}

    def pytest_collection_modifyitems(self, config: Any, items: list) -> None:
        keep = [i for i in items
                if any(CUDA_REASON in str(m.kwargs.get("reason", "")) for m in i.iter_markers("skipif"))]
        dropped = [i for i in items if i not in keep]
        items[:] = keep
        config.hook.pytest_deselected(items=dropped)

    def pytest_runtest_logreport(self, report: Any) -> None:
        entry = self.outcomes.setdefault(report.nodeid, {"outcome": "passed", "seconds": 0.0})
        entry["seconds"] = round(entry["seconds"] + report.duration, 3)
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            entry["outcome"] = f"skipped: {reason.removeprefix('Skipped: ')}"
        elif report.failed:
            entry["outcome"] = "failed" if report.when == "call" else f"error in {report.when}"
            entry["detail"] = str(report.longrepr)[-1500:]


def cuda_tests(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    """Run every test that skips on a machine without CUDA, with pytest, in this process."""
    import pytest

    files = cuda_test_files()
    plugin = CudaTestsOnly()
    args = [str(f) for f in files] + ["-q", "-p", "no:cacheprovider", "-rfEs"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        args += ["--timeout", "60"]
    code = pytest.main(args, plugins=[plugin])
    outcomes = plugin.outcomes
    data = {"files": [str(f.relative_to(REPO)) for f in files], "exit_code": int(code), "tests": outcomes}
    lines = ["| test | outcome | seconds |", "|---|---|---:|"]
    lines += [f"| `{nodeid}` | {o['outcome']} | {o['seconds']:.2f} |" for nodeid, o in outcomes.items()]
    markdown = f"pytest over {len(files)} file(s), keeping the tests marked `{CUDA_REASON}`:\n\n" + "\n".join(lines)
    counts = Counter(o["outcome"].split(":")[0] for o in outcomes.values())
    if not outcomes:
        return f"failed: no test is marked '{CUDA_REASON}' (pytest exit status {int(code)})", markdown, data
    if counts["failed"] or any(k.startswith("error") for k in counts):
        return f"failed: {counts['failed']} failed, {counts['passed']} passed", markdown, data
    if ctx.dry:
        return NO_CUDA, markdown, data
    if counts["skipped"]:
        return f"failed: {counts['skipped']} skipped on a CUDA machine", markdown, data
    return f"passed: {counts['passed']} tests", markdown, data


# --- no host-device sync on iterations where nothing is output -------------------------------------------


class SyncProbe:
    """Watches iterations 1..`watch` of a trainer: the host-device syncs of each (under the sync debug mode)
    and whether it output anything (stdout, stderr, a TensorBoard event).

    What runs between iteration i-1's end and iteration i's end (fetching its batch, its step, its handlers)
    counts for iteration i. The probe's handlers run first at ITERATION_STARTED and last at
    ITERATION_COMPLETED. The debug mode is "warn" rather than "error" so that every offending call is
    recorded with its stack instead of the run stopping at the first; a sync on a quiet iteration fails
    the check all the same.
    """

    def __init__(self, watch: int, cuda: bool) -> None:
        self.watch, self.cuda = watch, cuda
        self.current: int | None = None  # the iteration a sync or an output now counts for
        self.syncs: dict[int, list[list[str]]] = defaultdict(list)
        self.output: set[int] = set()

    def attach(self, engine: Any) -> None:
        from ember.engine import Events

        def started(e: Any) -> None:
            if e.state.iteration == 1:
                self._mode("warn")
            self.current = e.state.iteration if e.state.iteration <= self.watch else None

        def completed(e: Any) -> None:
            if e.state.iteration >= self.watch:
                self._mode(0)
                self.current = None
            else:
                self.current = e.state.iteration + 1

        started.ember_order = -10**9  # type: ignore[attr-defined]
        completed.ember_order = 10**9  # type: ignore[attr-defined]
        engine.add_event_handler(Events.ITERATION_STARTED, started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, completed)

    def _mode(self, mode: str | int) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode(mode)

    def wrote(self) -> None:
        if self.current is not None:
            self.output.add(self.current)

    def synced(self) -> None:
        if self.current is not None:
            frames = traceback.extract_stack()[:-2]  # without this method and the warning hook
            while frames and Path(frames[-1].filename).name == "warnings.py":
                frames.pop()  # the warnings module's own frames: the caller is the frame before them
            ours = [f for f in frames if "/ember/" in f.filename
                    or ("/benchmarks/" in f.filename and "gpu_check" not in f.filename)]
            shown = (ours or frames)[-4:] + ([frames[-1]] if ours and frames[-1] is not ours[-1] else [])
            self.syncs[self.current].append([f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in shown])


class _Tee:
    """A text stream that tells the probe when something is written, then writes it on."""

    def __init__(self, stream: Any, probe: SyncProbe) -> None:
        self.stream, self.probe = stream, probe

    def write(self, text: str) -> int:
        if text.strip():
            self.probe.wrote()
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def watching(probe: SyncProbe) -> Iterator[None]:
    """Route stdout, stderr, TensorBoard events and sync warnings through the probe; attach it to trainers
    that the recipes build."""
    from torch.utils.tensorboard.writer import FileWriter

    from ember.recipes.common import RunContext

    make_trainer, add_event = RunContext.trainer, FileWriter.add_event

    def trainer(self: Any, *args: Any, **kwargs: Any) -> Any:
        engine = make_trainer(self, *args, **kwargs)
        probe.attach(engine)
        return engine

    def event(self: Any, *args: Any, **kwargs: Any) -> Any:
        probe.wrote()
        return add_event(self, *args, **kwargs)

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if "synchroniz" in str(message) and probe.current is not None:
            probe.synced()
        else:
            shown(message, category, filename, lineno, file, line)

    out, err = sys.stdout, sys.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        shown = warnings.showwarning
        warnings.showwarning = show
        RunContext.trainer, FileWriter.add_event = trainer, event  # type: ignore[method-assign]
        sys.stdout, sys.stderr = _Tee(out, probe), _Tee(err, probe)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = out, err
            RunContext.trainer, FileWriter.add_event = make_trainer, add_event  # type: ignore[method-assign]
            if probe.cuda:
                torch.cuda.set_sync_debug_mode(0)


def sync_free(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    """fashion-mnist-mlp and -cnn with their default handlers (TensorBoard included), iterations 1..N watched
    under torch.cuda.set_sync_debug_mode: a sync on an iteration that output nothing fails the part."""
    from ember.recipes.cli import main as ember_cli

    n = ctx.sizes.sync_iterations
    results: dict[str, Any] = {}
    bad: list[str] = []
    lines = [f"Iterations 1..{n} of each recipe watched (`--max-iterations {n + 1}`, default handlers and "
             "TensorBoard); an iteration that printed or logged may sync, a quiet one may not.", "",
             "| recipe | exit | iterations with output | syncs on them | syncs on quiet iterations |",
             "|---|---:|---|---:|---:|"]
    for recipe in ("fashion-mnist-mlp", "fashion-mnist-cnn"):
        probe = SyncProbe(n, cuda=not ctx.dry)
        argv = ["train", recipe, "--device", ctx.device, "--max-iterations", str(n + 1),
                "--checkpoint-dir", str(ctx.scratch / f"ckpt-{recipe}"), "--logdir", str(ctx.scratch / f"tb-{recipe}")]
        with watching(probe):
            code = call_main(ember_cli, argv)
        quiet = {i: len(s) for i, s in probe.syncs.items() if i not in probe.output}
        loud = sum(len(s) for i, s in probe.syncs.items() if i in probe.output)
        results[recipe] = {"exit_code": code, "output_iterations": sorted(probe.output),
                           "syncs_on_output_iterations": loud, "syncs_on_quiet_iterations": quiet,
                           "first_quiet_syncs": [s for i in sorted(quiet) for s in probe.syncs[i]][:5]}
        lines.append(f"| {recipe} | {code} | {sorted(probe.output) or 'none'} | {loud} | "
                     f"{sum(quiet.values())}{' on ' + str(sorted(quiet)[:10]) if quiet else ''} |")
        if code != 0:
            bad.append(f"{recipe} exited with {code}")
        elif quiet:
            bad.append(f"{recipe} synced on {len(quiet)} quiet iteration(s)")
        ctx.save("running", "\n".join(lines), recipes=results)
    for recipe, res in results.items():
        for stack in res["first_quiet_syncs"]:
            lines += ["", f"{recipe}, a sync on a quiet iteration: " + " ← ".join(reversed(stack))]
    if bad:
        return "failed: " + "; ".join(bad), "\n".join(lines), {"recipes": results}
    if ctx.dry:
        lines += ["", "Dry run: the recipes ran with the probe on the CPU; the sync debug mode needs CUDA."]
        return NO_CUDA, "\n".join(lines), {"recipes": results}
    return "passed", "\n".join(lines), {"recipes": results}


# --- a CUDA-graph step and an eager step agree ---------------------------------------------------------------


def _train_losses(recipe: str, device: str, iterations: int, cuda_graph: bool) -> tuple[torch.Tensor, list]:
    """Per-iteration losses and final parameters of `iterations` steps of a recipe's model, optimizer and
    data (first batches, unshuffled), from the same initial weights."""
    from torch import nn

    from ember.data import load_dataset, make_loader
    from ember.engine import Events
    from ember.recipes import RECIPES
    from ember.recipes.fashion_mnist_cnn import Network
    from ember.recipes.fashion_mnist_mlp import NeuralNetwork
    from ember.steps import create_trainer

    spec = RECIPES[recipe]
    loader = make_loader(load_dataset("fashion-mnist", True, download=False), spec.batch_size, drop_last=True,
                         device=device)
    torch.manual_seed(0)
    model = (NeuralNetwork() if recipe == "fashion-mnist-mlp" else Network()).to(device)
    # Adam's capturable form in both runs (a captured step needs it), so that only the graph differs
    optimizer = (torch.optim.SGD(model.parameters(), lr=spec.lr) if recipe == "fashion-mnist-mlp"
                 else torch.optim.Adam(model.parameters(), lr=spec.lr, capturable=device == "cuda"))
    trainer = create_trainer(model, optimizer, nn.functional.cross_entropy, device, cuda_graph=cuda_graph)
    losses: list[torch.Tensor] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output.detach().clone()))
    trainer.run(loader, max_epochs=1, epoch_length=min(iterations, len(loader)))
    return torch.stack(losses).float().cpu(), [p.detach().float().cpu() for p in model.parameters()]


def graph_vs_eager(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    """fashion-mnist-mlp (SGD) and -cnn (Adam): N iterations as one CUDA graph and eagerly, compared (cuDNN
    deterministic, so that only the graph differs)."""
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    n, rtol, atol = ctx.sizes.graph_iterations, 1e-3, 1e-4
    results: dict[str, Any] = {}
    lines = [f"{n} iterations from the same weights and batches, `cuda_graph=True` vs eager; tolerance "
             f"rtol {rtol}, atol {atol}.", "", "| recipe | iterations | max loss difference | max parameter "
             "difference | agree |", "|---|---:|---:|---:|---|"]
    for recipe in ("fashion-mnist-mlp", "fashion-mnist-cnn"):
        eager_losses, eager_params = _train_losses(recipe, ctx.device, n, cuda_graph=False)
        graph_losses, graph_params = _train_losses(recipe, ctx.device, n, cuda_graph=not ctx.dry)
        loss_diff = float((graph_losses - eager_losses).abs().max())
        param_diff = max(float((g - e).abs().max()) for g, e in zip(graph_params, eager_params))
        agree = torch.allclose(graph_losses, eager_losses, rtol, atol) and all(
            torch.allclose(g, e, rtol, atol) for g, e in zip(graph_params, eager_params))
        results[recipe] = {"iterations": len(eager_losses), "max_loss_diff": loss_diff,
                           "max_param_diff": param_diff, "agree": agree,
                           "final_loss_eager": float(eager_losses[-1]), "final_loss_graph": float(graph_losses[-1])}
        lines.append(f"| {recipe} | {len(eager_losses)} | {loss_diff:.3g} | {param_diff:.3g} | "
                     f"{'yes' if agree else '**no**'} |")
        ctx.save("running", "\n".join(lines), recipes=results)
    data = {"recipes": results, "rtol": rtol, "atol": atol}
    if not all(r["agree"] for r in results.values()):
        return "failed: the CUDA-graph and eager runs differ", "\n".join(lines), data
    if ctx.dry:
        lines += ["", "Dry run: two eager runs on the CPU compared (a CUDA graph needs CUDA)."]
        return NO_CUDA, "\n".join(lines), data
    return "passed", "\n".join(lines), data


# --- two processes over NCCL --------------------------------------------------------------------------------------


def ddp_nccl(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    """`torchrun --nproc-per-node 2 -m ember train fashion-mnist-mlp --device cuda` for a few iterations."""
    if ctx.dry:
        return NO_CUDA, "", {}
    gpus = torch.cuda.device_count()
    if gpus < 2:
        return f"skipped: this machine has {gpus} GPU; two-process NCCL DDP needs 2", "", {"gpu_count": gpus}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ember",
           "train", "fashion-mnist-mlp", "--device", "cuda", "--max-iterations", str(ctx.sizes.ddp_iterations),
           "--no-tensorboard", "--checkpoint-dir", str(ctx.scratch / "ckpt")]
    run = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        text, _ = run.communicate(timeout=ctx.part.timeout_s - 15)
    except subprocess.TimeoutExpired:
        run.terminate()  # torchrun passes SIGTERM on to its ranks, which may sit in their own sessions
        try:
            text, _ = run.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            run.kill()
            text, _ = run.communicate()
    print(text)
    ok = run.returncode == 0 and "Distributed: 2 processes" in text
    saved = sorted(p.name for p in (ctx.scratch / "ckpt").glob("*.pt"))
    data = {"command": " ".join(cmd[1:]), "exit_code": run.returncode, "checkpoints": saved,
            "output_tail": text[-2000:]}
    markdown = f"`{' '.join(cmd[1:])}`: exit status {run.returncode}; checkpoints {saved or 'none'}."
    return ("passed" if ok and saved else f"failed: exit status {run.returncode}"), markdown, data

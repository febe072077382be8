"""Data-parallel training through torchrun (torch.distributed, gloo on CPU) and the ember.distributed helpers.

The module fixture runs tests/distributed/programs/train_mlp.py four times, two at a time:
  two   - torchrun, 2 processes, batch 8 each; checkpoint after epoch 2 of 3
  one   - 1 process, batch 16 (the same global batch); checkpoint after epoch 2 of 3
  two_to_one - 1 process, batch 16, resumed from two's checkpoint
  one_to_two - torchrun, 2 processes, batch 8 each, resumed from one's checkpoint
  two_to_two - torchrun, 2 processes, batch 8 each, resumed from two's checkpoint
  nan   - torchrun, 2 processes, batch 8 each, rank 1's loss is NaN at iteration 3
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
from torch import nn

from ember import distributed as dist

PROGRAM = Path(__file__).parent / "programs" / "train_mlp.py"
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 150
EPOCHS, ITERATIONS_PER_EPOCH = 3, 96 // 16  # train_mlp.py: 96 samples, global batch 16
TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


@dataclass
class Run:
    """One launch of the program: its command, exit status, output and (if written) result.json."""

    name: str
    out: Path
    cmd: list[str]
    returncode: int | None = None
    output: str = ""
    result: dict = field(default_factory=dict)

    def check(self) -> dict:
        """The result, after asserting the run exited 0 and wrote it (the message shows the output)."""
        assert self.returncode == 0, f"{self.name} run failed (exit {self.returncode}):\n{self.describe()}"
        assert self.result, f"{self.name} run wrote no result.json:\n{self.describe()}"
        return self.result

    def describe(self) -> str:
        return f"$ {' '.join(self.cmd)}\n{self.output[-6000:]}"

    def weights(self, rank: int = 0) -> torch.Tensor:
        return torch.tensor(self.check()["ranks"][rank]["weights"], dtype=torch.float64)


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    """Weights equal up to float rounding (summation order differs between 1 and 2 processes)."""
    diff = (a - b).abs().max().item()
    assert diff <= atol, f"weights differ by up to {diff:.3g} (> {atol})"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _planned(tmp: Path, name: str, nproc: int, batch_size: int, *extra: str) -> Run:
    """A run of the program in nproc processes (through torchrun when more than one) writing to tmp/name."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    args = ["--out", str(tmp / name), "--batch-size", str(batch_size), "--epochs", str(EPOCHS), *extra]
    return Run(name, tmp / name, [*launcher, str(PROGRAM), *args])


def _launch_together(runs: list[Run]) -> None:
    """Start the runs at once, wait for all, and record exit status, output and result of each."""
    procs = []
    for run in runs:
        run.out.mkdir(parents=True)
        procs.append(subprocess.Popen(run.cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True))
    for run, proc in zip(runs, procs):
        try:
            run.output, _ = proc.communicate(timeout=TIMEOUT_S)
            run.returncode = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher's own session: torchrun and its workers
            run.output = (proc.communicate()[0] or "") + f"\n[killed after {TIMEOUT_S} s: hung?]"
            run.returncode = -signal.SIGKILL
        result = run.out / "result.json"
        if result.exists():
            run.result = json.loads(result.read_text())


def _gloo_unavailable() -> str | None:
    """Why this platform cannot run a one-process gloo group, or None if it can."""
    probe = textwrap.dedent("""
        import os, tempfile, torch, torch.distributed as d
        path = os.path.join(tempfile.mkdtemp(), "store")
        d.init_process_group("gloo", init_method="file://" + path, rank=0, world_size=1)
        d.all_reduce(torch.ones(1))
        d.destroy_process_group()
    """)
    cmd = [sys.executable, "-c", probe]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=60)
    return None if done.returncode == 0 else (done.stdout + done.stderr)[-2000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    tmp = tmp_path_factory.mktemp("ddp")
    two = _planned(tmp, "two", 2, 8, "--save-after", "2")
    one = _planned(tmp, "one", 1, 16, "--save-after", "2")
    _launch_together([two, one])
    if two.returncode != 0:
        reason = _gloo_unavailable()
        if reason is not None:
            pytest.skip(f"this platform cannot start a torch.distributed gloo process group:\n{reason}")
    two_to_one = _planned(tmp, "two_to_one", 1, 16, "--resume", str(two.out / "ckpt"))
    one_to_two = _planned(tmp, "one_to_two", 2, 8, "--resume", str(one.out / "ckpt"))
    two_to_two = _planned(tmp, "two_to_two", 2, 8, "--resume", str(two.out / "ckpt"))
    nan = _planned(tmp, "nan", 2, 8, "--nan-at", "3", "--nan-rank", "1")
    _launch_together([two_to_one, one_to_two, two_to_two, nan])
    return {r.name: r for r in (two, one, two_to_one, one_to_two, two_to_two, nan)}


def test_two_processes_finish_and_only_rank0_writes(runs: dict[str, Run]) -> None:
    two = runs["two"]
    result = two.check()
    assert result["world_size"] == 2
    written = sorted(str(p.relative_to(two.out)) for p in two.out.rglob("*"))
    assert written == ["ckpt", "ckpt/checkpoint_000000012.pt", "rank0.txt", "result.json"], two.describe()
    assert "stdout of rank 0" in two.output and "stdout of rank 1" not in two.output, two.describe()
    for report in result["ranks"]:
        assert report["all_reduce_sum"] == 1 + 2
        assert report["broadcast"] == "from rank 0"


def test_ranks_end_with_identical_weights(runs: dict[str, Run]) -> None:
    two = runs["two"]
    assert torch.equal(two.weights(0), two.weights(1)), "DDP ranks diverged (each started from its own seed)"


def test_engine_sets_the_sampler_epoch_and_shards(runs: dict[str, Run]) -> None:
    result = runs["two"].check()
    assert result["iteration"] == result["iterations_run"] == EPOCHS * ITERATIONS_PER_EPOCH
    assert [r["sampler_epoch"] for r in result["ranks"]] == [EPOCHS - 1, EPOCHS - 1]


def test_ignite_metrics_sum_counts_over_ranks(runs: dict[str, Run]) -> None:
    result = runs["two"].check()
    shard_accuracies = [r["shard_accuracy"] for r in result["ranks"]]  # 30 and 20 samples
    mean_of_means = sum(shard_accuracies) / 2
    whole = result["whole_set_accuracy"]
    assert mean_of_means != pytest.approx(whole), "shards too alike to tell a sum from a mean of means"
    for report in result["ranks"]:
        assert report["accuracy"] == pytest.approx(result["whole_set_accuracy"], abs=1e-12)
        assert report["loss"] == pytest.approx(result["whole_set_loss"], rel=1e-5)


def test_two_processes_equal_one_process_with_the_global_batch(runs: dict[str, Run]) -> None:
    two, one = runs["two"], runs["one"]
    assert one.check()["world_size"] == 1
    assert_close(two.weights(), one.weights())
    assert two.check()["ranks"][0]["accuracy"] == one.check()["ranks"][0]["accuracy"]
    # LossPrinter counts the samples of all ranks: [current/size] as with one process and the global batch
    progress = {run.name: re.findall(r"^loss: .*(\[.*\])$", run.output, re.M) for run in (two, one)}
    assert progress["two"] == progress["one"] == ["[    0/   96]", "[   32/   96]", "[   64/   96]"] * EPOCHS


def test_each_rank_resumes_its_own_random_stream(runs: dict[str, Run]) -> None:
    """The ranks were seeded differently; after a resume each must draw what it drew in the straight run."""
    straight, resumed = runs["two"].check(), runs["two_to_two"].check()
    draws = [report["draw_after_training"] for report in straight["ranks"]]
    assert draws[0] != draws[1]
    assert [report["draw_after_training"] for report in resumed["ranks"]] == draws
    assert_close(runs["two_to_two"].weights(), runs["two"].weights(), atol=0)


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_iteration(runs: dict[str, Run]) -> None:
    """Rank 0's own loss at iteration 3 is finite; were it to go on alone, its next DDP all-reduce would hang."""
    nan = runs["nan"]
    result = nan.check()
    assert result["iteration"] == 3
    for report in result["ranks"]:
        assert report["iteration"] == 3 and report["terminated_on_nan"] == [1, 3], nan.describe()
    assert "non-finite loss on another rank at epoch 1, iteration 3" in nan.output, nan.describe()  # rank 0


def test_checkpoint_from_two_processes_resumes_in_one(runs: dict[str, Run]) -> None:
    resumed = runs["two_to_one"]
    result = resumed.check()
    assert result["iterations_run"] == ITERATIONS_PER_EPOCH, "did not resume after epoch 2"
    assert result["iteration"] == EPOCHS * ITERATIONS_PER_EPOCH
    assert_close(resumed.weights(), runs["two"].weights())


def test_checkpoint_from_one_process_resumes_in_two(runs: dict[str, Run]) -> None:
    resumed = runs["one_to_two"]
    result = resumed.check()
    assert result["world_size"] == 2
    assert result["iterations_run"] == ITERATIONS_PER_EPOCH, "did not resume after epoch 2"
    assert torch.equal(resumed.weights(0), resumed.weights(1))
    assert_close(resumed.weights(), runs["one"].weights())


class _Compiled(nn.Module):
    """Stands in for torch.compile's OptimizedModule, which keeps the original module as `_orig_mod`."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner


def test_single_process_helpers_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    assert dist.init() is False and not dist.is_enabled()
    assert (dist.rank(), dist.local_rank(), dist.world_size(), dist.is_main()) == (0, 0, 1, True)
    dist.barrier()
    t = torch.arange(3.0)
    assert dist.all_reduce_sum(t) is t and dist.all_reduce_sum(5) == 5
    obj = {"a": 1}
    assert dist.broadcast_object(obj) is obj
    model = nn.Linear(2, 2)
    assert dist.wrap_model(model, "cpu") is model
    assert dist.unwrap(_Compiled(model)) is model and dist.unwrap(model) is model
    assert dist.main_only(lambda x: x + 1)(1) == 2
    dist.cleanup()


def _gloo_worker_threads() -> int:
    """How many of this process's threads are gloo's collective workers (Linux names them pt_gloo_runloop)."""
    tasks = Path("/proc/self/task")
    return sum((t / "comm").read_text().strip() == "pt_gloo_runloop" for t in tasks.iterdir())


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc to see the process's threads")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_cleanup_ends_the_groups_worker_threads_while_python_runs(tmp_path: Path, strategy: str) -> None:
    """A gloo worker left to interpreter shutdown aborts some exits (SIGABRT): cleanup() must end the workers of
    every group, even those that live objects still hold: the DDP wrapper, FSDP2's modules and DTensors (through
    their DeviceMesh and mesh infos), a mesh the user made, the background group of sharded saves."""
    from torch.distributed.device_mesh import init_device_mesh

    torch_dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model = dist.wrap_model(net, "cpu", strategy=strategy)
    user_mesh = init_device_mesh("cpu", (1, 1), mesh_dim_names=("a", "b"))
    model(torch.ones(3, 2)).sum().backward()
    dist.gather_object({"rank": dist.rank()})
    torch_dist.broadcast_object_list([1], group=dist.background_group())
    torch_dist.barrier(group=user_mesh.get_group("b"))
    dist.barrier()
    assert _gloo_worker_threads() > 0
    dist.cleanup()
    assert not dist.is_enabled()
    assert _gloo_worker_threads() == 0
    if strategy == "ddp":
        assert dist.unwrap(model) is net and net(torch.ones(1, 2)).shape == (1, 2)
    assert len(model.state_dict()) == 4  # an FSDP2 model still holds its shards


def test_world_size_without_torchrun_variables_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match=r"LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not.*torchrun"):
        dist.init()
    assert not dist.is_enabled()

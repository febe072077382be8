"""FSDP2 and sharded checkpoints across processes (gloo on the CPU), through programs/train_sharded.py.

Marked `multiprocess_long` (about 20 launches of 1 to 4 processes): `make test` leaves them out, `make test-long`
(run by .ci/run after `make test`) runs them. The module fixture launches, in waves:
  ddp, fsdp       2 processes x batch 8, 3 epochs, straight through (DDP / FSDP2)
  cut, one_cut    FSDP2 stopped after iteration 7 (checkpoint there), in 2 processes and in 1 (batch 16)
  resumed         2 processes continuing `cut`
  two_to_one      1 process (batch 16: the same global batch) continuing a copy of `cut`
  two_to_four     4 processes (batch 4) loading `cut` only;  one_to_two: 2 processes loading `one_cut` only
  killed_save     rank 1 SIGKILLed while committing the save of iteration 8; then `after_kill` resumes it
  elastic         torchrun --max-restarts=1, rank 1 SIGKILLed after iteration 9 on the first start, no folder given
  slurm           2 processes started as srun would (SLURM_* variables, no torchrun); SIGUSR1 to rank 1
  two_nodes       2 torchrun "nodes" (--nnodes=2 --nproc-per-node=1, c10d rendezvous) sharing one checkpoint folder
  bf16            FSDP2 with bf16 mixed precision (float32 reductions and weights)
  async_cut       `cut` with background saves, each write starting 0.3 s late (training goes on meanwhile);
                  then `async_resumed` continues a copy of it
  async_killed    background saves (writes 0.5 s late), rank 1 SIGKILLed in the write of iteration 8's save;
                  then `async_after_kill` resumes it
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

PROGRAM = Path(__file__).parent / "programs" / "train_sharded.py"
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240
TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE",
                 "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_RUN_ID")

pytestmark = pytest.mark.multiprocess_long


@dataclass
class Run:
    name: str
    out: Path
    cmds: list[list[str]]
    envs: list[dict[str, str]] = field(default_factory=list)
    cwd: Path = REPO
    returncodes: list[int] = field(default_factory=list)
    output: str = ""
    result: dict = field(default_factory=dict)

    def check(self, status: int = 0) -> dict:
        assert self.returncodes and all(rc == status for rc in self.returncodes), \
            f"{self.name}: exit {self.returncodes}, expected {status}:\n{self.output[-6000:]}"
        assert self.result, f"{self.name} wrote no result.json:\n{self.output[-6000:]}"
        return self.result

    def state(self, status: int = 0) -> dict[str, torch.Tensor]:
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in self.check(status)["state"].items()}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *flags: str) -> list[str]:
    if nproc == 1 and not flags:
        return [sys.executable, str(PROGRAM)]
    base = [sys.executable, "-m", "torch.distributed.run"]
    base += list(flags) if flags else ["--standalone"]
    return [*base, f"--nproc-per-node={nproc}", str(PROGRAM)]


def planned(tmp: Path, name: str, nproc: int, batch: int, *args: str, launcher: list[str] | None = None,
            ckpt: Path | None | bool = True) -> Run:
    out = tmp / name
    folder = [] if ckpt is None else ["--ckpt", str(out / "ckpt" if ckpt is True else ckpt)]
    cmd = [*(launcher or torchrun(nproc)), "--out", str(out), "--batch-size", str(batch), *folder, *args]
    return Run(name, out, [cmd], [_env()])


def launch(runs: list[Run]) -> None:
    """Start every process of every run at once, wait for all (bounded), record exit statuses and results."""
    procs = []
    for run in runs:
        run.out.mkdir(parents=True, exist_ok=True)
        for cmd, env in zip(run.cmds, run.envs):
            procs.append((run, subprocess.Popen(cmd, env=env, cwd=run.cwd, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True, start_new_session=True)))
    for run, proc in procs:
        try:
            text, _ = proc.communicate(timeout=TIMEOUT_S)
            run.returncodes.append(proc.returncode)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            text = (proc.communicate()[0] or "") + f"\n[killed after {TIMEOUT_S} s: hung?]"
            run.returncodes.append(-signal.SIGKILL)
        run.output += f"$ {' '.join(proc.args)}\n{text}\n"
    for run in runs:
        if (run.out / "result.json").exists():
            run.result = json.loads((run.out / "result.json").read_text())


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    tmp = tmp_path_factory.mktemp("sharded")
    ddp = planned(tmp, "ddp", 2, 8, "--strategy", "ddp")
    fsdp = planned(tmp, "fsdp", 2, 8)
    cut = planned(tmp, "cut", 2, 8, "--max-iterations", "7")
    one_cut = planned(tmp, "one_cut", 1, 16, "--max-iterations", "7")
    async_cut = planned(tmp, "async_cut", 2, 8, "--max-iterations", "7", "--async-save", "--write-delay", "0.3")
    launch([ddp, fsdp, cut, one_cut, async_cut])
    cut.check()
    one_cut.check()
    async_cut.check()
    async_resumed = planned(tmp, "async_resumed", 2, 8, "--resume", "--async-save",
                            ckpt=copy_run(async_cut.out / "ckpt", tmp / "ck_async"))
    resumed = planned(tmp, "resumed", 2, 8, "--resume", ckpt=copy_run(cut.out / "ckpt", tmp / "ck_resumed"))
    two_to_one = planned(tmp, "two_to_one", 1, 16, "--resume", ckpt=copy_run(cut.out / "ckpt", tmp / "ck_2to1"))
    two_to_four = planned(tmp, "two_to_four", 4, 4, "--inspect", ckpt=cut.out / "ckpt")
    one_to_two = planned(tmp, "one_to_two", 2, 8, "--inspect", ckpt=one_cut.out / "ckpt")
    launch([resumed, two_to_one, two_to_four, one_to_two, async_resumed])
    killed = planned(tmp, "killed_save", 2, 8, "--kill-in-commit", "8")
    elastic = planned(tmp, "elastic", 2, 8, "--kill-at", "9", ckpt=None,
                      launcher=torchrun(2, "--standalone", "--max-restarts=1"))
    elastic.cwd = elastic.out
    port = free_port()
    slurm = planned(tmp, "slurm", 1, 8, "--epochs", "8", "--checkpoint-every", "100", "--signal-at", "5",
                    launcher=[sys.executable, str(PROGRAM)])
    slurm.cmds = slurm.cmds * 2
    slurm.envs = [_env(SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r), SLURM_JOB_NODELIST="localhost",
                       SLURM_TASKS_PER_NODE="2", MASTER_PORT=str(port)) for r in range(2)]
    bf16 = planned(tmp, "bf16", 2, 8, "--bf16")
    async_killed = planned(tmp, "async_killed", 2, 8, "--async-save", "--write-delay", "0.5", "--kill-in-write", "8")
    launch([killed, elastic, slurm, bf16, async_killed])
    after_kill = planned(tmp, "after_kill", 2, 8, "--resume", ckpt=killed.out / "ckpt")
    async_after_kill = planned(tmp, "async_after_kill", 2, 8, "--resume", "--async-save",
                               ckpt=async_killed.out / "ckpt")
    port = free_port()
    node = ["--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-nodes"]
    two_nodes = planned(tmp, "two_nodes", 1, 8, launcher=torchrun(1, *node))
    two_nodes.cmds = two_nodes.cmds * 2
    two_nodes.envs = two_nodes.envs * 2
    launch([after_kill, two_nodes, async_after_kill])
    return {r.name: r for r in (ddp, fsdp, cut, one_cut, resumed, two_to_one, two_to_four, one_to_two, killed,
                                after_kill, elastic, slurm, two_nodes, bf16, async_cut, async_resumed, async_killed,
                                async_after_kill)}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert sorted(a) == sorted(b)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"states differ by up to {worst:.3g} (> {atol})"


def test_fsdp2_agrees_with_ddp_after_three_epochs(runs: dict[str, Run]) -> None:
    fsdp, ddp = runs["fsdp"].check(), runs["ddp"].check()
    assert fsdp["sharded"] and not ddp["sharded"] and fsdp["iteration"] == ddp["iteration"] == 18
    model_keys = [k for k in runs["fsdp"].state() if k.startswith("model.")]
    assert_same({k: runs["fsdp"].state()[k] for k in model_keys}, {k: runs["ddp"].state()[k] for k in model_keys},
                atol=1e-5)


def test_a_sharded_checkpoint_holds_every_ranks_shards_and_a_manifest(runs: dict[str, Run]) -> None:
    folder = runs["cut"].out / "ckpt" / "checkpoint_000000007.dcp"
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "manifest.pt"} <= set(os.listdir(folder))
    manifest = torch.load(folder / "manifest.pt", weights_only=True)
    assert manifest["sharded"]["world_size"] == 2 and manifest["mesh"] == [2] and len(manifest["rng_ranks"]) == 2


def test_resume_at_the_same_world_size_is_bit_identical(runs: dict[str, Run]) -> None:
    resumed = runs["resumed"].check()
    assert resumed["resumed_from"].endswith("checkpoint_000000007.dcp")
    assert_same(runs["resumed"].state(), runs["fsdp"].state())


def test_two_to_one_process_continues_the_data_with_the_same_global_batch(runs: dict[str, Run]) -> None:
    result = runs["two_to_one"].check()
    assert result["world_size"] == 1 and result["resumed_from"].endswith("checkpoint_000000007.dcp")
    assert_same(runs["two_to_one"].state(), runs["fsdp"].state(), atol=1e-5)


def test_resharding_loads_exactly_the_saved_weights_and_optimizer_state(runs: dict[str, Run]) -> None:
    four, two = runs["two_to_four"].check(), runs["one_to_two"].check()
    assert four["world_size"] == 4 and four["iteration"] == 7 and two["world_size"] == 2 and two["iteration"] == 7
    assert_same(runs["two_to_four"].state(), runs["cut"].state())
    assert_same(runs["one_to_two"].state(), runs["one_cut"].state())


def test_a_rank_killed_during_a_sharded_save_leaves_the_previous_checkpoint(runs: dict[str, Run]) -> None:
    killed = runs["killed_save"]
    assert killed.returncodes[0] != 0
    names = os.listdir(killed.out / "ckpt")
    result = runs["after_kill"].check()
    assert result["resumed_from"].endswith("checkpoint_000000006.dcp"), result["resumed_from"]  # 8 was torn
    assert not [n for n in names if n.startswith(".tmp-")], names  # the torn folder was removed
    assert_same(runs["after_kill"].state(), runs["fsdp"].state())


def test_an_elastic_restart_continues_the_same_run_from_its_newest_checkpoint(runs: dict[str, Run]) -> None:
    elastic = runs["elastic"]
    result = elastic.check()
    assert result["restarts"] == 1 and result["resumed_from"].endswith("checkpoint_000000008.dcp")
    assert len(os.listdir(elastic.out / "checkpoints")) == 1  # a restart is not a new run
    assert_same(elastic.state(), runs["fsdp"].state())


def test_slurm_tasks_train_together_and_sigusr1_to_one_rank_stops_all_with_a_checkpoint(runs: dict[str, Run]) -> None:
    slurm = runs["slurm"]
    result = slurm.check(status=128 + signal.SIGUSR1)
    assert result["world_size"] == 2 and result["iteration"] == 20  # the ranks agree every 20 iterations
    assert (slurm.out / "ckpt" / "checkpoint_000000020.dcp" / "manifest.pt").exists()


def test_two_nodes_rendezvous_and_checkpoint_to_shared_storage(runs: dict[str, Run]) -> None:
    two = runs["two_nodes"]
    result = two.check()
    assert result["world_size"] == 2 and result["iteration"] == 18
    manifest = torch.load(two.out / "ckpt" / "checkpoint_000000018.dcp" / "manifest.pt", weights_only=True)
    assert manifest["mesh"] == [2, 1]  # one process per node: hybrid, replicated across the nodes
    assert_same(two.state(), runs["fsdp"].state(), atol=1e-5)


def test_bf16_mixed_precision_trains_close_to_float32_with_float32_weights(runs: dict[str, Run]) -> None:
    bf16, fp32 = runs["bf16"].state(), runs["fsdp"].state()
    model_keys = [k for k in fp32 if k.startswith("model.")]
    differ = max((bf16[k] - fp32[k]).abs().max().item() for k in model_keys)
    assert 0 < differ < 0.05, differ  # bf16 compute moves the weights a little, not a lot
    bf16_tensor = torch.tensor(runs["bf16"].result["state"]["model.0.weight"], dtype=torch.float32)
    assert not torch.equal(bf16_tensor, bf16_tensor.bfloat16().float())  # the weights themselves stay float32


def test_background_sharded_saves_hold_the_state_of_their_step_and_resume_bit_identically(
        runs: dict[str, Run]) -> None:
    # async_cut's writes started 0.3 s after each save, while the ranks trained on: the folders hold the
    # snapshots, so its state and a resume from its newest folder match the synchronous runs exactly
    assert sorted(os.listdir(runs["async_cut"].out / "ckpt")) == ["checkpoint_000000006.dcp",
                                                                  "checkpoint_000000007.dcp"]
    assert_same(runs["async_cut"].state(), runs["cut"].state())
    assert runs["async_resumed"].check()["resumed_from"].endswith("checkpoint_000000007.dcp")
    assert_same(runs["async_resumed"].state(), runs["fsdp"].state())


def test_a_rank_killed_in_a_background_sharded_write_leaves_the_previous_folder(runs: dict[str, Run]) -> None:
    killed = runs["async_killed"]
    assert killed.returncodes[0] != 0
    result = runs["async_after_kill"].check()
    # 8's folder was never committed; 6 was written in the background while iterations 7 and 8 changed the
    # weights, and committed at 8's save
    assert result["resumed_from"].endswith("checkpoint_000000006.dcp"), result["resumed_from"]
    assert not [n for n in os.listdir(killed.out / "ckpt") if n.startswith(".tmp-")]  # removed by the resume
    assert_same(runs["async_after_kill"].state(), runs["fsdp"].state())

"""ember.distributed's reading of Slurm's and torchelastic's variables, and wrap_model's arguments (in-process)."""

from __future__ import annotations

import pytest
from torch import nn

from ember import distributed as dist


@pytest.mark.parametrize(("nodelist", "first"), [
    ("gpu[07-09,12],cpu1", "gpu07"), ("node3", "node3"), ("a1,b2", "a1"), ("n[5]", "n5"),
    ("rack1-[003-004]", "rack1-003"),
])
def test_the_first_host_of_a_slurm_node_list(nodelist: str, first: str) -> None:
    assert dist.first_host(nodelist) == first


def test_slurm_variables_become_torchrun_ones() -> None:
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[03-06]",
           "SLURM_TASKS_PER_NODE": "2(x4)"}
    assert dist.slurm_environment(env) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu03",
                                           "MASTER_PORT": "29500", "LOCAL_WORLD_SIZE": "2"}
    assert dist.slurm_environment({**env, "MASTER_PORT": "4000"})["MASTER_PORT"] == "4000"
    assert dist.slurm_environment({**env, "SLURM_NTASKS": "1"}) == {}  # one task: not distributed
    assert dist.slurm_environment({"SLURM_NTASKS": "4"}) == {}  # not a task of a step (no SLURM_PROCID)


def test_planned_world_size_and_restart_count_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "SLURM_NTASKS", "SLURM_PROCID", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    assert dist.planned_world_size() == 1 and dist.elastic_restart_count() == 0
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert dist.planned_world_size() == 4
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert dist.elastic_restart_count() == 2


def test_wrap_model_refuses_an_unknown_strategy_or_precision() -> None:
    with pytest.raises(ValueError, match="strategy must be one of ddp, fsdp, got 'zero3'"):
        dist.wrap_model(nn.Linear(2, 2), strategy="zero3")
    with pytest.raises(ValueError, match="mixed_precision must be None or bf16, got 'fp8'"):
        dist.wrap_model(nn.Linear(2, 2), strategy="fsdp", mixed_precision="fp8")
    model = nn.Linear(2, 2)
    assert dist.wrap_model(model, strategy="fsdp") is model and not dist.is_sharded(model)  # one process

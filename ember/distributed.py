"""Data-parallel training on many GPUs or machines: torch.distributed set up from torchrun's (or Slurm's) environment.

Start the script with `torchrun --nproc_per_node=N script.py` (or `srun` under Slurm); call `init()` first,
build data and model, shard the data by `rank()`/`world_size()`, wrap the model with `wrap_model` (DDP, or
FSDP2 with `strategy="fsdp"`), and let only `is_main()` print, log and write files. In a plain single
process every function here is a cheap no-op, so one script runs both ways.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "all_gather_object",
    "all_reduce_sum",
    "background_group",
    "barrier",
    "broadcast_object",
    "cleanup",
    "device_mesh",
    "elastic_restart_count",
    "init",
    "is_sharded",
    "planned_world_size",
    "is_enabled",
    "is_main",
    "local_rank",
    "main_only",
    "rank",
    "silence_non_main",
    "unwrap",
    "slurm_environment",
    "world_size",
    "wrap_model",
]

STRATEGIES = ("ddp", "fsdp")
MIXED_PRECISION = ("bf16",)

T = TypeVar("T")
_WRAPPED: weakref.WeakSet[nn.parallel.DistributedDataParallel] = weakref.WeakSet()  # made by wrap_model
_BACKGROUND_GROUP: dict[int, Any] = {}  # id(default group) -> the group of background collectives
_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_enabled() -> bool:
    """True when a default process group is initialised, so collectives really communicate."""
    return dist.is_available() and dist.is_initialized()


def init(backend: str | None = None) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1), pin this rank's GPU; True if distributed.

    backend defaults to nccl when CUDA is available, else gloo. Calling it again, or in a plain single
    process (no WORLD_SIZE, or WORLD_SIZE=1), changes nothing.
    """
    if is_enabled():
        return True
    if "RANK" not in os.environ:
        os.environ.update(slurm_environment(os.environ))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this PyTorch has no torch.distributed; run one process")
    missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: "
            "start the processes with torchrun (e.g. `torchrun --nproc_per_node=2 ...`), which sets them all"
        )
    local = int(os.environ["LOCAL_RANK"])
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    device_id = None
    if torch.cuda.is_available() and local < torch.cuda.device_count():
        torch.cuda.set_device(local)
        device_id = torch.device("cuda", local) if backend == "nccl" else None
    elif backend == "nccl":
        raise RuntimeError(
            f"LOCAL_RANK={local} has no GPU: {torch.cuda.device_count()} visible on this machine; start at "
            "most that many processes per machine (torchrun --nproc_per_node), or pass backend='gloo' for CPU"
        )
    dist.init_process_group(backend, device_id=device_id, **_restart_store())
    _sync_ignite()
    return True


def _restart_store() -> dict[str, Any]:
    """Under torchelastic, the process group's store keys prefixed by the restart count.

    torchelastic's agent keeps one store across restarts, and the process group's keys (gloo's rank
    addresses among them) carry no attempt of their own: a restarted rank may read an address its peer
    published before the restart and fail to connect. A prefix per restart keeps each attempt's keys apart.
    """
    if elastic_restart_count() == 0:
        return {}
    store, rank_, world = next(dist.rendezvous("env://"))
    prefixed = dist.PrefixStore(f"ember/attempt_{elastic_restart_count()}/", store)
    return {"store": prefixed, "rank": rank_, "world_size": world}


def slurm_environment(env: Mapping[str, str]) -> dict[str, str]:
    """torchrun's variables from Slurm's, for processes started by `srun` without torchrun ({} otherwise).

    RANK from SLURM_PROCID, WORLD_SIZE from SLURM_NTASKS, LOCAL_RANK from SLURM_LOCALID, MASTER_ADDR the first
    host of SLURM_JOB_NODELIST (`node[03-05,9]` gives `node03`) and MASTER_PORT 29500 unless already set.
    Only where SLURM_NTASKS says more than one task and SLURM_PROCID is set.
    """
    if int(env.get("SLURM_NTASKS", "1") or "1") <= 1 or "SLURM_PROCID" not in env:
        return {}
    out = {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", "") or "127.0.0.1"),
        "MASTER_PORT": env.get("MASTER_PORT", "29500"),
    }
    per_node = re.match(r"\d+", env.get("SLURM_TASKS_PER_NODE", ""))  # "4(x2)" means 4 on each of 2 nodes
    if per_node:
        out["LOCAL_WORLD_SIZE"] = per_node.group(0)
    return out


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: `gpu[07-09,12],cpu1` gives `gpu07`, `a1,b2` gives `a1`."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if match is None:
        raise RuntimeError(f"cannot read the first host of SLURM_JOB_NODELIST={nodelist!r}; set MASTER_ADDR")
    prefix, ranges = match.group(1), match.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def planned_world_size() -> int:
    """The number of processes this one will train with, read from torchrun's or Slurm's variables before
    `init()` (1 in a plain process)."""
    env = slurm_environment(os.environ) if "RANK" not in os.environ else {}
    return int(os.environ.get("WORLD_SIZE") or env.get("WORLD_SIZE") or 1)


def elastic_restart_count() -> int:
    """How often torchrun's elastic agent has restarted this group (TORCHELASTIC_RESTART_COUNT; 0: first start)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or "0")


def _sync_ignite() -> None:
    """Let ignite.distributed (used by ignite's metrics) see the current group now, on every rank at once.

    Its first look at a new group runs collectives; done lazily it could happen on rank 0 alone and hang.
    """
    try:
        import ignite.distributed as idist
    except ImportError:
        return
    idist.sync()


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_enabled() else 0


def local_rank() -> int:
    """This process's rank on its machine, which is also its GPU index (0 when not distributed)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_enabled() else 0


def world_size() -> int:
    """The number of processes training together (1 when not distributed)."""
    return dist.get_world_size() if is_enabled() else 1


def is_main() -> bool:
    """True on the one process (rank 0) that prints, logs and writes files."""
    return rank() == 0


def main_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorate `fn` to run on the main process only (elsewhere it returns None): `main_only(print)(...)`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        return fn(*args, **kwargs) if is_main() else None

    return wrapper


def silence_non_main() -> None:
    """On ranks other than 0 send stdout to /dev/null, so each line prints once; stderr still shows errors."""
    if not is_main():
        sys.stdout = open(os.devnull, "w")  # left open: it is stdout until the process ends


def _comm_device() -> torch.device:
    """Where collectives take their tensors: this rank's GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every process gets here (e.g. rank 0 has finished writing a checkpoint)."""
    if not is_enabled():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_reduce_sum(value: T) -> T:
    """The sum of a tensor or number over all processes, as a new value of the same kind and device."""
    if not is_enabled():
        return value
    if isinstance(value, torch.Tensor):
        summed = value.detach().to(_comm_device(), copy=True)
        dist.all_reduce(summed)
        return summed.to(value.device)  # type: ignore[return-value]
    if not isinstance(value, (bool, int, float)):
        raise TypeError(f"all_reduce_sum takes a tensor, int, float or bool, got {type(value).__name__}")
    dtype = torch.float64 if isinstance(value, float) else torch.int64
    summed = torch.tensor(value, dtype=dtype, device=_comm_device())
    dist.all_reduce(summed)
    return type(value)(summed.item())  # type: ignore[return-value]


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s picklable `obj` on every process (e.g. a path or a seed chosen by rank 0)."""
    if not is_enabled():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's picklable `obj`, in rank order, on every rank; [obj] when alone."""
    if not is_enabled():
        return [obj]
    out: list[T] = [obj] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj: T, dst: int = 0) -> list[T] | None:
    """Every rank's picklable `obj`, in rank order, on rank `dst` (None on the others); [obj] when alone."""
    if not is_enabled():
        return [obj]
    out: list[T] | None = [obj] * world_size() if rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def background_group() -> Any:
    """A gloo process group of every rank, for collectives run in a background thread (a sharded checkpoint
    written while training goes on): they must not interleave with the training step's on the default group.
    None when not distributed. Made on the first call under a default group, which is therefore collective;
    `cleanup` lets go of it."""
    if not is_enabled():
        return None
    world = id(dist.group.WORLD)
    if world not in _BACKGROUND_GROUP:
        _BACKGROUND_GROUP.clear()
        _BACKGROUND_GROUP[world] = dist.new_group(backend="gloo")
    return _BACKGROUND_GROUP[world]


def wrap_model(
    model: nn.Module,
    device: torch.device | str | None = None,
    *,
    strategy: str = "ddp",
    shard_classes: Sequence[type[nn.Module]] = (),
    mixed_precision: str | None = None,
    hybrid: bool | None = None,
) -> nn.Module:
    """Move `model` to `device`; when distributed, wrap it for data-parallel training by `strategy`.

    "ddp": DistributedDataParallel (gradient averaging; every rank starts from rank 0's weights; each rank
    holds the whole model). "fsdp": FSDP2 (`fully_shard` on `device_mesh`): parameters, gradients and
    optimizer state are sharded over the ranks and gathered layer by layer when used, so a model need only
    fit the ranks together. Its sharding units are the modules of `shard_classes` (e.g. your transformer block
    class) or, by default, each direct child module holding parameters, then the root. `mixed_precision="bf16"`
    computes in bfloat16 with float32 reductions and float32 master weights. `hybrid` (default: when the world
    spans several machines) shards within a machine and replicates across machines on a 2-D mesh. Call it
    after `init()` and before creating the optimizer (FSDP2 replaces the parameters by sharded ones).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if mixed_precision is not None and mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be None or {', '.join(MIXED_PRECISION)}, got {mixed_precision!r}")
    if device is not None:
        model = model.to(device)
    if not is_enabled() or isinstance(model, nn.parallel.DistributedDataParallel) or is_sharded(model):
        return model
    if strategy == "fsdp":
        return _fully_shard(model, tuple(shard_classes), mixed_precision, hybrid)
    device = torch.device(device) if device is not None else _param_device(model)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[index], output_device=index)
    else:
        wrapped = nn.parallel.DistributedDataParallel(model)
    _WRAPPED.add(wrapped)
    return wrapped


def is_sharded(model: Any) -> bool:
    """True for a module that FSDP2's `fully_shard` has sharded (its state_dict holds DTensor shards)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule) if isinstance(model, nn.Module) else False


def device_mesh(hybrid: bool | None = None) -> Any:
    """The DeviceMesh FSDP2 shards over: 1-D over all ranks, or 2-D (replicate across machines, shard within
    one) with `hybrid`; None (the default) picks 2-D when the world spans several machines of equal size."""
    from torch.distributed.device_mesh import init_device_mesh

    world = world_size()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    machines = world // local if 0 < local <= world and world % local == 0 else 1
    if hybrid is None:
        hybrid = machines > 1
    if hybrid and machines <= 1:
        raise ValueError(f"hybrid sharding needs several machines of equal size; this world is {world} processes "
                         f"with {local} per machine")
    device_type = _comm_device().type
    if hybrid:
        return init_device_mesh(device_type, (machines, local), mesh_dim_names=("replicate", "shard"))
    return init_device_mesh(device_type, (world,), mesh_dim_names=("shard",))


def _fully_shard(model: nn.Module, shard_classes: tuple[type[nn.Module], ...], mixed_precision: str | None,
                 hybrid: bool | None) -> nn.Module:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = device_mesh(hybrid)
    kwargs: dict[str, Any] = {"mesh": mesh}
    if mixed_precision == "bf16":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if shard_classes:
        units = [m for m in model.modules() if isinstance(m, shard_classes) and m is not model]
        if not units:
            names = ", ".join(c.__name__ for c in shard_classes)
            raise ValueError(f"shard_classes: the model holds no module of {names}; name classes it uses, or pass "
                             "none to shard each direct child")
    else:
        units = [child for child in model.children() if any(True for _ in child.parameters())]
    for unit in units:
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _param_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel/DataParallel and/or torch.compile, e.g. for its state_dict."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def cleanup() -> None:
    """Leave and destroy the process group (at the end of training); a no-op when not distributed.

    First it lets go of the groups that live objects still hold (`_let_go_of_groups`), so that destroying
    them really ends them: their gloo worker threads stop now, while Python runs. A group still referenced at
    the end of the process keeps its worker threads, and one that frees a finished collective during
    interpreter shutdown aborts the process ("terminate called without an active exception", SIGABRT: about
    one exit in eight with gloo and torch 2.14 for a DDP model's group, one in thirty for the background group
    of sharded saves), so torchrun reports a finished run as failed. A wrapped model cannot train once its
    group is gone anyway; `unwrap(model)` still gives the trained module, and an FSDP2 model's state_dict
    still holds its shards.
    """
    if not is_enabled():
        return
    _let_go_of_groups()
    dist.destroy_process_group()
    _sync_ignite()


def _let_go_of_groups() -> None:
    """Drop the references that live objects keep to the process groups: the `background_group`, the reducer and
    `process_group` of the DDP wrappers `wrap_model` made, and the groups of every DeviceMesh and FSDP2 mesh
    info (whoever made them). torch 2.14 keeps them in these private attributes;
    tests/distributed/test_distributed.py counts the worker threads left, so a torch that holds groups
    elsewhere fails that test rather than some exits."""
    import gc

    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp._fully_shard._fsdp_common import DataParallelMeshInfo

    _BACKGROUND_GROUP.clear()
    for wrapped in list(_WRAPPED):
        if hasattr(wrapped, "reducer"):
            wrapped.logger = None  # the C++ logger holds the reducer too
            del wrapped.reducer
        wrapped.process_group = None
    _WRAPPED.clear()
    for obj in gc.get_objects():  # once, at the end of training (`type`: isinstance may run a __class__ property)
        if issubclass(type(obj), DeviceMesh):
            obj._pg_registry.clear()  # noqa: SLF001
        elif issubclass(type(obj), DataParallelMeshInfo):
            for name, value in list(vars(obj).items()):
                if isinstance(value, dist.ProcessGroup):
                    setattr(obj, name, None)

"""Sharded checkpoints: a folder that every rank writes through torch.distributed.checkpoint (DCP), committed
by a manifest written last.

On disk, `<prefix>_<iteration:09d>.dcp/` holds:

    __<rank>_<n>.distcp  each rank's shards of the models and optimizers, written in parallel (nothing gathered)
    .metadata            DCP's index of where each shard lies (rank 0)
    manifest.pt          rank 0, after every rank finished: an ember checkpoint payload (step, epoch, score, the
                         other objects' states: trainer, handlers, run record, schedulers; every rank's RNG
                         states) plus `sharded`: the world size and mesh, the DCP objects, and the size and
                         CRC-32 of every other file

The folder is written as `.tmp-<name>-<pid>-<random>` and renamed to its name only once the manifest is in it
(files and folders fsynced), so a folder under its final name is whole. On load, the manifest is read with
`torch.load(weights_only=True)` and checked record by record, every file is checked against its CRC-32 (the
ranks share the reading) before anything changes, and DCP's `.metadata` is unpickled by an unpickler that
builds only DCP's own metadata classes. Resharding comes with DCP: a folder written by N ranks loads on M.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import warnings
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ember import distributed as dist
from ember.checkpoint.format import CheckpointError, CorruptCheckpointError, first_line, listed, read
from ember.checkpoint.safety import probe
from ember.utils.atomic import fsync_dir, temp_path, write_atomic

SUFFIX = ".dcp"
MANIFEST = "manifest.pt"
_CHUNK = 16 << 20


def is_folder_checkpoint(path: str) -> bool:
    """True for a sharded checkpoint (a folder), False for a single checkpoint file."""
    return os.path.isdir(path)


def sharded_names(objects: Mapping[str, Any]) -> list[str]:
    """The objects that go through DCP (models and optimizers); the others go into the manifest."""
    return [name for name, obj in objects.items() if isinstance(obj, (nn.Module, torch.optim.Optimizer))]


def _model_of(optimizer: torch.optim.Optimizer, models: Mapping[str, nn.Module], name: str) -> nn.Module:
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for model in models.values():
        if params <= {id(p) for p in model.parameters()}:
            return model
    raise CheckpointError(f"cannot save {name!r} sharded: its parameters are not all those of one model among the "
                          "checkpointed objects; checkpoint the model it optimizes with it")


def sharded_state(objects: Mapping[str, Any]) -> dict[str, Any]:
    """The DCP state of the models and optimizers among `objects` (`get_model_state_dict`,
    `get_optimizer_state_dict`): each rank's shards as DTensors under FSDP2, keyed by parameter name, so that
    another world size can load them."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    models = {name: dist.unwrap(obj) for name, obj in objects.items() if isinstance(obj, nn.Module)}
    state: dict[str, Any] = {name: get_model_state_dict(model) for name, model in models.items()}
    for name, obj in objects.items():
        if isinstance(obj, torch.optim.Optimizer):
            state[name] = get_optimizer_state_dict(_model_of(obj, models, name), obj)
    return state


def apply_sharded_state(objects: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """Load a state made by `sharded_state` (and filled by DCP) into the live models and optimizers."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    models = {name: dist.unwrap(obj) for name, obj in objects.items() if isinstance(obj, nn.Module)}
    for name, model in models.items():
        set_model_state_dict(model, state[name])
    for name, obj in objects.items():
        if isinstance(obj, torch.optim.Optimizer):
            set_optimizer_state_dict(_model_of(obj, models, name), obj, state[name])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DCP warns that it runs without a process group in a single process: intended here (one rank's folder)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed.*(disabled|uninitialized|not initialized).*")
        yield


def _crc(path: str) -> tuple[int, int]:
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


def mesh_of(objects: Mapping[str, Any]) -> list[int]:
    """The shape of the DeviceMesh the models among `objects` are sharded on ([world size] when not sharded)."""
    for obj in objects.values():
        if isinstance(obj, nn.Module):
            for p in obj.parameters():
                mesh = getattr(p, "device_mesh", None)
                if mesh is not None:
                    return list(mesh.shape)
    return [dist.world_size()]


def save_sharded(path: str, state: Mapping[str, Any], manifest: dict[str, Any] | None) -> str:
    """Write `state` (from `sharded_state`) as the sharded checkpoint folder `path`, atomically: a collective
    call of every rank; `manifest` (rank 0's; ignored elsewhere) is the payload written last as manifest.pt.

    The steps are `begin` (the temp folder, agreed by all ranks), `dcp.save` into it, and `commit`; a caller
    that writes the shards another way (e.g. `dcp.async_save`) runs the same three with its own middle step.
    Returns `path`; CheckpointError on every rank when any rank failed (the temp folder is removed).
    """
    tmp = begin(path)
    try:
        write_shards(tmp, path, state)
    except CheckpointError:
        discard(tmp)
        raise
    commit(tmp, path, manifest)
    return path


def write_shards(tmp: str, path: str, state: Mapping[str, Any], group: Any = None) -> None:
    """The middle step: `dcp.save` of `state` into the temp folder `tmp` (of the checkpoint `path`), its
    collectives on `group` (default: the default process group). A collective call of the ranks of `group`;
    CheckpointError on every rank when any rank failed."""
    import torch.distributed.checkpoint as dcp

    try:
        with _quiet():
            dcp.save(dict(state), checkpoint_id=tmp, process_group=group)
    except (Exception, dcp.api.CheckpointException) as exc:
        raise CheckpointError(f"could not write the sharded checkpoint {path}: {_cause(exc)}; earlier "
                              "checkpoints are untouched") from None


def begin(path: str) -> str:
    """The temp folder next to `path` that the shards go into, made by rank 0 and the same on every rank."""
    tmp = temp_path(path) if dist.is_main() else None
    error = None
    if dist.is_main():
        try:
            os.mkdir(tmp)  # type: ignore[arg-type]
        except OSError as exc:
            error = f"cannot create {tmp}: {exc.strerror or exc}"
    tmp, error = dist.broadcast_object((tmp, error))
    if error:
        raise CheckpointError(f"could not write the sharded checkpoint {path}: {error}")
    return tmp


def commit(tmp: str, path: str, manifest: dict[str, Any] | None) -> None:
    """After every rank wrote its files into `tmp`: each rank checksums its own files, rank 0 writes the
    manifest (last), fsyncs and renames the folder to `path`. A collective call; CheckpointError everywhere
    when it failed anywhere."""
    mine = [n for n in os.listdir(tmp) if n.startswith(f"__{dist.rank()}_") or (dist.is_main() and n == ".metadata")]
    sums = {}
    for name in mine:
        with open(os.path.join(tmp, name), "rb") as f:
            os.fsync(f.fileno())
        sums[name] = _crc(os.path.join(tmp, name))
    gathered = dist.gather_object(sums)
    error = None
    if dist.is_main():
        try:
            files = {name: list(v) for part in gathered or [] for name, v in part.items()}
            unlisted = sorted(set(os.listdir(tmp)) - set(files))
            if unlisted:
                raise CheckpointError(f"files no rank claims: {listed(unlisted)}")
            payload = {**(manifest or {}), "sharded": {"files": files, "world_size": dist.world_size()}}
            _write_manifest(os.path.join(tmp, MANIFEST), payload, path)
            fsync_dir(tmp)
            _rename_folder(tmp, path)
        except Exception as exc:
            discard(tmp)
            error = (f"could not write the sharded checkpoint {path}: {first_line(exc)}; earlier checkpoints are "
                     "untouched")
    error = dist.broadcast_object(error)
    if error:
        raise CheckpointError(error)


def _write_manifest(dst: str, payload: dict[str, Any], path: str) -> None:
    write_atomic(dst, lambda f: torch.save(payload, f))
    probe(dst, payload, path)


def _rename_folder(tmp: str, path: str) -> None:
    """Give the complete folder `tmp` the name `path` (an older folder of that name is replaced), durably."""
    old = None
    if os.path.exists(path):
        old = temp_path(path)
        os.rename(path, old)
    os.rename(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def discard(tmp: str) -> None:
    """Remove the temp folder of a save that failed (rank 0)."""
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)


def remove_folder(path: str) -> None:
    """Delete a checkpoint folder: renamed to a temp name first, so a kill half-way leaves no torn folder under
    a checkpoint's name (the temp one is removed on the next start)."""
    doomed = temp_path(path)
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    fsync_dir(os.path.dirname(path) or ".")
    shutil.rmtree(doomed, ignore_errors=True)


def link_folder(src: str, dst: str) -> None:
    """Give the complete checkpoint folder `src` a second name `dst`: a temp folder of hard links (copies where
    links fail), renamed to `dst`."""
    tmp = temp_path(dst)
    os.mkdir(tmp)
    try:
        for name in os.listdir(src):
            try:
                os.link(os.path.join(src, name), os.path.join(tmp, name))
            except OSError:
                shutil.copyfile(os.path.join(src, name), os.path.join(tmp, name))
        fsync_dir(tmp)
        _rename_folder(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------- reading
def _corrupt(path: str, detail: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"checkpoint folder {path} is corrupt or incomplete: {detail}; nothing in it was "
                                  "loaded. Load an earlier checkpoint")


def read_manifest(path: str, *, check_files: bool = False) -> dict[str, Any]:
    """The manifest of the sharded checkpoint `path` (loaded with weights_only, its records checked), after
    checking that every file it lists is there with its size (`check_files`: and its CRC-32, in this process;
    `verify_files` shares that among the ranks)."""
    manifest = os.path.join(path, MANIFEST)
    if not os.path.exists(manifest):
        raise _corrupt(path, f"it has no {MANIFEST} (a save that did not finish, or a damaged copy)")
    try:
        payload = read(manifest)
    except CorruptCheckpointError as exc:
        raise _corrupt(path, f"its {MANIFEST} is damaged ({str(exc).split(': ', 1)[-1]})") from None
    sharded = payload.get("sharded")
    files = sharded.get("files") if isinstance(sharded, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v) for v in files.values()
    ):
        raise _corrupt(path, f"its {MANIFEST} does not list the folder's files with their sizes and CRC-32s")
    for name, (size, _) in sorted(files.items()):
        file = os.path.join(path, name)
        if os.path.basename(name) != name or not os.path.isfile(file):
            raise _corrupt(path, f"{name} is missing")
        if os.path.getsize(file) != size:
            raise _corrupt(path, f"{name} has {os.path.getsize(file)} bytes, not the {size} it was written with")
    if check_files:
        problem = _check_crcs(path, sorted(files), files)
        if problem:
            raise _corrupt(path, problem)
    return payload


def _check_crcs(path: str, names: list[str], files: dict[str, list[int]]) -> str | None:
    for name in names:
        if _crc(os.path.join(path, name))[1] != files[name][1]:
            return (f"{name} fails its CRC-32 check (the file changed after it was written: bit rot, a damaged copy "
                    "or disk)")
    return None


def verify_files(path: str, payload: dict[str, Any]) -> None:
    """Check every file of the folder against its CRC-32, each rank a share of them (a collective call under
    torchrun); CorruptCheckpointError on every rank, naming the first bad file, when one fails."""
    files = payload["sharded"]["files"]
    names = sorted(files)[dist.rank():: dist.world_size()]
    problems = [p for p in dist.all_gather_object(_check_crcs(path, names, files)) if p]
    if problems:
        raise _corrupt(path, problems[0])


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata classes and the few torch values they hold; refuses every other global."""

    _ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
                ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath")}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.memory_format)):
            return getattr(torch, name)
        if (module, name) in self._ALLOWED or (
            module in ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
            and not name.startswith("__") and isinstance(getattr(__import__(module, fromlist=[name]), name, None),
                                                         type)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _reader(path: str) -> Any:
    from torch.distributed.checkpoint import FileSystemReader

    class _Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            with open(os.path.join(path, ".metadata"), "rb") as f:
                try:
                    return _MetadataUnpickler(f).load()
                except pickle.UnpicklingError as exc:
                    raise CheckpointError(f"{path}/.metadata is not DCP metadata ({exc}); it was refused and NOT "
                                          "executed") from None

    return _Reader(path)


def load_sharded_state(path: str, objects: Mapping[str, Any]) -> dict[str, Any]:
    """The DCP state of `objects` filled from the folder `path` (resharded to this world), in fresh tensors:
    the live models and optimizers are not touched (`apply_sharded_state` does that). A collective call."""
    import torch.distributed.checkpoint as dcp

    state = sharded_state(objects)
    state = _fresh(state)
    try:
        with _quiet():
            dcp.load(state, storage_reader=_reader(path))
    except CheckpointError:
        raise
    except (Exception, dcp.api.CheckpointException) as exc:
        raise CheckpointError(f"cannot load {path}; nothing was changed: {_cause(exc)} (was it saved from a "
                              "different model or optimizer?)") from None
    return state


def _cause(exc: BaseException) -> str:
    """The first line of the first rank's error inside DCP's CheckpointException (or of `exc` itself)."""
    failures = getattr(exc, "failures", None)
    if failures:
        rank, (inner, _) = min(failures.items(), key=lambda item: item[0])
        if isinstance(inner, CheckpointError):
            return str(inner)
        return f"rank {rank}: {first_line(inner)}"
    return first_line(exc)


def _fresh(state: Any) -> Any:
    """A copy of a nested state whose tensors are new (DTensors stay DTensors on the same mesh)."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, Mapping):
        return {k: _fresh(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_fresh(v) for v in state]
    return state


def local_tensors(state: Any) -> Any:
    """A nested state with each DTensor replaced by this rank's shard (for checks that must not communicate)."""
    if isinstance(state, torch.Tensor):
        return state.to_local() if hasattr(state, "to_local") else state
    if isinstance(state, Mapping):
        return {k: local_tensors(v) for k, v in state.items()}
    if isinstance(state, list):
        return [local_tensors(v) for v in state]
    return state


def agreed(problem: str | None) -> str | None:
    """The first rank's problem when any rank has one (every rank gets the same answer; a collective call)."""
    return next((p for p in dist.all_gather_object(problem) if p), None)

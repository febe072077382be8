"""Loading a checkpoint into live objects, all or nothing.

Everything that can be checked before an object changes is checked first: the file's integrity and structure
(`format.read`), the models' keys and shapes, the optimizers' parameter groups, the engines' counters, the RNG
states (restored into fresh generators) and the finiteness of the weights and optimizer state. Only then are
objects loaded: the others first, each after a copy of its state is taken, then the (already checked) models;
should a `load_state_dict` still fail, the objects loaded before it get their copies back.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ember import distributed as dist
from ember.checkpoint import sharded
from ember.checkpoint.finite import float_tensors, non_finite, stored, tensors
from ember.checkpoint.folder import candidates, skipping
from ember.checkpoint.format import CheckpointError, CorruptCheckpointError, is_count, listed, read
from ember.checkpoint.handler_states import implicit_objects
from ember.engine import Engine
from ember.utils.rng import rng_state_problem, set_rng_state

IMPLEMENTATION_FLAGS = frozenset({"capturable", "foreach", "fused", "differentiable"})


def load(
    path: str | os.PathLike[str], objects: Mapping[str, Any], *, strict: bool = True, restore_rng: bool = True
) -> dict[str, Any]:
    """Restore `objects` (and the RNG states) from `path`; returns step, epoch, score and path of the file.

    All or nothing: the file's checksums, its structure, the models' keys and shapes (with strict=True a
    different architecture raises CheckpointError listing missing/unexpected keys and shape mismatches),
    the optimizers' groups, the counters, the RNG states and the finiteness of weights and optimizer state
    are checked before anything changes (CorruptCheckpointError for a damaged or unusable file). Objects in
    the file but not in `objects` are ignored (load just the model for inference). A file saved at an epoch's
    last iteration before the epoch's end ran sets the trainer's `state.epoch_end_pending`, so its next run
    goes through that end first. `Checkpoint.load`.
    """
    path = os.fspath(path)
    if sharded.is_folder_checkpoint(path):
        return _load_folder(path, objects, strict, restore_rng)
    payload = read(path)
    saved = payload["objects"]
    engine = next((obj for obj in objects.values() if isinstance(obj, Engine)), None)
    objects = {**objects, **implicit_objects(engine, objects, saved=saved)}
    states = _checked_states(path, objects, saved, strict)
    bad = _unusable(path, payload, objects, states, restore_rng)
    if bad:
        raise CorruptCheckpointError(f"checkpoint file {path} cannot be resumed from: {bad}; nothing was changed. "
                                     "Load an earlier checkpoint")
    _apply(path, objects, states, strict)
    return _restored(path, payload, objects, states, restore_rng)


def _load_folder(path: str, objects: Mapping[str, Any], strict: bool, restore_rng: bool) -> dict[str, Any]:
    """`load` of a sharded checkpoint folder (a collective call under torchrun): the manifest and every file's
    CRC-32 first, then the models' and optimizers' shards through DCP into fresh tensors (resharded to this
    world), the same checks as a file's, agreed by all ranks, and only then anything changed."""
    payload = sharded.read_manifest(path)
    sharded.verify_files(path, payload)
    saved = payload["objects"]
    engine = next((obj for obj in objects.values() if isinstance(obj, Engine)), None)
    objects = {**objects, **implicit_objects(engine, objects, saved=saved)}
    in_dcp = [name for name in sharded.sharded_names(objects) if name not in saved]
    plain = {name: obj for name, obj in objects.items() if name not in in_dcp}
    problem = None
    try:
        states = _checked_states(path, plain, saved, strict)
    except CheckpointError as exc:
        problem = exc
    agreed = sharded.agreed(str(problem) if problem else None)
    if agreed:
        raise problem if problem is not None else CheckpointError(agreed)
    dcp_objects = {name: objects[name] for name in in_dcp}
    dcp_states = sharded.load_sharded_state(path, dcp_objects)
    local = sharded.local_tensors(dcp_states)  # each rank checks its own shards; the ranks then agree
    bad = sharded.agreed(_unusable(path, payload, objects, {**states, **local}, restore_rng))
    if bad:
        raise CorruptCheckpointError(f"checkpoint folder {path} cannot be resumed from: {bad}; nothing was changed. "
                                     "Load an earlier checkpoint")
    _apply(path, plain, states, strict)
    sharded.apply_sharded_state(dcp_objects, dcp_states)
    return _restored(path, payload, objects, states, restore_rng)


def resume_latest(
    dirname: str | os.PathLike[str], objects: Mapping[str, Any], *, prefix: str | None = None, strict: bool = True
) -> str | None:
    """Load the newest good checkpoint of `dirname` into `objects`; its path, or None if there is none.

    One rule for every bad file: a newest file that cannot be loaded into `objects`, whatever the reason (a
    failed checksum, a malformed or hostile structure, NaN/Inf weights, objects or optimizer groups that are
    not these, a state an object refuses), is skipped with one warning naming it and its problem, for the one
    before; nothing is changed by a file that is skipped. When the folder holds checkpoint files but none
    can be loaded, CheckpointError lists each file and its problem. `Checkpoint.resume_latest`.
    """
    dirname = os.fspath(dirname)
    paths, problems = candidates(dirname, prefix)
    return resume_from(dirname, paths, problems, objects, strict=strict)


def resume_from(
    dirname: str, paths: list[str], problems: list[str], objects: Mapping[str, Any], *, strict: bool = True
) -> str | None:
    """`resume_latest` over files already found: load the first of `paths` that can be resumed from, falling
    back past unusable ones; `problems` (of files skipped earlier) are listed if none can be."""
    for path in paths:
        try:
            load(path, objects, strict=strict)
        except CheckpointError as exc:
            warnings.warn(skipping(path, exc, "; trying the previous checkpoint"), RuntimeWarning, stacklevel=3)
            problems.append(str(exc))
            continue
        return path
    if problems:
        raise CheckpointError(
            f"no usable checkpoint in {dirname}: {' | '.join(problems)}. Move the bad files away to start "
            "from the beginning"
        )
    return None


def _rng_of_this_rank(payload: dict[str, Any]) -> Any:
    ranks = payload.get("rng_ranks")
    same_world = ranks is not None and len(ranks) == dist.world_size()
    return ranks[dist.rank()] if same_world else payload["rng"]


def _checked_states(path: str, objects: Mapping[str, Any], saved: dict[str, Any], strict: bool) -> dict[str, Any]:
    """The saved state of each object, after the checks that say the file was written for another setup:
    absent objects, models of another architecture (unless strict=False), optimizers of other groups."""
    absent = [name for name in objects if name not in saved]
    problems: list[str] = [f"not in the checkpoint: {absent} (it holds {sorted(saved)})"] if absent else []
    states: dict[str, Any] = {}
    for name, obj in objects.items():
        if name in absent:
            continue
        state = saved[name]
        if isinstance(obj, nn.Module):
            if not isinstance(state, Mapping):
                raise CorruptCheckpointError(f"checkpoint file {path} is malformed: its {name!r} is a "
                                             f"{type(state).__name__}, not a state_dict. Load an earlier checkpoint")
            module = dist.unwrap(obj)
            state = _strip_wrapper_prefixes(state, set(module.state_dict()))
            missing, unexpected, shapes = _module_mismatch(module, state)
            if missing or unexpected or shapes:
                problems.append(_describe_mismatch(name, module, state, missing, unexpected, shapes))
                if not strict:
                    state = {k: v for k, v in state.items() if k not in set(shapes)}
        elif isinstance(obj, torch.optim.Optimizer):
            problem = _optimizer_mismatch(obj, state)
            if problem:
                raise CheckpointError(f"cannot load {path}; nothing was changed: {name!r} {problem}")
        states[name] = state
    if problems:
        text = "\n".join(problems)
        if strict:
            raise CheckpointError(f"cannot load {path}; nothing was changed:\n{text}\nPass strict=False to load only "
                                  "what matches.")
        warnings.warn(f"loading {path} partially (strict=False):\n{text}", RuntimeWarning, stacklevel=3)
    return states


def _unusable(
    path: str, payload: dict[str, Any], objects: Mapping[str, Any], states: dict[str, Any], restore_rng: bool
) -> str | None:
    """Why no run could continue from this file (bad counters or RNG states, NaN/Inf weights), or None."""
    for name, state in states.items():
        if isinstance(objects[name], Engine):
            problem = _engine_state_problem(state, payload["step"] if name == "trainer" else None)
            if problem:
                return f"the counters of {name!r} {problem}"
    if restore_rng and "rng" in payload:
        problem = rng_state_problem(_rng_of_this_rank(payload))
        if problem:
            return f"the random generator states are unusable: {problem}"
    repeated = [
        f"{key} ({t.numel():.3g} elements stored as {stored(t).numel()})"
        for name, state in states.items()
        if isinstance(objects[name], (nn.Module, torch.optim.Optimizer))
        for key, t in tensors(state, name)
        if stored(t).numel() < t.numel()
    ]
    if repeated:
        return f"{listed(repeated)} are expanded views that repeat their stored values, which no model or " \
            "optimizer state holds"
    bad_tensors = [
        key
        for name, state in states.items()
        if isinstance(objects[name], (nn.Module, torch.optim.Optimizer))
        for key in non_finite(list(float_tensors(state, name)))
    ]
    if bad_tensors:
        return f"{listed(bad_tensors)} hold NaN or Inf"
    return None


def _engine_state_problem(state: Any, step: int | None) -> str | None:
    if not isinstance(state, Mapping):
        return f"are a {type(state).__name__}, not a dict"
    for key in ("iteration", "epoch"):
        if key in state and not is_count(state[key]):
            return f"have {key} {state[key]!r}, not a count >= 0"
    for key in ("epoch_length", "max_epochs"):
        value = state.get(key)
        if value is not None and not (is_count(value) and (value > 0 or key == "max_epochs")):
            return f"have {key} {value!r}, not a positive count or None"
    if step is not None and "iteration" in state and state["iteration"] != step:
        return f"have iteration {state['iteration']}, but the file was saved at iteration {step}"
    epoch_length, max_epochs = state.get("epoch_length"), state.get("max_epochs")
    if epoch_length and max_epochs is not None and state.get("iteration", 0) > epoch_length * max_epochs:
        return f"have iteration {state['iteration']}, beyond {max_epochs} epochs of {epoch_length}"
    return None


def _optimizer_mismatch(optimizer: torch.optim.Optimizer, state: Any) -> str | None:
    groups = state.get("param_groups") if isinstance(state, Mapping) else None
    if not isinstance(groups, list) or not isinstance(state.get("state"), Mapping):
        return "has no optimizer state_dict (param_groups and state) in the checkpoint"
    if len(groups) != len(optimizer.param_groups):
        return f"has {len(groups)} parameter groups in the checkpoint but {len(optimizer.param_groups)} here"
    for index, (saved, own) in enumerate(zip(groups, optimizer.param_groups)):
        saved_params = saved.get("params") if isinstance(saved, Mapping) else None
        if not isinstance(saved_params, list) or len(saved_params) != len(own["params"]):
            count = len(saved_params) if isinstance(saved_params, list) else "no"
            return f"parameter group {index} has {count} parameters in the checkpoint but {len(own['params'])} here"
    return None


def _apply(path: str, objects: Mapping[str, Any], states: dict[str, Any], strict: bool) -> None:
    """Load each state; if one fails, give the objects loaded before it their copies back and raise."""
    order = sorted(states, key=lambda n: isinstance(objects[n], nn.Module))
    copies: dict[str, Any] = {}
    for name in order:
        obj = objects[name]
        try:
            if not isinstance(obj, nn.Module):
                copies[name] = copy.deepcopy(obj.state_dict())
            _load_one(obj, states[name], strict)
        except Exception as exc:
            for done in reversed(order[: order.index(name)]):
                if done in copies:
                    _load_one(objects[done], copies[done], strict)
            raise CheckpointError(
                f"could not restore {name!r} ({type(obj).__name__}) from {path}: {exc}; nothing was changed. "
                "Was the checkpoint written for a different setup (e.g. other optimizer parameter groups)?"
            ) from exc


def _load_one(obj: Any, state: Any, strict: bool) -> None:
    if isinstance(obj, nn.Module):
        dist.unwrap(obj).load_state_dict(state, strict=strict)
    elif isinstance(obj, torch.optim.Optimizer):
        _load_optimizer(obj, state)
    else:
        obj.load_state_dict(state)


def _strip_wrapper_prefixes(state: Mapping[str, Any], own_keys: set[str]) -> Mapping[str, Any]:
    """Drop `module.` / `_orig_mod.` key prefixes of state saved from a wrapped model by other tools."""
    for wrapper in ("module.", "_orig_mod."):
        if state and all(k.startswith(wrapper) for k in state) and not any(k.startswith(wrapper) for k in own_keys):
            state = {k[len(wrapper):]: v for k, v in state.items()}
    return state


def _module_mismatch(module: nn.Module, state: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and keys whose shapes differ between `module` and a saved state_dict."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        k
        for k in own
        if k in state and isinstance(own[k], torch.Tensor) and isinstance(state[k], torch.Tensor)
        and state[k].shape != own[k].shape
    ]
    return missing, unexpected, shapes


def _describe_mismatch(
    name: str, module: nn.Module, state: Mapping[str, Any], missing: list[str], unexpected: list[str], shapes: list[str]
) -> str:
    lines = [f"'{name}' does not match the checkpoint (was it saved from a different model?):"]
    if missing:
        lines.append(f"  missing keys (in the model, not in the checkpoint): {listed(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys (in the checkpoint, not in the model): {listed(unexpected)}")
    if shapes:
        own = module.state_dict()
        described = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in shapes]
        lines.append(f"  shape mismatches: {listed(described)}")
    return "\n".join(lines)


def _load_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`optimizer.load_state_dict`, keeping each hyperparameter as the optimizer has it now: a tensor stays
    the same tensor on its device with the saved value (a CUDA graph and a scheduler hold that very tensor;
    torch would put back the CPU copy from the file), a number stays a number, and the implementation flags
    (capturable, foreach, fused, differentiable) stay this run's."""
    before = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, old in zip(optimizer.param_groups, before):
        for key, was in old.items():
            now = group.get(key)
            if key in IMPLEMENTATION_FLAGS:
                group[key] = was  # how this run computes the step, not a state of training
            elif isinstance(was, torch.Tensor) and was.numel() == 1 and isinstance(now, (torch.Tensor, int, float)):
                was.fill_(now.item() if isinstance(now, torch.Tensor) else now)
                group[key] = was
            elif isinstance(was, (int, float)) and isinstance(now, torch.Tensor) and now.numel() == 1:
                group[key] = type(was)(now.item())


def _restored(path: str, payload: Mapping[str, Any], objects: Mapping[str, Any], states: Mapping[str, Any],
              restore_rng: bool) -> dict[str, Any]:
    """The last steps of a load, file or folder, once the objects hold the saved state: the trainer's pending
    epoch end, this rank's RNG streams; returns what was loaded (path, step, epoch, score)."""
    trainer = objects.get("trainer")
    if isinstance(trainer, Engine) and "trainer" in states:
        trainer.state.epoch_end_pending = payload.get("epoch_end_pending", False)
    if restore_rng and "rng" in payload:
        set_rng_state(_rng_of_this_rank(payload))
    return {"path": path, "step": payload["step"], "epoch": payload["epoch"], "score": payload.get("score")}

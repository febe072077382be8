"""A run's identity and how it ended: the record saved in its checkpoints, what may change on resume.

`fit` saves a `RunRecord` (the run id and its configuration) in every checkpoint, so that a resume can tell
*this* run's folder from another's and refuse a setting that differs; `RunResult` says how `fit` ended.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

RUN_KEY = "run"  # the entry of the saved objects that holds the run's identity and configuration
# Settings a resumed run may change honestly: how long it goes on, where and how fast it runs, what it shows.
MAY_DIFFER = frozenset({
    "max_epochs", "epochs", "resume", "checkpoint_dir", "logdir", "progress", "tensorboard", "checkpoint_every",
    "keep_last", "async_checkpoint", "max_iterations", "device", "num_workers", "data_root", "data_path", "compile",
    "cuda_graph", "channels_last", "show_plan", "log_every", "images", "histograms", "graph",
})  # fmt: skip


class RunError(Exception):
    """A run cannot start as asked (another run's folder, a setting that differs on resume); nothing was changed.

    `setting` names what is wrong ("tensorboard", "checkpoint_dir", or the differing config key), so that a
    command line can say which of its flags to change."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class RunRecord:
    """The run's identity and configuration, saved in each of its checkpoints as the object `"run"`."""

    def __init__(self, run_id: str, config: Mapping[str, Any] | None = None) -> None:
        self.run_id = run_id
        self.config = dict(config or {})

    def state_dict(self) -> dict[str, Any]:
        """The run id and its configuration (plain values only, so the file loads with weights_only=True)."""
        return {"run_id": self.run_id, "config": _plain(self.config)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take the saved run id and configuration; ValueError when the saved record is malformed."""
        problem = record_problem(state)
        if problem:
            raise ValueError(f"the run record {problem}")
        self.run_id = state["run_id"]
        self.config = dict(state["config"])


def record_problem(state: Any) -> str | None:
    """What is wrong with a saved run record (`{"run_id": str, "config": dict}`), or None."""
    if not isinstance(state, Mapping):
        return f"is a {type(state).__name__}, not a dict of run_id and config"
    if not isinstance(state.get("run_id"), str):
        return "has no run_id string"
    if "config" not in state:
        return "has no config"
    if not isinstance(state["config"], Mapping):
        return f"has a config that is a {type(state['config']).__name__}, not a dict of settings"
    return None


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    safe = (bool, int, float, str, type(None))

    def plain(value: Any) -> Any:
        if isinstance(value, safe):
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return str(value)

    return {str(k): plain(v) for k, v in config.items()}


@dataclass
class RunResult:
    """How `fit` ended: the process exit status to use, why it stopped, and where its files are."""

    exit_status: int
    finished: bool
    stop_reason: str | None
    run_id: str
    checkpoint_dir: str | None
    logdir: str | None
    resumed_from: str | None


def differing(saved: Mapping[str, Any], config: Mapping[str, Any], may_differ: Iterable[str] = MAY_DIFFER) -> list:
    """`(key, saved value, new value)` for each setting of `config` that differs from `saved` and may not."""
    allowed = set(may_differ)
    plain = _plain(config)
    return [(k, saved[k], config[k]) for k in plain if k in saved and k not in allowed and saved[k] != plain[k]]


def epoch_of(state: Any) -> int:
    """The epoch that the state's iteration belongs to (1-based), so a stop and its resume name the same one."""
    length = state.epoch_length
    if length:
        return max(1, -(-state.iteration // length))
    return state.epoch


def finished(state: Any) -> bool:
    """Whether every iteration of the run's `max_epochs` is done."""
    if state.max_epochs is None:
        return False
    if state.epoch_length:
        return state.iteration >= state.epoch_length * state.max_epochs
    return state.epoch >= state.max_epochs

"""Saving in the background: a snapshot of a checkpoint's states in host memory, written by one worker thread.

`HostSnapshot.take` copies a payload (nested dicts, lists and tuples of tensors and plain values) so that
training may change every object right afterwards: tensors go into host buffers that are kept and reused by
the next snapshot of the same shapes (page-locked, "pinned", when the source is on a GPU, so that the copy
runs without blocking the step); everything else is deep-copied. `AsyncWriter` runs a write function on such
a snapshot in a thread of its own, at most one at a time: `submit` waits for the write in flight before it
starts the next one, and a write's error is kept until `raise_failure` or `wait` reports it, once.

The writer holds no storage logic of its own: it runs whatever write it is given (the `Checkpoint` handler
gives it the synchronous path, `CheckpointFolder.write`), so a background save is the same temp file,
fsync, check, rename and folder fsync as a synchronous one.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

Path = tuple[Any, ...]


class HostSnapshot:
    """Copies of nested states in host memory, into buffers reused from one snapshot to the next.

    A buffer is reused for the tensor found at the same place of the payload with the same shape and dtype;
    buffers no longer used are freed. The same memory found twice (tied weights) is copied once. Tensors of
    another layout (sparse) or of a tensor subclass are copied without reuse.
    """

    def __init__(self) -> None:
        self._buffers: dict[Path, torch.Tensor] = {}
        self.nbytes = 0  # host bytes of the last snapshot's tensors (reused buffers and one-off copies)
        self._unpooled = 0
        self.pinned = False  # whether any buffer is page-locked (a GPU source)
        self._events: dict[torch.device, Any] = {}

    def take(self, payload: Any) -> Any:
        """A copy of `payload` that later changes to the live objects cannot reach; call `ready` before reading
        its tensors in another thread (copies from a GPU may still be under way)."""
        used: dict[Path, torch.Tensor] = {}
        self._events = {}
        self._unpooled = 0
        copied = self._copy(payload, (), used, {})
        for device, event in self._events.items():  # after the copies, on the stream that runs the step
            event.record(torch.cuda.current_stream(device))
        self._buffers = used
        self.nbytes = sum(t.numel() * t.element_size() for t in used.values()) + self._unpooled
        self.pinned = any(t.is_pinned() for t in used.values()) if torch.cuda.is_available() else False
        return copied

    def ready(self) -> None:
        """Wait for the copies from GPUs that `take` started (stream-ordered, so they hold the values of the time
        of `take` whatever the step has done since)."""
        for event in self._events.values():
            event.synchronize()

    def _copy(self, obj: Any, path: Path, used: dict[Path, torch.Tensor], seen: dict[int, Any]) -> Any:
        if isinstance(obj, torch.Tensor):
            same = (obj.device, obj.dtype, obj.data_ptr(), obj.shape, obj.stride()) if obj.data_ptr() else id(obj)
            if same not in seen:  # a state_dict detaches each entry: tied weights are two views of one memory
                seen[same] = self._tensor(obj, path, used)
            return seen[same]
        if isinstance(obj, dict):
            out = copy.copy(obj)  # keeps the type and attributes (a state_dict's `_metadata`)
            if hasattr(out, "__dict__"):
                out.__dict__ = copy.deepcopy(obj.__dict__)
            for key, value in obj.items():
                out[key] = self._copy(value, (*path, key), used, seen)
            return out
        if isinstance(obj, list):
            return [self._copy(v, (*path, i), used, seen) for i, v in enumerate(obj)]
        if type(obj) is tuple:
            return tuple(self._copy(v, (*path, i), used, seen) for i, v in enumerate(obj))
        return copy.deepcopy(obj)

    def _tensor(self, t: torch.Tensor, path: Path, used: dict[Path, torch.Tensor]) -> torch.Tensor:
        t = t.detach()
        if type(t) is not torch.Tensor or t.layout is not torch.strided or t.is_quantized:
            out = t.to("cpu", copy=True)  # a DTensor stays a DTensor: this rank's shard, copied
            local = out.to_local() if hasattr(out, "to_local") else out
            if local.layout is torch.strided:
                self._unpooled += local.numel() * local.element_size()
            return out
        on_gpu = t.device.type == "cuda"
        buffer = self._buffers.get(path)
        if buffer is None or buffer.shape != t.shape or buffer.dtype != t.dtype or buffer.is_pinned() != on_gpu:
            buffer = torch.empty(t.shape, dtype=t.dtype, pin_memory=on_gpu)
        buffer.copy_(t, non_blocking=on_gpu)
        if on_gpu and t.device not in self._events:
            self._events[t.device] = torch.cuda.Event()
        used[path] = buffer
        return buffer


class AsyncWriter:
    """One background write at a time: `submit(snapshot, write)` runs `write(snapshot)` in a thread and returns.

    A second `submit` first waits for the write in flight. A write that raises keeps its error: `raise_failure`
    raises it once (the next step does), `wait` too after waiting. The thread is not a daemon, so the process
    does not exit half-way through a write; a kill leaves the temp file that the next run removes.
    """

    def __init__(self, name: str = "ember-checkpoint-writer") -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.reported: BaseException | None = None  # the last error raised by `raise_failure`
        self.waited = 0.0  # seconds `submit` and `wait` have spent waiting for a write in flight

    @property
    def busy(self) -> bool:
        """Whether a write is in flight."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, snapshot: Any, write: Callable[[Any], Any], done: Callable[[Any], None] | None = None) -> None:
        """Wait for the write in flight (raising its error, if it failed), then start `write(snapshot)` in the
        background; `done(result)` runs in that thread when it succeeds."""
        self.wait()

        def run() -> None:
            try:
                result = write(snapshot)
                if done is not None:
                    done(result)
            except BaseException as exc:  # noqa: BLE001 - kept and raised in the training thread
                self._error = exc

        self._thread = threading.Thread(target=run, name=self.name)
        self._thread.start()

    def wait(self) -> None:
        """Block until the write in flight (if any) has finished; raise its error if it failed (once)."""
        thread = self._thread
        if thread is not None:
            if thread.is_alive():
                start = time.perf_counter()
                thread.join()
                self.waited += time.perf_counter() - start
            self._thread = None
        self.raise_failure()

    def raise_failure(self) -> None:
        """Raise the error of a finished write that failed, once; nothing while it is still running."""
        if self._error is not None and not self.busy:
            error, self._error = self._error, None
            self.reported = error
            raise error

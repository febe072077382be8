"""What the report says about the machine: other processes' CPU load, the CPU's name, native bf16."""

from __future__ import annotations

import os
import platform
import time

import torch


class OtherLoad:
    """CPU used by other processes while a run goes on, as a share of all CPUs (Linux /proc/stat; else None).

    The machine's busy time minus this process's own (threads and DataLoader workers included): a busy
    neighbour slows every loop, above all those whose 2-thread kernels wait on a descheduled thread.
    """

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return busy / os.sysconf("SC_CLK_TCK"), own, time.perf_counter()

    def share(self) -> float | None:
        """Other processes' CPU seconds per wall second per CPU since construction, 0..1."""
        end = self._read()
        if self._start is None or end is None or end[2] <= self._start[2]:
            return None
        other = (end[0] - self._start[0]) - (end[1] - self._start[1])
        return min(max(other / ((end[2] - self._start[2]) * (os.cpu_count() or 1)), 0.0), 1.0)


def native_bf16_cpu() -> bool:
    """Whether oneDNN runs bf16 matrix products natively on this CPU (else bf16 autocast only slows it down)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

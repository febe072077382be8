"""The set-up check (Python, packages, CUDA, data) and the machine's description (GPU, driver, clocks)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_check.parts import Context

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "torchvision", "pytorch-ignite", "tensorboard", "tqdm", "numpy", "pytest", "pytest-timeout",
            "pytorch-lightning")
NEEDED = ("torch", "torchvision", "pytorch-ignite", "tensorboard", "tqdm", "numpy")
SMI_FIELDS = ("name", "driver_version", "pstate", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem",
              "power.draw", "power.limit", "temperature.gpu", "memory.total", "persistence_mode")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def commit() -> str:
    """The commit the tree was made from: git's, else the one benchmarks/gpu_carry.sh wrote into the carry."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10)
        if head.returncode == 0 and head.stdout.strip():
            return head.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    carried = REPO / os.environ.get("EMBER_GPU_CARRY", ".gpu-carry") / "COMMIT"
    return carried.read_text().strip() if carried.is_file() else "unknown"


def data_place() -> tuple[bool, str]:
    """Whether ember finds FashionMNIST (the parts' data), and where or why not."""
    from ember.data import DataNotFoundError, load_dataset

    try:
        test = load_dataset("fashion-mnist", False, download=False)
    except DataNotFoundError as err:
        return False, str(err)
    return True, f"{len(test)} test images in {getattr(test, 'root', '?')}"


def setup(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    """What the other parts need: the packages, CUDA (and how many GPUs), FashionMNIST."""
    versions = {name: _version(name) for name in PACKAGES}
    cuda = torch.cuda.is_available()
    found, where = data_place()
    data = {"python": sys.version.split()[0], "executable": sys.executable, "packages": versions,
            "cuda_available": cuda, "gpu_count": torch.cuda.device_count() if cuda else 0,
            "gpu_name": torch.cuda.get_device_name(0) if cuda else None, "data_found": found, "data": where,
            "commit": commit(), "EMBER_DATA": os.environ.get("EMBER_DATA")}
    missing = [name for name in NEEDED if versions[name] is None]
    lines = [f"Python {data['python']} ({sys.executable}); "
             + ", ".join(f"{k} {v or 'MISSING'}" for k, v in versions.items()),
             "", f"CUDA: {'yes, ' + str(data['gpu_count']) + ' GPU(s), ' + data['gpu_name'] if cuda else 'no'}",
             "", f"FashionMNIST: {where}"]
    if missing or not found:
        what = ([f"missing package(s) {', '.join(missing)}"] if missing else []) + ([] if found else ["no data"])
        return f"failed: {'; '.join(what)} (benchmarks/gpu_carry.sh prepares both)", "\n".join(lines), data
    if not cuda and not ctx.dry:
        return "failed: no CUDA device", "\n".join(lines), data
    return "passed", "\n".join(lines), data


def nvidia_smi() -> dict[str, str] | str:
    """nvidia-smi's reading of GPU 0 (name, driver, clocks, power, temperature), or why there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi not found"
    try:
        got = subprocess.run([exe, f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"nvidia-smi failed: {err}"
    if got.returncode != 0:
        return f"nvidia-smi failed: {(got.stderr or got.stdout).strip()[:200]}"
    values = [v.strip() for v in got.stdout.splitlines()[0].split(",")]
    return dict(zip(SMI_FIELDS, values))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(ctx: Context) -> tuple[str, str, dict[str, Any]]:
    """GPU name, memory, SM count, driver, CUDA, cuDNN, torch and Python versions, clocks where readable."""
    data: dict[str, Any] = {"torch": torch.__version__, "cuda_runtime": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                            "python": sys.version.split()[0], "platform": platform.platform(),
                            "cpu": cpu_name(), "cpu_count": os.cpu_count(), "commit": commit(),
                            "packages": {n: _version(n) for n in PACKAGES}}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        data.update(gpu_name=props.name, gpu_count=torch.cuda.device_count(),
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), sm_count=props.multi_processor_count,
                    capability=f"{props.major}.{props.minor}")
    else:
        data["gpu_name"] = None
    data["nvidia_smi"] = nvidia_smi()
    rows = [("GPU", data.get("gpu_name") or "none (no CUDA device)")]
    if data.get("gpu_name"):
        rows += [("GPUs", data["gpu_count"]), ("memory", f"{data['gpu_memory_gib']} GiB"),
                 ("SMs", data["sm_count"]), ("compute capability", data["capability"])]
    smi = data["nvidia_smi"]
    if isinstance(smi, dict):
        rows += [(f"nvidia-smi {k}", v) for k, v in smi.items() if k != "name"]
    else:
        rows.append(("nvidia-smi", smi))
    rows += [("CUDA runtime (torch)", data["cuda_runtime"]), ("cuDNN", data["cudnn"]), ("torch", data["torch"]),
             ("pytorch-ignite", data["packages"]["pytorch-ignite"]), ("Python", data["python"]),
             ("CPU", f"{data['cpu']} ({data['cpu_count']} logical CPUs)"), ("OS", data["platform"]),
             ("ember commit", data["commit"])]
    markdown = "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
    return "measured", markdown, data

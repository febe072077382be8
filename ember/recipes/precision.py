"""Whether a device computes a reduced precision natively, and the one-line warning for `--amp` where it does not.

On a CPU without AVX512-BF16 or AMX, bf16 autocast is emulated (each product converts to float32 and back), and
fp16 is emulated on every CPU without AMX-FP16: training runs about 3x slower than in float32, with nothing to say
so but the clock. GPUs that autocast support it natively (bf16 on CUDA where `torch.cuda.is_bf16_supported()`).
"""

from __future__ import annotations

import torch

_CPU_NATIVE = {"bf16": ("_is_avx512_bf16_supported", "_is_amx_tile_supported"), "fp16": ("_is_amx_fp16_supported",)}
_CPU_UNITS = {"bf16": "AVX512-BF16 or AMX", "fp16": "AMX-FP16"}


def native_amp(amp: str, device: torch.device) -> bool:
    """Whether `device` computes `amp` ("bf16" or "fp16") natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported() if amp == "bf16" else True
    if device.type != "cpu":
        return True  # nothing known to say
    return any(getattr(torch.cpu, name, lambda: False)() for name in _CPU_NATIVE[amp])


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16/AMX."""
    return native_amp("bf16", device)


def slow_amp_warning(amp: str | None, device: torch.device) -> str | None:
    """One line saying that `--amp` will slow this run down, or None where the device computes it natively."""
    if amp is None or native_amp(amp, device):
        return None
    units = _CPU_UNITS.get(amp, "native support") if device.type == "cpu" else f"native {amp}"
    return (f"ember: warning: --amp {amp} on this {device.type}, which has no {units}: {amp} is emulated, "
            f"about 3x slower than float32; drop --amp to train in float32")

"""`--amp` on a device without native support for it says so in one line (it runs about 3x slower)."""

from __future__ import annotations

import pytest
import torch
from fakedata import offline, write_fashion_mnist

from ember.recipes.cli import main
from ember.recipes.precision import native_amp, slow_amp_warning

CPU = torch.device("cpu")


def cpu_units(monkeypatch: pytest.MonkeyPatch, *supported: str) -> None:
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda name=name: name in supported, raising=False)


def test_a_cpu_without_the_units_gets_a_warning_and_one_with_them_none(monkeypatch):
    cpu_units(monkeypatch)
    assert slow_amp_warning("bf16", CPU) == (
        "ember: warning: --amp bf16 on this cpu, which has no AVX512-BF16 or AMX: bf16 is emulated, about 3x slower "
        "than float32; drop --amp to train in float32")
    assert "--amp fp16" in slow_amp_warning("fp16", CPU) and "AMX-FP16" in slow_amp_warning("fp16", CPU)
    assert slow_amp_warning(None, CPU) is None
    cpu_units(monkeypatch, "_is_avx512_bf16_supported")
    assert native_amp("bf16", CPU) and slow_amp_warning("bf16", CPU) is None
    assert slow_amp_warning("fp16", CPU) is not None
    cpu_units(monkeypatch, "_is_amx_tile_supported", "_is_amx_fp16_supported")
    assert slow_amp_warning("bf16", CPU) is None and slow_amp_warning("fp16", CPU) is None


def test_ember_train_prints_the_warning_once(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    offline(monkeypatch, tmp_path)
    write_fashion_mnist(tmp_path / "fashion", n_train=128, n_test=64)
    cpu_units(monkeypatch)
    rc = main(["train", "fashion-mnist-mlp", "--data-root", "fashion", "--amp", "bf16", "--device", "cpu",
               "--max-iterations", "1", "--no-tensorboard", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    warned = [line for line in err.splitlines() if "--amp bf16" in line]
    assert warned == [slow_amp_warning("bf16", CPU)], err

"""The throughput benchmark harness runs end to end on tiny configurations (its speed is not tested here)."""

import json

import pytest
import torch
from fakedata import write_fashion_mnist

from benchmarks.throughput import cli as throughput

STATS = {"median", "min", "max"}


def rows(printed: str) -> dict[str, str]:
    """Table rows of the printed report by loop name."""
    return {line.split("|")[1].strip(): line for line in printed.splitlines() if line.startswith("| ")}


def test_mlp_benchmark_prints_every_loop_and_writes_json(tmp_path, capsys):
    write_fashion_mnist(tmp_path / "fmnist", n_train=512, n_test=256)
    out = tmp_path / "throughput.json"
    argv = ["--device", "cpu", "--recipe", "fashion-mnist-mlp", "--data-root", str(tmp_path / "fmnist"),
            "--limit-samples", "512", "--repeats", "1", "--epochs", "1", "--retries", "0", "--json", str(out)]
    assert throughput.main(argv) == 0
    printed = capsys.readouterr().out
    table = rows(printed)
    assert {"seed", "ignite", "lightning", "ember-dataloader", "ember"} <= set(table)
    assert "ember-fast-compile" not in table  # CUDA-only rows are left out on the CPU unless asked for
    if throughput.native_bf16_cpu():
        assert "skipped" not in table["ember-fast"]
    else:
        assert "skipped: this CPU has no native bf16 arithmetic" in table["ember-fast"]
    assert "train samples/s" in table["loop"] and "× seed" in table["loop"]
    report = json.loads(out.read_text())
    for key in ("recipe", "device", "device_name", "machine", "torch", "date", "data", "train_samples",
                "test_samples", "batch_size", "epochs", "repeats", "torch_threads", "loops", "skipped"):
        assert key in report, key
    assert report["train_samples"] == 512 and report["test_samples"] == 256 and report["batch_size"] == 64
    assert report["torch"] == torch.__version__
    measured = set(report["loops"])
    assert {"seed", "ember-dataloader", "ember", "ignite"} <= measured
    assert "lightning" in measured or "lightning" in report["skipped"]
    for name, row in report["loops"].items():
        for key in ("train_samples_per_s", "eval_samples_per_s", "epoch_s", "test_accuracy_pct"):
            assert set(row[key]) == STATS, (name, key)
            assert row[key]["min"] <= row[key]["median"] <= row[key]["max"]
        assert row["train_samples_per_s"]["median"] > 0
    assert report["loops"]["seed"]["train_ratio_to_seed"] == pytest.approx(1.0)
    # no loop evaluates faster than the bare forward pass or trains faster than the bare step on the same data
    # (ember's clock once stopped after Evaluate: eval samples/s in the billions, train time including eval)
    assert set(report["bare_floor"]) == {"train_samples_per_s", "eval_samples_per_s"}
    assert throughput.implausible(report) == []
    assert "IMPLAUSIBLE" not in printed and "Bare floor on ready-made batches" in printed
    # same model, initial weights, data and order: the seed loop and ember end at the same accuracy
    accuracy = {name: row["test_accuracy_pct"]["median"] for name, row in report["loops"].items()}
    assert accuracy["ember"] == pytest.approx(accuracy["seed"], abs=0.5)
    assert accuracy["ember-dataloader"] == pytest.approx(accuracy["seed"], abs=0.5)
    if "ember-fast" in accuracy:  # bf16 products round differently: a few of the 256 test images may flip
        assert accuracy["ember-fast"] == pytest.approx(accuracy["seed"], abs=3.0)


def test_a_rate_above_the_bare_floor_is_reported_as_implausible():
    def row(train, evaluate):
        return {"train_samples_per_s": {"median": train}, "eval_samples_per_s": {"median": evaluate}}

    floor = {"train_samples_per_s": 20_000.0, "eval_samples_per_s": 80_000.0}
    report = {"bare_floor": floor, "loops": {"seed": row(8_000, 11_000), "ember": row(17_000, 6_443_298_672),
                                             "ember-dataloader": row(150_000, 11_000),
                                             "ember-fast": row(60_000, 300_000)}}
    problems = throughput.implausible(report)
    assert len(problems) == 2
    assert problems[0].startswith("ember: eval_samples_per_s 6,443,298,672 is over 5x the bare forward pass")
    assert problems[1].startswith("ember-dataloader: train_samples_per_s 150,000 is over 5x the bare training step")
    assert "IMPLAUSIBLE: ember: eval_samples_per_s" in throughput.render(
        {**report, "recipe": "r", "seed_program": "000", "device": "cpu", "device_name": "x", "train_samples": 1,
         "test_samples": 1, "data": "d", "batch_size": 1, "epochs": 1, "warmup_epochs": 0, "repeats": 1,
         "torch": "t", "torch_threads": 1, "date": "d", "skipped": {},
         "loops": {name: {**r, "epoch_s": {"median": 1, "min": 1, "max": 1},
                          "train_samples_per_s": {**r["train_samples_per_s"], "min": 1, "max": 1},
                          "eval_samples_per_s": {**r["eval_samples_per_s"], "min": 1, "max": 1},
                          "test_accuracy_pct": {"median": 1}, "other_processes_cpu_pct": None}
                   for name, r in report["loops"].items()}})


def test_cifar_benchmark_uses_generated_data_when_the_files_are_absent(tmp_path, capsys):
    argv = ["--recipe", "cifar10-cnn", "--data-root", str(tmp_path / "empty"), "--limit-samples", "256",
            "--repeats", "1", "--retries", "0", "--num-workers", "0",
            "--loops", "seed,ember,ember-fast,ember-fast-compile"]
    assert throughput.main(argv) == 0
    printed = capsys.readouterr().out
    assert "generated data of CIFAR-10's shape" in printed
    table = rows(printed)
    assert {"seed", "ember"} <= set(table)
    assert "skipped: needs --device cuda" in table["ember-fast-compile"]
    assert ("skipped" not in table["ember-fast"]) == throughput.native_bf16_cpu()


def test_unknown_loop_is_refused(capsys):
    with pytest.raises(SystemExit):
        throughput.main(["--loops", "seed,tensorflow"])
    assert "tensorflow" in capsys.readouterr().err


def test_epoch_defaults_leave_a_warm_up_epoch_out_on_cuda_only(monkeypatch):
    seen = {}
    monkeypatch.setattr(throughput, "measure", lambda args: seen.update(vars(args)) or {})
    monkeypatch.setattr(throughput, "render", lambda report: "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert throughput.main(["--device", "cuda"]) == 0
    assert (seen["epochs"], seen["warmup_epochs"]) == (2, 1)
    assert throughput.main(["--device", "cpu"]) == 0
    assert (seen["epochs"], seen["warmup_epochs"]) == (1, 0)
    assert throughput.main(["--device", "cuda", "--warmup-epochs", "2"]) == 0
    assert (seen["epochs"], seen["warmup_epochs"]) == (3, 2)
    with pytest.raises(SystemExit):
        throughput.main(["--device", "cuda", "--epochs", "1"])  # nothing left to time

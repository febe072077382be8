"""The GPU check (benchmarks/gpu_check.sh): its CPU dry run end to end, its time limits, its report's goals and
the carry folder it is fed on the lent GPU machine."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
from fakedata import write_fashion_mnist

from benchmarks.gpu_check import cli
from benchmarks.gpu_check.parts import BY_NAME, NO_CUDA, PARTS
from benchmarks.gpu_check.report import goals

REPO = Path(__file__).resolve().parents[2]
CUDA_ONLY = {"cuda-tests", "sync-free", "graph-vs-eager", "ddp-nccl", "launch-limit"}


def test_cpu_dry_run_writes_the_report_and_a_json_per_part_with_cuda_parts_skipped(tmp_path):
    write_fashion_mnist(tmp_path / "fmnist", n_train=256, n_test=128)
    env = dict(os.environ, EMBER_PYTHON=sys.executable, EMBER_DATA=str(tmp_path / "fmnist"), EMBER_OFFLINE="1",
               EMBER_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "out"
    got = subprocess.run([str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--cpu-dry-run"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert got.returncode == 0, got.stdout + got.stderr
    assert got.stdout.splitlines()[-1] == str(out / "report.md")  # the report's path comes last
    records = {p.name: json.loads((out / f"{p.name}.json").read_text()) for p in PARTS}
    statuses = {name: rec["status"] for name, rec in records.items()}
    assert statuses == {name: NO_CUDA if name in CUDA_ONLY else "passed" if name == "setup" else "measured"
                        for name in statuses}, (statuses, (out / "logs" / "setup.log").read_text()[-3000:])
    assert all(rec["mode"] == "cpu-dry-run" and rec["seconds"] > 0 for n, rec in records.items() if n != "ddp-nccl")
    # what each part found or measured is real, not a placeholder
    tests = records["cuda-tests"]["data"]["tests"]
    assert len(tests) >= 5 and {t["outcome"] for t in tests.values()} == {"skipped: needs a CUDA device"}
    assert any("test_cuda_graph_step_matches_the_eager_step" in nodeid for nodeid in tests)
    syncs = records["sync-free"]["data"]["recipes"]
    assert syncs["fashion-mnist-mlp"]["exit_code"] == 0 and syncs["fashion-mnist-mlp"]["output_iterations"] == [1]
    assert syncs["fashion-mnist-cnn"]["exit_code"] == 0
    assert {r["agree"] for r in records["graph-vs-eager"]["data"]["recipes"].values()} == {True}
    for recipe in ("throughput-mlp", "throughput-cnn"):
        loops = records[recipe]["data"]["loops"]
        assert {"seed", "ignite", "ember"} <= set(loops)
        assert all(row["train_samples_per_s"]["median"] > 0 for row in loops.values())
        assert records[recipe]["data"]["skipped"]["ember-fast-compile"] == "needs --device cuda"
    assert records["launch-limit"]["data"]["kernels_per_iteration"] > 0
    assert records["speedrun"]["data"]["variants"]["eager"]["runs"][0]["exit_code"] == 0
    assert records["machine"]["data"]["gpu_name"] is None and records["machine"]["data"]["torch"]
    report = (out / "report.md").read_text()
    assert report.startswith("# ember GPU check: CPU dry run")
    for name, status in statuses.items():
        assert f"| {name} | {status} |" in report
        assert f"(`{name}`): {status}" in report
    assert "Not evaluated in a CPU dry run." in report


FAKE_WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from benchmarks.gpu_check.parts import BY_NAME, record, write_record

    out, mode, names = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    for name in names:
        part = BY_NAME[name]
        write_record(out, record(part, "running", "half", {"partial": True}, 0.0, True))
        if name == "sync-free":
            (out / "sleeper.pid").write_text(str(os.getpid()))
            time.sleep(120)
        if name == "graph-vs-eager":
            os._exit(3)
        write_record(out, record(part, "passed", "done", {"pid": os.getpid()}, 0.1, True))
""")


def test_a_part_over_its_limit_or_crashing_ends_alone_and_the_next_parts_run(tmp_path, monkeypatch, capsys):
    (tmp_path / "fake_worker.py").write_text(FAKE_WORKER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(cli.Runner, "worker_module", "fake_worker")
    monkeypatch.setattr(cli, "BY_NAME", {n: dataclasses.replace(p, dry_timeout_s=3) for n, p in BY_NAME.items()})
    names = ["setup", "sync-free", "graph-vs-eager", "ddp-nccl", "machine"]
    out = tmp_path / "out"
    assert cli.main([str(out), "--cpu-dry-run", "--parts", ",".join(names)]) == 0
    records = {n: json.loads((out / f"{n}.json").read_text()) for n in names}
    assert records["setup"]["status"] == "passed"
    assert records["sync-free"]["status"] == "timeout: stopped at its limit of 3 s"
    assert records["sync-free"]["data"] == {"partial": True}  # what it had saved is kept
    assert records["graph-vs-eager"]["status"].startswith("error: the worker process ended (exit status 3)")
    assert records["ddp-nccl"]["status"] == records["machine"]["status"] == "passed"
    # the parts after each stop ran in a new worker; the one stopped at its limit is gone
    assert records["setup"]["data"]["pid"] != records["ddp-nccl"]["data"]["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(int((out / "sleeper.pid").read_text()), 0)
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == str(out / "report.md")
    assert [line.split()[1] for line in printed[:-1]] == names


def test_sigterm_stops_the_worker_and_still_writes_the_report(tmp_path):
    (tmp_path / "fake_worker.py").write_text(FAKE_WORKER)
    (tmp_path / "driver.py").write_text(textwrap.dedent("""
        import sys
        from benchmarks.gpu_check import cli
        cli.Runner.worker_module = "fake_worker"
        raise SystemExit(cli.main(sys.argv[1:]))
    """))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(out), "--cpu-dry-run", "--parts",
                             "setup,sync-free,machine"], env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "sleeper.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    printed, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert printed.splitlines()[-1] == str(out / "report.md") and (out / "report.md").is_file()
    status = {n: json.loads((out / f"{n}.json").read_text())["status"] for n in ("setup", "sync-free", "machine")}
    assert status == {"setup": "passed", "sync-free": "stopped: the run got SIGTERM",
                      "machine": "skipped: the run was stopped (SIGTERM)"}
    with pytest.raises(ProcessLookupError):
        os.kill(int((out / "sleeper.pid").read_text()), 0)


def test_parts_outside_the_budget_are_skipped_and_unknown_parts_refused(tmp_path, capsys):
    assert cli.main([str(tmp_path), "--budget-s", "0", "--parts", "machine"]) == 0
    assert json.loads((tmp_path / "machine.json").read_text())["status"].startswith("skipped: out of the time budget")
    with pytest.raises(SystemExit):
        cli.main([str(tmp_path), "--parts", "machine,warp-drive"])
    assert "unknown or no part(s) ['warp-drive']" in capsys.readouterr().err


def _throughput(**train: float) -> dict:
    return {"data": {"loops": {k: {"train_samples_per_s": {"median": v}} for k, v in train.items()}}}


def test_goals_are_judged_from_the_parts_figures():
    records = {"throughput-mlp": _throughput(seed=10_000, ignite=60_000, ember=120_000, **{"ember-fast": 200_000}),
               "launch-limit": {"data": {"epoch_over_limit": 1.5}},
               "speedrun": {"data": {"variants": {"eager": {"time_to_target_s": {"median": 3.1}},
                                                  "cuda-graph": {"time_to_target_s": {"median": 1.8}}}}}}
    rows = {goal.split(" (")[0]: (measured, met) for goal, measured, met in goals(records)}
    assert rows["ember ≥ 10× the seed's loop"] == ("12.00×", "yes")
    assert rows["ember ≥ 1.5× Ignite"] == ("2.00×", "yes")
    assert rows["ember-fast ≥ 2× ember"] == ("1.67×", "**no**")
    assert rows["CUDA-graph epoch of the tutorial MLP within 2× the launch limit"] == ("1.50× the limit", "yes")
    assert rows["speed run to 92% in under 2 s of training"] == ("1.80 s", "yes")
    assert {met for _, _, met in goals({})} == {"-"}  # nothing measured: nothing judged


def test_carry_folder_holds_the_data_and_commit_and_respects_the_size_limit(tmp_path):
    write_fashion_mnist(tmp_path / "fmnist", n_train=64, n_test=32)
    env = dict(os.environ, EMBER_DATA=str(tmp_path / "fmnist"), EMBER_CARRY_NO_WHEELS="1")
    script = str(REPO / "benchmarks" / "gpu_carry.sh")
    got = subprocess.run([script, str(tmp_path / "carry")], env=env, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    assert sorted(p.name for p in (tmp_path / "carry" / "fashion-mnist").iterdir()) == sorted(
        f"{n}.gz" for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                            "t10k-labels-idx1-ubyte"))
    assert (tmp_path / "carry" / "COMMIT").read_text().strip()
    assert "would travel (limit 64 MiB)" in got.stdout
    too_small = subprocess.run([script, str(tmp_path / "carry")], env=dict(env, EMBER_CARRY_LIMIT_MIB="0"),
                               capture_output=True, text=True, timeout=120)
    assert too_small.returncode == 1 and "over the device tool's limit of 0 MiB" in too_small.stderr
    missing = subprocess.run([script, str(tmp_path / "carry")], env=dict(env, EMBER_DATA=str(tmp_path)),
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "is not in" in missing.stderr


def test_sync_probe_counts_each_sync_for_its_iteration_and_tells_quiet_iterations_from_loud_ones():
    import torch
    from torch import nn

    from benchmarks.gpu_check.correctness import SyncProbe, watching
    from ember.engine import Events
    from ember.steps import create_trainer

    probe = SyncProbe(watch=4, cuda=False)

    def sync():  # what torch does under torch.cuda.set_sync_debug_mode("warn")
        warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=2)

    def batches():  # fetching the batch of iteration 3 syncs: it counts for iteration 3
        for i in range(1, 7):
            if i == 3:
                sync()
            yield torch.randn(2, 3), torch.tensor([0, 1])

    model = nn.Linear(3, 2)
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.cross_entropy)

    def handler(engine):
        i = engine.state.iteration
        if i == 2:
            print("loss printed")
            sync()
        if i in (4, 5):  # 4 is quiet; 5 is past the watched iterations
            sync()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    with watching(probe):
        probe.attach(trainer)
        trainer.run(batches(), max_epochs=1, epoch_length=6)
    assert probe.output == {2}
    assert {i: len(s) for i, s in probe.syncs.items()} == {2: 1, 3: 1, 4: 1}
    stack = probe.syncs[4][0]  # where the sync came from: the calling line, the engine's frames before it
    assert stack[-1].endswith(" sync") and len(stack) >= 2, stack

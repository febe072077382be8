"""The Ignite-suite runner's pieces (the run itself is `make ignite-suite`, minutes long, outside `make test`)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

import ignite_suite  # noqa: E402


def test_plugin_puts_embers_engines_in_ignites_place_and_counts_the_engines_built(tmp_path):
    (tmp_path / "test_probe.py").write_text(textwrap.dedent("""
        import ignite.engine
        import ignite.handlers.param_scheduler as param_scheduler
        from ignite.engine import DeterministicEngine, Engine, Events, create_supervised_trainer

        import ember
        import ember.steps


        def test_probe():
            assert Engine is ember.Engine and ignite.engine.engine.Engine is ember.Engine
            assert param_scheduler.Engine is ember.Engine  # imported by Ignite before the plugin ran
            assert DeterministicEngine is ember.steps.DeterministicEngine  # the one ember ships, not a reload
            assert Events is ember.Events
            model = __import__("torch").nn.Linear(1, 1)
            opt = __import__("torch").optim.SGD(model.parameters(), lr=0.1)
            assert isinstance(create_supervised_trainer(model, opt, lambda a, b: a.sum()), ember.Engine)
            values = param_scheduler.ReduceLROnPlateauScheduler.simulate_values(  # builds an Engine inside
                4, [1.0, 1.0, 1.0, 1.0], 0.1, save_history=False, patience=0)
            assert len(values) == 4


        def test_plain():
            ember.engine.engine.IgniteEngine(lambda e, b: None)  # Ignite's own class, which ember's module keeps


        @__import__("pytest").mark.xfail(reason="probe")
        def test_xpasses():
            pass
    """))
    env = {"PYTHONPATH": str(TOOLS), "PATH": "/usr/bin:/bin", "IGNITE_SUITE_OUTCOMES": str(tmp_path / "out.json"),
           "IGNITE_SUITE_ENGINES": str(tmp_path / "engines.json")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "ember_ignite_plugin", "-p",
                           "ignite_suite_offline", "-p", "no:cacheprovider", str(tmp_path / "test_probe.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    engines = json.loads((tmp_path / "engines.json").read_text())
    assert engines["ember"] >= 2 and engines["ignite"] == 1
    assert list(engines["plain_ignite_by_test"]) == ["test_probe.py::test_plain"]
    assert "engines built: " in done.stdout and "1 plain Ignite" in done.stdout
    outcomes = json.loads((tmp_path / "out.json").read_text())
    assert outcomes == {"test_probe.py::test_probe": "passed", "test_probe.py::test_plain": "passed",
                        "test_probe.py::test_xpasses": "xpassed"}


def test_offline_plugin_refuses_the_network_and_allows_local_sockets(tmp_path):
    """DataLoader workers pass tensors over AF_UNIX sockets, and a test's own server listens on loopback."""
    (tmp_path / "test_net.py").write_text(textwrap.dedent("""
        import socket

        import pytest
        import torch
        from torch.utils.data import DataLoader


        def test_local_and_remote():
            server = socket.socket()
            server.bind(("127.0.0.1", 0))
            server.listen()
            socket.create_connection(server.getsockname(), timeout=5).close()
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as remote, pytest.raises(OSError, match="disabled"):
                remote.connect(("192.0.2.1", 80))
            with pytest.raises(OSError, match="disabled"):
                socket.create_connection(("example.org", 80))
            with pytest.raises(OSError):
                socket.getaddrinfo("example.org", 80)
            batches = list(DataLoader(torch.arange(8.0), batch_size=4, num_workers=2))
            assert torch.equal(torch.cat(batches), torch.arange(8.0))
    """))
    env = {"PYTHONPATH": str(TOOLS), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "ignite_suite_offline", "-p", "no:cacheprovider",
                           str(tmp_path / "test_net.py")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr


def test_outcomes_and_comparison():
    baseline = {"tests/ignite/engine/test_engine.py::TestEngine::test_a": "passed",
                "tests/ignite/engine/test_engine.py::TestEngine::test_b[1]": "passed",
                "tests/ignite/engine/test_engine.py::test_x": "xpassed",
                "tests/ignite/handlers/test_timing.py::test_c": "passed",
                "tests/ignite/handlers/test_timing.py::test_d": "skipped",
                "tests/ignite/metrics/test_accuracy.py::test_e": "xpassed"}
    ember = {"tests/ignite/engine/test_engine.py::TestEngine::test_a": "passed",
             "tests/ignite/engine/test_engine.py::TestEngine::test_b[1]": "failed",
             "tests/ignite/engine/test_engine.py::test_x": "xpassed",
             "tests/ignite/handlers/test_timing.py::test_c": "failed",
             "tests/ignite/handlers/test_timing.py::test_d": "passed",
             "tests/ignite/metrics/test_accuracy.py::test_e": "xfailed"}
    report = ignite_suite.compare(baseline, ember, {"tests/ignite/handlers/test_timing.py::test_c": "why"})
    assert report["engine"]["baseline_passed"] == 2 and report["engine"]["ember_passed"] == 1
    assert report["engine"]["baseline_xpassed"] == 1 and report["engine"]["ember_xpassed"] == 1
    assert report["engine"]["regressions"] == ["tests/ignite/engine/test_engine.py::TestEngine::test_b[1]"]
    assert report["handlers"]["regressions"] == [] and report["handlers"]["deliberate"]
    assert report["handlers"]["ember_only_passed"] == ["tests/ignite/handlers/test_timing.py::test_d"]
    assert report["metrics"]["regressions"] == ["tests/ignite/metrics/test_accuracy.py::test_e"]
    assert report["contrib"]["baseline_total"] == 0
    assert ignite_suite.summary({g: report[g] for g in ("engine", "metrics")}) == (
        "engine: 1/2 passed (+ 1/1 xpassed); metrics: 0/0 passed (+ 0/1 xpassed)")


def test_differences_file_is_valid_and_capped(tmp_path):
    assert len(ignite_suite.read_differences()) <= ignite_suite.MAX_DIFFERENCES
    too_many = tmp_path / "d.txt"
    too_many.write_text("".join(f"t{i} | reason\n" for i in range(11)))
    with pytest.raises(SystemExit, match="at most 10"):
        ignite_suite.read_differences(too_many)
    bad = tmp_path / "e.txt"
    bad.write_text("only an id\n")
    with pytest.raises(SystemExit, match=r"expected `test id \| reason`"):
        ignite_suite.read_differences(bad)

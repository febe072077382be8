"""The Ignite-suite runner's pieces (the run itself is `make ignite-suite`, minutes long, outside `make test`)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

import ignite_suite  # noqa: E402


def test_plugin_puts_embers_engine_in_ignites_place(tmp_path):
    (tmp_path / "test_probe.py").write_text(textwrap.dedent("""
        import ignite.engine
        from ignite.engine import DeterministicEngine, Engine, Events, create_supervised_trainer

        import ember


        def test_probe():
            assert Engine is ember.Engine and ignite.engine.engine.Engine is ember.Engine
            assert issubclass(DeterministicEngine, ember.Engine) and Events is ember.Events
            model = __import__("torch").nn.Linear(1, 1)
            opt = __import__("torch").optim.SGD(model.parameters(), lr=0.1)
            assert isinstance(create_supervised_trainer(model, opt, lambda a, b: a.sum()), ember.Engine)
    """))
    env = {"PYTHONPATH": str(TOOLS), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "ember_ignite_plugin", "-p", "no:cacheprovider",
                           str(tmp_path / "test_probe.py")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _junit(path: Path, cases: str) -> Path:
    path.write_text(f"<testsuites><testsuite>{cases}</testsuite></testsuites>")
    return path


def test_outcomes_and_comparison(tmp_path):
    eng = 'file="tests/ignite/engine/test_engine.py" classname="tests.ignite.engine.test_engine.TestEngine"'
    hnd = 'file="tests/ignite/handlers/test_timing.py" classname="tests.ignite.handlers.test_timing"'
    base = _junit(tmp_path / "a.xml", f'<testcase {eng} name="test_a"/><testcase {eng} name="test_b[1]"/>'
                                      f'<testcase {hnd} name="test_c"/>'
                                      f'<testcase {hnd} name="test_d"><skipped/></testcase>')
    ours = _junit(tmp_path / "b.xml", f'<testcase {eng} name="test_a"/><testcase {eng} name="test_b[1]"><failure/>'
                                      f'</testcase><testcase {hnd} name="test_c"><error/></testcase>'
                                      f'<testcase {hnd} name="test_d"/>')
    baseline, ember = ignite_suite.outcomes(base), ignite_suite.outcomes(ours)
    assert baseline["tests/ignite/engine/test_engine.py::TestEngine::test_b[1]"] == "passed"
    assert ember["tests/ignite/handlers/test_timing.py::test_c"] == "failed"
    report = ignite_suite.compare(baseline, ember, {"tests/ignite/handlers/test_timing.py::test_c": "why"})
    assert report["engine"]["baseline_passed"] == 2 and report["engine"]["ember_passed"] == 1
    assert report["engine"]["regressions"] == ["tests/ignite/engine/test_engine.py::TestEngine::test_b[1]"]
    assert report["handlers"]["regressions"] == [] and report["handlers"]["deliberate"]
    assert report["handlers"]["ember_only_passed"] == ["tests/ignite/handlers/test_timing.py::test_d"]


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

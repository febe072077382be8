"""Ignite's own test suite as the measure of ember's drop-in Engine.

Fetches the pytorch-ignite sdist of the installed version (cached under .cache/ignite-suite/), runs its engine
and handlers tests once on Ignite itself (the baseline) and once with ember's Engine in the place of Ignite's
(tools/ember_ignite_plugin.py), serially and on the CPU, and compares the outcomes test by test. As in Ignite's
own CPU job, tests marked distributed (they spawn process groups) are left out; the rest run serially.

Prints `engine: P/N passed; handlers: P/N passed`, where N counts the tests that pass on Ignite here and P those
of them that also pass on ember; writes the figures to JSON; exits 1 when a test that passes on Ignite fails on
ember and is not one of the deliberate differences listed in tools/ignite_suite_differences.txt.
Run: python tools/ignite_suite.py [--json ignite-suite.json] [--group engine|handlers]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(__file__).resolve().parent
DIFFERENCES = TOOLS / "ignite_suite_differences.txt"
MAX_DIFFERENCES = 10
TIMEOUT_S = 300  # per test (pytest-timeout): a test that hangs fails instead of stalling the run
GROUPS = {
    "engine": [f"tests/ignite/engine/{name}.py" for name in (
        "test_engine", "test_event_handlers", "test_custom_events", "test_engine_state_dict", "test_create_supervised",
        "test_deterministic")],
    "handlers": ["tests/ignite/handlers/"],
}


def fetch(version: str, cache: Path) -> Path:
    """The sdist's tests/ (and pytest config) for `version`, downloaded once into `cache`."""
    src = cache / f"pytorch-ignite-{version}"
    if (src / "tests" / "ignite").is_dir():
        return src
    cache.mkdir(parents=True, exist_ok=True)
    sdists = sorted(cache.glob(f"pytorch[-_]ignite-{version}.tar.gz"))
    if not sdists:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               f"pytorch-ignite=={version}", "-d", str(cache)]
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"could not download the pytorch-ignite {version} sdist (command: {' '.join(cmd)})")
        sdists = sorted(cache.glob("pytorch*ignite-*.tar.gz"))
    tmp = cache / f".extract-{os.getpid()}"
    with tarfile.open(sdists[0]) as tar:
        top = tar.getnames()[0].split("/")[0]
        wanted = [m for m in tar.getmembers() if m.name.startswith((f"{top}/tests/", f"{top}/pyproject.toml"))]
        tar.extractall(tmp, members=wanted, filter="data")
    # Only the tests: the installed ignite package is the one under test, not the sdist's copy of it.
    (tmp / top).rename(src)
    tmp.rmdir()
    return src


def run_pytest(src: Path, paths: list[str], xml: Path, ember: bool) -> float:
    """Run `paths` in `src` (serial, no GPU), with ember's Engine substituted when `ember`; return seconds."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(TOOLS), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "ignite_suite_offline",
           "--color=no", "-o", "junit_family=xunit1", "--continue-on-collection-errors",
           "-m", "not distributed and not tpu and not multinode_distributed", f"--timeout={TIMEOUT_S}",
           f"--junitxml={xml}", *paths]
    if ember:
        cmd[3:3] = ["-p", "ember_ignite_plugin"]
    start = time.perf_counter()
    with open(xml.with_suffix(".log"), "w") as log:  # pytest's own report, next to the XML, for diagnosis
        subprocess.run(cmd, cwd=src, env=env, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def outcomes(xml: Path) -> dict[str, str]:
    """Test id -> passed / failed / skipped, from pytest's junit XML (xunit1: it names each test's file)."""
    result: dict[str, str] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        file = case.get("file", "")
        module = file[:-3].replace("/", ".")
        classname = case.get("classname", "")
        cls = classname[len(module) + 1:] if classname.startswith(module + ".") else ""
        test_id = "::".join(filter(None, [file, cls, case.get("name", "")]))
        tags = {child.tag for child in case}
        outcome = "failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed"
        if result.get(test_id) != "failed":  # a teardown error after a pass counts as a failure
            result[test_id] = outcome
    return result


def read_differences(path: Path = DIFFERENCES) -> dict[str, str]:
    """The deliberate differences: `test id | reason` per line (# comments and blank lines ignored)."""
    found: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        test_id, sep, reason = (part.strip() for part in line.partition("|"))
        if not sep or not test_id or not reason:
            raise SystemExit(f"{path}:{n}: expected `test id | reason`, got {line!r}")
        found[test_id] = reason
    if len(found) > MAX_DIFFERENCES:
        raise SystemExit(f"{path} lists {len(found)} deliberate differences; at most {MAX_DIFFERENCES} are allowed")
    return found


def group_of(test_id: str) -> str:
    return "engine" if test_id.startswith("tests/ignite/engine/") else "handlers"


def compare(baseline: dict[str, str], ember: dict[str, str], differences: dict[str, str]) -> dict:
    """Per group: baseline passes (N), ember passes among them (P), regressions, deliberate differences."""
    report: dict = {}
    for group in GROUPS:
        passing = sorted(t for t, o in baseline.items() if o == "passed" and group_of(t) == group)
        failing = [t for t in passing if ember.get(t) != "passed"]
        report[group] = {
            "baseline_passed": len(passing),
            "baseline_total": sum(1 for t in baseline if group_of(t) == group),
            "ember_passed": len(passing) - len(failing),
            "deliberate": {t: differences[t] for t in failing if t in differences},
            "regressions": [t for t in failing if t not in differences],
            "ember_only_passed": sorted(t for t, o in ember.items()
                                        if o == "passed" and group_of(t) == group and baseline.get(t) != "passed"),
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "ignite-suite",
                        help="where the sdist and its tests are kept (default: .cache/ignite-suite)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    parser.add_argument("--group", choices=sorted(GROUPS), action="append",
                        help="run only this group (repeatable; default: all)")
    args = parser.parse_args(argv)
    groups = args.group or list(GROUPS)
    version = importlib.metadata.version("pytorch-ignite")
    src = fetch(version, args.cache.resolve())
    paths = [p for g in groups for p in GROUPS[g]]
    differences = read_differences()
    xml = {mode: args.cache.resolve() / f"{mode}.xml" for mode in ("ignite", "ember")}
    seconds = {mode: run_pytest(src, paths, xml[mode], ember=mode == "ember") for mode in xml}
    baseline, ember = outcomes(xml["ignite"]), outcomes(xml["ember"])
    report = {g: r for g, r in compare(baseline, ember, differences).items() if g in groups}
    print("; ".join(f"{g}: {r['ember_passed']}/{r['baseline_passed']} passed" for g, r in report.items()))
    print(f"(N: tests passing on Ignite {version} here, of " +
          ", ".join(f"{r['baseline_total']} {g}" for g, r in report.items()) +
          f" collected; wall time {seconds['ignite']:.0f} s on Ignite, {seconds['ember']:.0f} s on ember)")
    for g, r in report.items():
        for test_id, reason in r["deliberate"].items():
            print(f"deliberate difference ({g}): {test_id}: {reason}")
        for test_id in r["regressions"]:
            print(f"FAILS ON EMBER ({g}): {test_id}")
    if args.json:
        args.json.write_text(json.dumps({"ignite_version": version, "seconds": seconds, "groups": report}, indent=2))
    return 1 if any(r["regressions"] for r in report.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())

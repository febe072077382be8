"""Ignite's own test suite as the measure of ember's drop-in Engine.

Fetches the pytorch-ignite sdist of the installed version (cached under .cache/ignite-suite/), runs the tests of
the chosen groups once on Ignite itself (the baseline) and once with ember's Engine in the place of Ignite's
(tools/ember_ignite_plugin.py), serially and on the CPU, and compares the outcomes test by test. As in Ignite's
own CPU job, tests marked distributed (they spawn process groups) are left out. The network is off in both runs
(tools/ignite_suite_offline.py; local sockets stay open, so the DataLoader worker tests run).

Prints `engine: P/N passed; handlers: P/N passed` (per group chosen), where N counts the tests that pass on Ignite
here and P those of them that also pass on ember; xpassed tests (marked xfail, passed anyway) are counted apart.
It also prints how many engines the tests built on the ember run, ember's and plain Ignite ones. Writes the
figures to JSON; exits 1 when a test that passes (or xpasses) on Ignite does not on ember and is not one of the
deliberate differences in tools/ignite_suite_differences.txt, or when a test built a plain Ignite engine on the
ember run (the run would then measure Ignite, not ember).
Groups: engine and handlers by default (`make ignite-suite`); metrics and contrib too with `--full`
(`make ignite-suite-full`).
Run: python tools/ignite_suite.py [--json ignite-suite.json] [--group NAME ...] [--full]
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
    "metrics": ["tests/ignite/metrics/"],
    "contrib": ["tests/ignite/contrib/"],
}
DEFAULT_GROUPS = ("engine", "handlers")


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


def run_pytest(src: Path, paths: list[str], out: Path, ember: bool) -> float:
    """Run `paths` in `src` (serial, no GPU), with ember's Engine substituted when `ember`; return seconds.

    Writes `out` (test id -> outcome, by tools/ignite_suite_offline.py), pytest's log next to it (`.log`) and,
    on the ember run, the engine counts (`.engines.json`, by tools/ember_ignite_plugin.py).
    """
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONDONTWRITEBYTECODE="1", IGNITE_SUITE_OUTCOMES=str(out),
               PYTHONPATH=os.pathsep.join(filter(None, [str(TOOLS), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "ignite_suite_offline",
           "--color=no", "--continue-on-collection-errors",
           "-m", "not distributed and not tpu and not multinode_distributed", f"--timeout={TIMEOUT_S}", *paths]
    if ember:
        cmd[3:3] = ["-p", "ember_ignite_plugin"]
        env["IGNITE_SUITE_ENGINES"] = str(engines_file(out))
    for stale in (out, engines_file(out)):
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:  # pytest's own report, for diagnosis
        subprocess.run(cmd, cwd=src, env=env, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def engines_file(out: Path) -> Path:
    return out.with_suffix(".engines.json")


def outcomes(path: Path) -> dict[str, str]:
    """Test id -> passed / failed / skipped / xfailed / xpassed, as the run wrote it (a missing file: pytest
    did not get to the end, which the caller reports)."""
    if not path.is_file():
        raise SystemExit(f"{path} was not written: the pytest run did not finish (see {path.with_suffix('.log')})")
    return json.loads(path.read_text())


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


def group_of(test_id: str) -> str | None:
    """The group whose paths hold `test_id`, or None."""
    path = test_id.split("::")[0]
    return next((g for g, paths in GROUPS.items() if any(path.startswith(p.removesuffix(".py")) for p in paths)),
                None)


def compare(baseline: dict[str, str], ember: dict[str, str], differences: dict[str, str]) -> dict:
    """Per group: baseline passes (N), ember passes among them (P), xpasses apart, regressions, deliberate ones.

    A test that passes on Ignite must pass on ember, and one that xpasses on Ignite must xpass on ember."""
    report: dict = {}
    for group in GROUPS:
        mine = {t: o for t, o in baseline.items() if group_of(t) == group}
        passing = sorted(t for t, o in mine.items() if o == "passed")
        xpassing = sorted(t for t, o in mine.items() if o == "xpassed")
        failing = [t for t in passing + xpassing if ember.get(t) != baseline[t]]
        report[group] = {
            "baseline_passed": len(passing),
            "baseline_xpassed": len(xpassing),
            "baseline_total": len(mine),
            "ember_passed": sum(1 for t in passing if ember.get(t) == "passed"),
            "ember_xpassed": sum(1 for t in xpassing if ember.get(t) == "xpassed"),
            "deliberate": {t: differences[t] for t in failing if t in differences},
            "regressions": [t for t in failing if t not in differences],
            "ember_only_passed": sorted(t for t, o in ember.items()
                                        if o in ("passed", "xpassed") and group_of(t) == group
                                        and baseline.get(t) not in ("passed", "xpassed")),
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "ignite-suite",
                        help="where the sdist and its tests are kept (default: .cache/ignite-suite)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    parser.add_argument("--group", choices=list(GROUPS), action="append",
                        help=f"run this group (repeatable; default: {' and '.join(DEFAULT_GROUPS)})")
    parser.add_argument("--full", action="store_true", help="run every group: " + ", ".join(GROUPS))
    args = parser.parse_args(argv)
    groups = list(GROUPS) if args.full else [g for g in GROUPS if g in (args.group or DEFAULT_GROUPS)]
    version = importlib.metadata.version("pytorch-ignite")
    src = fetch(version, args.cache.resolve())
    paths = [p for g in groups for p in GROUPS[g]]
    differences = read_differences()
    out = {mode: args.cache.resolve() / f"{mode}.outcomes.json" for mode in ("ignite", "ember")}
    seconds = {mode: run_pytest(src, paths, out[mode], ember=mode == "ember") for mode in out}
    baseline, ember = outcomes(out["ignite"]), outcomes(out["ember"])
    if not engines_file(out["ember"]).is_file():
        raise SystemExit(f"{engines_file(out['ember'])} was not written: the ember run did not finish")
    engines = json.loads(engines_file(out["ember"]).read_text())
    report = {g: r for g, r in compare(baseline, ember, differences).items() if g in groups}
    print(summary(report))
    print(f"(N: tests passing on Ignite {version} here, of " +
          ", ".join(f"{r['baseline_total']} {g}" for g, r in report.items()) +
          f" collected; wall time {seconds['ignite']:.0f} s on Ignite, {seconds['ember']:.0f} s on ember)")
    print(f"engines the tests built on the ember run: {engines['ember']} ember, {engines['ignite']} plain Ignite")
    for g, r in report.items():
        for test_id, reason in r["deliberate"].items():
            print(f"deliberate difference ({g}): {test_id}: {reason}")
        for test_id in r["regressions"]:
            print(f"FAILS ON EMBER ({g}): {test_id} (Ignite: {baseline[test_id]}, ember: {ember.get(test_id)})")
    for test_id, n in engines["plain_ignite_by_test"].items():
        print(f"BUILT {n} PLAIN IGNITE ENGINE(S): {test_id}")
    if args.json:
        args.json.write_text(json.dumps({"ignite_version": version, "seconds": seconds, "engines": engines,
                                         "groups": report}, indent=2))
    return 1 if any(r["regressions"] for r in report.values()) or engines["ignite"] else 0


def summary(report: dict) -> str:
    """`group: P/N passed (+ X/Y xpassed)` per group: N passes on Ignite, P of them on ember; xpasses apart."""
    parts = []
    for g, r in report.items():
        xpassed = f" (+ {r['ember_xpassed']}/{r['baseline_xpassed']} xpassed)" if r["baseline_xpassed"] else ""
        parts.append(f"{g}: {r['ember_passed']}/{r['baseline_passed']} passed{xpassed}")
    return "; ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())

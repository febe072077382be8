"""The GPU check's runner: starts the workers, holds every part to its time limit, writes the report.

Standard library only, so that it reports even where torch or ember cannot be imported. On a CUDA machine
every part runs in a fresh worker process (a CUDA error, the sync debug mode or a hang stays inside its
part); in the CPU dry run one worker runs them all (one import of torch on a small machine), and a part that
overruns still ends only that worker: the rest go on in a new one.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.gpu_check.parts import BUDGET_S, BY_NAME, PARTS, Part, read_record, record, write_record
from benchmarks.gpu_check.report import write_report

POLL_S = 0.2
REPO = Path(__file__).resolve().parents[2]


class Interrupted(Exception):
    """SIGTERM or SIGINT reached the runner (e.g. `timeout` around it): stop the worker, report what is done."""


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu_check.sh",
        description="ember's CUDA paths checked and timed in one time-boxed run: one JSON per part, "
                    "a markdown report (its path printed last).")
    parser.add_argument("outdir", help="folder for report.md, <part>.json and logs/ (created; earlier files replaced)")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run every part on the CPU with tiny sizes; CUDA-only checks report "
                             "'skipped: no CUDA device'")
    parser.add_argument("--parts", default=None,
                        help=f"comma-separated subset, e.g. to rerun what failed: {', '.join(p.name for p in PARTS)}")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"seconds for all parts together (default: {BUDGET_S} on CUDA, none in the dry run)")
    args = parser.parse_args(argv)
    names = [p.name for p in PARTS]
    if args.parts is not None:
        wanted = [n.strip() for n in args.parts.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown or not wanted:
            parser.error(f"--parts: unknown or no part(s) {unknown}; choose from {', '.join(names)}")
        names = [n for n in names if n in wanted]
    args.names = names
    return args


def _kill(proc: subprocess.Popen) -> None:
    """End a worker and every process it started (it leads its own session: torchrun's children, loaders)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


class Runner:
    """Runs the parts through workers, in order, each within its limit and the whole within the budget."""

    worker_module = "benchmarks.gpu_check.worker"

    def __init__(self, out: Path, dry: bool, budget_s: float | None) -> None:
        self.out, self.dry = out, dry
        self.deadline = None if budget_s is None else time.monotonic() + budget_s
        self.mode = "cpu-dry-run" if dry else "cuda"
        self.interrupted = ""
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def limit(self, part: Part) -> float:
        own = part.dry_timeout_s if self.dry else part.timeout_s
        if self.deadline is None:
            return own
        return min(own, self.deadline - time.monotonic())

    def run(self, names: list[str]) -> None:
        pending = list(names)
        while pending:
            if self.interrupted:
                self.finish(BY_NAME[pending.pop(0)], f"skipped: the run was stopped ({self.interrupted})", 0.0)
                continue
            if self.deadline is not None and self.deadline - time.monotonic() < 5:
                self.finish(BY_NAME[pending.pop(0)], "skipped: out of the time budget (--budget-s)", 0.0)
                continue
            group = pending if self.dry else pending[:1]
            try:
                done = self.worker(group)
            except Interrupted as why:  # between two polls of the worker: its part is marked when it comes up
                self.interrupted = str(why)
                continue
            pending = [n for n in pending if n not in done]
            if "setup" in done and not self.dry and self.no_cuda():
                for name in pending:
                    self.finish(BY_NAME[name], "skipped: no CUDA device (see setup); run with --cpu-dry-run", 0.0)
                return

    def no_cuda(self) -> bool:
        rec = read_record(self.out, "setup") or {}
        return not rec.get("data", {}).get("cuda_available", False)

    def worker(self, group: list[str]) -> list[str]:
        """One worker over `group`; returns the parts it finished (or that were stopped at their limit)."""
        log = open(self.out / "logs" / f"{group[0]}.log", "a")  # noqa: SIM115 (closed below)
        for name in group:
            (self.out / f"{name}.json").unlink(missing_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
            [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        cmd = [sys.executable, "-m", self.worker_module, str(self.out), self.mode, *group]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        done: list[str] = []
        index, since = 0, time.monotonic()
        try:
            while index < len(group):
                part = BY_NAME[group[index]]
                rec = self.final(part.name)
                if rec is not None:
                    self.announce(rec)
                    done.append(part.name)
                    index, since = index + 1, time.monotonic()
                    continue
                limit = self.limit(part)
                if time.monotonic() - since > limit:
                    _kill(proc)
                    self.stopped(part, f"timeout: stopped at its limit of {limit:.0f} s", limit)
                    done.append(part.name)
                    break
                if proc.poll() is not None:
                    if self.final(part.name) is not None:
                        continue  # written just before the worker ended
                    self.stopped(part, f"error: the worker process ended (exit status {proc.returncode}) before the "
                                       f"part finished; see logs/{group[0]}.log", time.monotonic() - since)
                    done.append(part.name)
                    break
                time.sleep(POLL_S)
        except Interrupted as why:
            self.interrupted = str(why)
            _kill(proc)
            while index < len(group) and (rec := self.final(group[index])) is not None:
                self.announce(rec)  # finished before the signal, unnoticed until now
                done.append(group[index])
                index += 1
            if index < len(group):
                self.stopped(BY_NAME[group[index]], f"stopped: the run got {why}", time.monotonic() - since)
                done.append(group[index])
        finally:
            if proc.poll() is None and index >= len(group):
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    _kill(proc)
            elif proc.poll() is None:
                _kill(proc)
            log.close()
        return done

    def final(self, name: str) -> dict | None:
        """The part's record once it is final (not "running"), else None."""
        rec = read_record(self.out, name)
        return rec if rec is not None and rec["status"] != "running" else None

    def stopped(self, part: Part, status: str, seconds: float) -> None:
        """A part that did not finish: keep what it saved so far, with the reason as its status."""
        rec = read_record(self.out, part.name) or record(part, status, "", {}, seconds, self.dry)
        rec.update(status=status, seconds=round(seconds, 2))
        write_record(self.out, rec)
        self.announce(rec)

    def finish(self, part: Part, status: str, seconds: float) -> None:
        rec = record(part, status, "", {}, seconds, self.dry)
        write_record(self.out, rec)
        self.announce(rec)

    @staticmethod
    def announce(rec: dict) -> None:
        print(f"gpu_check: {rec['part']:<15} {rec['status']} ({rec['seconds']:.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.outdir).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"gpu_check: cannot create OUTDIR {args.outdir}: {err.strerror or err}", file=sys.stderr)
        return 2
    budget = args.budget_s if args.budget_s is not None else (None if args.cpu_dry_run else BUDGET_S)
    start = time.monotonic()
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    runner = Runner(out, args.cpu_dry_run, budget)
    try:
        runner.run(args.names)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    path = write_report(out, args.names, dry=args.cpu_dry_run, seconds=time.monotonic() - start,
                        command=" ".join(["benchmarks/gpu_check.sh", *(sys.argv[1:] if argv is None else argv)]))
    print(path)
    return 130 if runner.interrupted else 0

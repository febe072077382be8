"""The `ember` command line: `ember list [RECIPE...]`, `ember train RECIPE [flags]` and `ember --version`.

RECIPE is a name from `ember list`, a file `path/to/recipe.py[:NAME]` or a module `package.module:NAME`;
the flags may come before or after it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator
from typing import Any

import ember
from ember.recipes import RECIPES, all_recipes, find_recipe, looks_like_spec
from ember.recipes.recipe import RecipeError

# What the library says in Python terms, said in the command line's flags.
_IN_FLAGS = (
    ("under torchrun leave cuda_graph=False", "drop --cuda-graph under torchrun"),
    ("train with cuda_graph=False", "train without --cuda-graph"),
    ("or leave cuda_graph=False", "or drop --cuda-graph"),
    ("pass device='cuda' with the model on the GPU", "pass --device cuda"),
    ("cuda_graph=True", "--cuda-graph"),
    ("use amp='bf16'", "use --amp bf16"),
    ("use compile=True or compile='max-autotune-no-cudagraphs'",
     "use --compile or --compile max-autotune-no-cudagraphs"),
)


def _list(specs: list[str]) -> int:
    recipes = all_recipes(*specs)
    width = max(len(n) for n in recipes)
    print(f"{'recipe':<{width}}  seed  dataset        what it trains")
    for name, r in recipes.items():
        print(f"{name:<{width}}  {r.program:<4}  {r.dataset:<13}  {r.summary}")
    return 0


def in_flags(text: str) -> str:
    """`text` with the library's Python-level advice replaced by the command line's flags."""
    for python, flags in _IN_FLAGS:
        text = text.replace(python, flags)
    return text


def _error_line(exc: BaseException) -> str:
    notes = "; ".join(getattr(exc, "__notes__", []))
    text = " ".join(str(exc).split()) or type(exc).__name__
    return in_flags(f"ember: error: {text}" + (f" ({notes})" if notes else ""))


def _warning_line(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> str:
    return in_flags("ember: warning: " + " ".join(str(message).split())) + "\n"


class _StoppedAtStartUp(BaseException):
    """A stop signal that arrived before the run's GracefulStop took over (a BaseException, as KeyboardInterrupt
    is, so that no `except Exception` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop_at_start_up(signum: int, frame: Any) -> None:
    raise _StoppedAtStartUp(signum)


class _ReportedOnce(logging.Filter):
    """Drops the engines' "... is terminating due to exception" log lines: the command line reports every
    error itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "terminating due to exception" not in record.getMessage()


@contextlib.contextmanager
def _one_line_per_run() -> Iterator[None]:
    """While a run starts and goes: a stop signal before the run's own handlers are installed ends it with one
    line and 128 + the signal (143 for SIGTERM); the engines' exception log lines are left to the one error line."""
    names = [n for n in ("SIGTERM", "SIGHUP", "SIGUSR1") if hasattr(signal, n)]
    previous = {}
    with contextlib.suppress(ValueError):  # not the main thread: leave the signals alone
        for name in names:
            previous[name] = signal.signal(getattr(signal, name), _stop_at_start_up)
    quiet = _ReportedOnce()
    engine_log = logging.getLogger("ignite.engine.engine.Engine")
    engine_log.addFilter(quiet)
    try:
        yield
    finally:
        engine_log.removeFilter(quiet)
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def split_recipe(argv: list[str]) -> tuple[str | None, list[str]]:
    """The recipe named in `ember train`'s arguments and the flags around it (before or after it).

    The recipe is the first word that is a known name or a file/module spec; failing that, the first word
    that does not follow a flag (so `--epochs 1 NAME` never takes 1 for the name)."""
    words = [i for i, a in enumerate(argv) if not a.startswith("-")]
    known = [i for i in words if argv[i] in RECIPES or looks_like_spec(argv[i])]
    loose = [i for i in words if i == 0 or not argv[i - 1].startswith("-") or "=" in argv[i - 1]]
    pick = (known or loose or words or [None])[0]
    if pick is None:
        return None, argv
    return argv[pick], argv[:pick] + argv[pick + 1 :]


def _train(spec: str, argv: list[str]) -> int:
    from ember import distributed as dist
    from ember.callbacks.checkpoint import CheckpointError
    from ember.data import DataNotFoundError
    from ember.recipes.common import RunContext
    from ember.recipes.flags import parse_flags

    try:
        recipe = find_recipe(spec)
    except RecipeError as exc:
        print(_error_line(exc), file=sys.stderr)
        return 2
    warnings.formatwarning = _warning_line
    context = None
    try:
        with _one_line_per_run():
            args, run = parse_flags(recipe, argv)
            context = RunContext(recipe, args, run)
            return recipe.train(args, context)
    except _StoppedAtStartUp as stop:
        name = signal.Signals(stop.signum).name
        print(f"ember: stopped by {name} during start-up, before the first checkpoint; nothing was saved or "
              "changed", file=sys.stderr)
        return 128 + stop.signum
    except DataNotFoundError as exc:
        print(_error_line(exc), file=sys.stderr)
        return 2
    except (RecipeError, CheckpointError, OSError) as exc:
        print(_error_line(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ember: aborted by an interrupt", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("EMBER_DEBUG"):
            traceback.print_exc()
        print(_error_line(exc) + "  [set EMBER_DEBUG=1 for the traceback]", file=sys.stderr)
        return 1
    finally:
        if context is not None:
            context.close()
        dist.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ember` console script and of `python -m ember`."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="ember", description="Train the ember recipes, or your own.")
    parser.add_argument("--version", action="version", version=f"ember {ember.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{list,train,board}")
    listing = sub.add_parser("list", help="show the recipes (ember's, installed ones, and any RECIPE given)")
    listing.add_argument("specs", nargs="*", metavar="RECIPE", help="also list these files/modules")
    sub.add_parser("train", help="train a recipe: ember train RECIPE [flags]; RECIPE --help lists its flags",
                   add_help=False)
    sub.add_parser("board", help="serve the runs with TensorBoard: ember board [LOGDIR] [--host H] [--port N]",
                   add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "board":
        from ember.board import main as board

        return board(rest)
    if args.command == "list":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        try:
            return _list(args.specs)
        except RecipeError as exc:
            print(_error_line(exc), file=sys.stderr)
            return 2
    name, flags = split_recipe(rest)
    if name is None:
        if "-h" in flags or "--help" in flags:
            print("usage: ember train RECIPE [flags]  (flags before or after RECIPE)\n\n"
                  "RECIPE: a name from `ember list`, a file path/to/recipe.py[:NAME], or a module "
                  "package.module:NAME\nrecipes: " + ", ".join(all_recipes()))
            return 0
        parser.error(f"train needs a recipe NAME, one of: {', '.join(all_recipes())}")
    if name not in RECIPES and not looks_like_spec(name) and name not in all_recipes():
        parser.error(f"argument NAME: invalid choice: {name!r} (choose from {', '.join(all_recipes())}, "
                     "or give path/to/recipe.py or package.module:NAME)")
    return _train(name, flags)


if __name__ == "__main__":
    raise SystemExit(main())

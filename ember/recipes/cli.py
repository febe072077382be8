"""The `ember` command line: `ember list` and `ember train NAME [flags]`."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings

from ember.recipes import RECIPES


def _list() -> int:
    width = max(len(n) for n in RECIPES)
    print(f"{'recipe':<{width}}  seed  dataset        what it trains")
    for name, r in RECIPES.items():
        print(f"{name:<{width}}  {r.seed_file:<4}  {r.dataset:<13}  {r.summary}")
    return 0


def _error_line(exc: BaseException) -> str:
    notes = "; ".join(getattr(exc, "__notes__", []))
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"ember: error: {text}" + (f" ({notes})" if notes else "")


def _warning_line(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> str:
    return "ember: warning: " + " ".join(str(message).split()) + "\n"


def _train(name: str, argv: list[str]) -> int:
    from ember import distributed as dist
    from ember.callbacks.checkpoint import CheckpointError
    from ember.recipes.common import RecipeError, RunContext, build_parser
    from ember.recipes.data import DataNotFoundError

    recipe = RECIPES[name]
    args = build_parser(recipe).parse_args(argv)
    warnings.formatwarning = _warning_line
    try:
        return recipe.train(args, RunContext(recipe, args))
    except DataNotFoundError as exc:
        print(_error_line(exc), file=sys.stderr)
        return 2
    except (RecipeError, CheckpointError, OSError) as exc:
        print(_error_line(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ember: aborted by a second interrupt", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("EMBER_DEBUG"):
            traceback.print_exc()
        print(_error_line(exc) + "  [set EMBER_DEBUG=1 for the traceback]", file=sys.stderr)
        return 1
    finally:
        dist.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ember` console script and of `python -m ember`."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="ember", description="Train the ember recipes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{list,train,board}")
    sub.add_parser("list", help="show the recipes with their seed and dataset")
    train = sub.add_parser("train", help="train a recipe: ember train NAME [flags]; NAME --help lists its flags",
                           add_help=False)
    train.add_argument("name", choices=list(RECIPES), metavar="NAME", nargs="?")
    train.add_argument("-h", "--help", action="store_true")
    sub.add_parser("board", help="serve the runs with TensorBoard: ember board [LOGDIR] [--port N]", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "board":
        from ember.board import main as board

        return board(rest)
    if args.command == "list":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return _list()
    if args.name is None:
        if args.help:
            train.print_help()
            print("\nrecipes: " + ", ".join(RECIPES))
            return 0
        parser.error(f"train needs a recipe NAME, one of: {', '.join(RECIPES)}")
    return _train(args.name, rest + (["--help"] if args.help else []))


if __name__ == "__main__":
    raise SystemExit(main())

"""A recipe's command line: its flags (`build_parser`), and `parse_flags`, which with --resume takes the
flags of the run being resumed from its checkpoints."""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from ember.recipes.recipe import Recipe, RecipeError
from ember.run import MAY_DIFFER, latest_run_dir, saved_run


def _number(text: str, kind: type, expected: str) -> Any:
    """`text` as an int or a float; a word that is not one gets argparse's `argument --flag: expected ...`."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = _number(text, int, "an integer, 0 or more")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text, float, "a positive number such as 0.01 or 1e-3")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


SEED_RANGE = (-(2**63), 2**63 - 1)  # what torch.manual_seed takes as a signed 64-bit number


def _seed(text: str) -> int:
    value = _number(text, int, "an integer")
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise argparse.ArgumentTypeError(f"must be an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}, got {text}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only where it says something: not None/False, not a switch, not already stated."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if isinstance(action, argparse.BooleanOptionalAction) and action.default is True:
            return f"{action.help} (default: on)"  # --images: say that it is on unless --no-images
        if action.default is None or action.default is False or action.nargs == 0 or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser(recipe: Recipe, prog: str = "ember train") -> argparse.ArgumentParser:
    """The recipe's command-line flags, with its defaults shown in --help."""
    p = argparse.ArgumentParser(
        prog=f"{prog} {recipe.name}",
        usage="%(prog)s [flags]  (--help lists the flags and their defaults)",
        description=recipe.summary if recipe.program == "-" else f"{recipe.summary} (seed {recipe.program})",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--epochs", type=_positive_int, default=recipe.epochs, help="epochs to train")
    p.add_argument("--batch-size", type=_positive_int, default=recipe.batch_size, help="batch size per process")
    p.add_argument("--lr", type=_positive_float, default=recipe.lr, help="learning rate")
    p.add_argument("--seed", type=_seed, default=recipe.seed, help="random seed (model init, shuffling)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to train")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="mixed precision (autocast)")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files (else $EMBER_DATA)")
    p.add_argument("--data-path", choices=["fast", "dataloader"], default="fast",
                   help="fast: whole dataset on the device, batched there; dataloader: the seed's DataLoader")
    p.add_argument("--num-workers", type=_non_negative_int, default=0, help="DataLoader workers (dataloader path only)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="tqdm progress bar (default: only when stdout is a terminal)")
    p.add_argument("--logdir", default=None,
                   help="TensorBoard folder (default: runs/<recipe>/<run-id>, paired with the checkpoint folder)")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", help="do not log to TensorBoard")
    p.add_argument("--log-every", type=_positive_int, default=100, metavar="ITERS",
                   help="iterations between TensorBoard's per-iteration points (loss, LR, gradient norm)")
    p.add_argument("--images", action=argparse.BooleanOptionalAction, default=True,
                   help="TensorBoard pictures of each evaluation: confusion matrix, misclassified test images")
    p.add_argument("--histograms", action="store_true", help="TensorBoard histograms of weights and gradients")
    p.add_argument("--graph", action="store_true", help="the model graph in TensorBoard")
    p.add_argument("--checkpoint-dir", default=None,
                   help="the run's checkpoint folder (default: checkpoints/<recipe>/<run-id>, a new one per run)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="ITERS",
                   help="also checkpoint every ITERS iterations (default: at the end of each epoch)")
    p.add_argument("--keep-last", type=_positive_int, default=2, help="checkpoints to keep")
    p.add_argument("--async-checkpoint", action="store_true",
                   help="save checkpoints in the background: a save copies the state into host memory (about the "
                        "checkpoint's size) and training goes on while it is written")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                   help="continue the newest run of this recipe (or the run in folder RUN, or in --checkpoint-dir) "
                        "with its flags; a flag given again must match, except --epochs and others that only say "
                        "how long, where or how visibly it runs")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the model (optionally with a mode, e.g. max-autotune-no-cudagraphs)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="capture the whole training step as one CUDA graph (CUDA only; static batch shapes)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (CNNs)")
    p.add_argument("--show-plan", action="store_true",
                   help="print the handlers each event runs, in order, with their filters, before training")
    p.add_argument("--max-iterations", type=_positive_int, default=None, metavar="N",
                   help="stop after iteration N (counted over the whole run), with a checkpoint; e.g. to try a set-up")
    p.set_defaults(run_id=None)
    if recipe.add_arguments is not None:
        recipe.add_arguments(p)
    return p


_UNSET = object()
# Flags a resumed run does not take from its checkpoints: they describe this invocation, not the run.
_NOT_ADOPTED = frozenset({"checkpoint_dir", "resume", "run_id", "progress", "show_plan", "max_iterations",
                          "device"})


def parse_flags(recipe: Recipe, argv: list[str]) -> argparse.Namespace:
    """The recipe's flags from `argv`; with --resume, the run's folder and its own flags.

    (A new run gets its folders `checkpoints/<recipe>/<run-id>` and `runs/<recipe>/<run-id>` from RunContext,
    once the process group is up.) `--resume` finds the run (its folder, --checkpoint-dir, or the newest run of
    the recipe), takes every flag not given on the command line from its checkpoints, applies a differing
    flag given again where that is honest (`MAY_DIFFER`: more --epochs, another --device...) and refuses any
    other in one line naming the flag and both values, before anything is built or trained.
    """
    parser = build_parser(recipe)
    given = parser.parse_args(argv, namespace=argparse.Namespace(**{a.dest: _UNSET for a in parser._actions}))
    explicit = {k for k, v in vars(given).items() if v is not _UNSET}
    args = parser.parse_args(argv)
    root = os.path.join("checkpoints", recipe.name)
    if args.resume:
        _adopt_saved_flags(recipe, parser, args, explicit, root)
    return args


def flag_of(parser: argparse.ArgumentParser, dest: str) -> str:
    """The command-line flag that sets `dest` (`--batch-size` for batch_size)."""
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            return max(action.option_strings, key=len)
    return f"--{dest.replace('_', '-')}"


def _shown(flag: str, value: Any) -> str:
    if value is None or value is False:
        return f"no {flag}"
    return flag if value is True else f"{flag} {value}"


def _adopt_saved_flags(recipe: Recipe, parser: argparse.ArgumentParser, args: argparse.Namespace,
                       explicit: set[str], root: str) -> None:
    if isinstance(args.resume, str):
        folder = os.path.dirname(args.resume) if os.path.isfile(args.resume) else args.resume
        if args.checkpoint_dir is not None and os.path.abspath(args.checkpoint_dir) != os.path.abspath(folder):
            raise RecipeError(f"--resume {args.resume} and --checkpoint-dir {args.checkpoint_dir} name two runs; "
                              "give one of them")
        if not os.path.isdir(folder):
            raise RecipeError(f"--resume {args.resume}: no such run folder; pass a folder under {root}, or --resume "
                              "alone for the newest run of this recipe")
        args.checkpoint_dir = folder
    elif args.checkpoint_dir is None:
        args.checkpoint_dir = latest_run_dir(root)
        if args.checkpoint_dir is None:
            print(f"No earlier run of {recipe.name} in {root}: starting a new run.")
            args.resume = False  # said once: nothing for fit to look for
            return
    saved = saved_run(args.checkpoint_dir)
    if saved is None:
        return
    config = saved["config"]
    if config.get("recipe", recipe.name) != recipe.name:
        raise RecipeError(f"--resume: {args.checkpoint_dir} holds a run of {config['recipe']}, not of {recipe.name}; "
                          f"resume it with `ember train {config['recipe']} --resume {args.checkpoint_dir}`")
    current = vars(args)
    for key, old in config.items():
        if key not in current or key in _NOT_ADOPTED:
            continue
        if key not in explicit:
            current[key] = old
        elif key not in MAY_DIFFER and _plain_value(current[key]) != old:
            flag = flag_of(parser, key)
            raise RecipeError(f"{_shown(flag, current[key])} differs from the run being resumed "
                              f"({args.checkpoint_dir}), which has {_shown(flag, old)}; drop {flag} to keep the "
                              "run's value, or start a new run without --resume")
    args.run_id = saved["run_id"]


def _plain_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value

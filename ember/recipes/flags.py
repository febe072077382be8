"""A recipe's command line: its flags (`build_parser`), and `parse_flags`, which with --resume takes the
flags of the run being resumed from its checkpoints."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ember import distributed as dist
from ember.checkpoint.format import CheckpointError
from ember.checkpoint.sharded import SUFFIX as SHARDED_SUFFIX
from ember.recipes.recipe import Recipe, RecipeError
from ember.run import RunFolder, latest_run_dir
from ember.run.folder import describe


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
    p.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp",
                   help="under torchrun: ddp replicates the model on every process; fsdp shards parameters, "
                        "gradients and optimizer state over them (FSDP2), with sharded checkpoint folders")
    p.add_argument("--fsdp-precision", choices=["bf16"], default=None,
                   help="with --strategy fsdp: compute in bf16, reduce gradients in fp32 (fp32 master weights)")
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
                   help="continue the newest run of this recipe (or --checkpoint-dir's, or RUN: a run id, a run "
                        "folder, a checkpoint file or the run's TensorBoard folder) with its flags; a flag given "
                        "again must match, except --epochs and others that only say how long, where or how visibly "
                        "it runs")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the model (optionally with a mode, e.g. max-autotune-no-cudagraphs)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="capture the whole training step as one CUDA graph (CUDA only; static batch shapes)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (CNNs)")
    p.add_argument("--show-plan", action="store_true",
                   help="print the handlers each event runs, in order, with their filters, before training")
    p.add_argument("--max-iterations", type=_positive_int, default=None, metavar="N",
                   help="stop after iteration N (counted over the whole run), with a checkpoint; e.g. to try a set-up")
    if recipe.add_arguments is not None:
        recipe.add_arguments(p)
    return p


@dataclass(frozen=True)
class Role:
    """What a flag is to a run: whether `--resume` takes it from the run's checkpoints when it is not given
    (`adopted`), accepts another value given again (`may_differ`: how long, where or how visibly the run goes),
    whether TensorBoard's HParams show it (`hparam`) and whether the run's checkpoints save it (`saved`)."""

    adopted: bool = True
    may_differ: bool = False
    hparam: bool = True
    saved: bool = True


TRAINING = Role()  # shapes what is learned: adopted on resume, must match, a hyperparameter
RUNTIME = Role(may_differ=True)  # how fast or how long it runs: adopted, may change, shown with the hyperparameters
WATCHING = Role(may_differ=True, hparam=False)  # where it saves and logs and what it shows
INVOCATION = Role(adopted=False, may_differ=True, hparam=False)  # this command only, not the run
# Every flag of build_parser and its role, the one place that says it (recipe-specific flags are TRAINING).
FLAGS: dict[str, Role] = {
    "epochs": RUNTIME, "batch_size": TRAINING, "lr": TRAINING, "seed": TRAINING,
    "device": Role(adopted=False, may_differ=True), "amp": TRAINING,
    "data_root": WATCHING, "data_path": RUNTIME, "num_workers": RUNTIME,
    "progress": INVOCATION, "logdir": WATCHING, "tensorboard": WATCHING, "log_every": WATCHING,
    "images": WATCHING, "histograms": WATCHING, "graph": WATCHING,
    "checkpoint_dir": INVOCATION, "checkpoint_every": WATCHING, "keep_last": WATCHING, "async_checkpoint": WATCHING,
    "resume": Role(adopted=False, may_differ=True, hparam=False, saved=False),
    "compile": RUNTIME, "cuda_graph": RUNTIME, "channels_last": RUNTIME,
    "strategy": TRAINING, "fsdp_precision": TRAINING,
    "show_plan": INVOCATION, "max_iterations": INVOCATION,
}  # fmt: skip


def _with(test: Callable[[Role], bool]) -> frozenset[str]:
    return frozenset(name for name, role in FLAGS.items() if test(role))


MAY_DIFFER = _with(lambda r: r.may_differ)  # --resume accepts another value of these
NOT_ADOPTED = _with(lambda r: not r.adopted)  # --resume never takes these from the checkpoints
NOT_HPARAMS = _with(lambda r: not r.hparam)  # left out of TensorBoard's HParams
NOT_SAVED = _with(lambda r: not r.saved)  # left out of the configuration saved in checkpoints

_UNSET = object()
GLOBAL_BATCH = "global_batch_size"  # saved in a run's config: --batch-size times the number of processes


def parse_flags(recipe: Recipe, argv: list[str]) -> tuple[argparse.Namespace, RunFolder | None]:
    """The recipe's flags from `argv`, and with --resume the run's folder (opened once) with its own flags.

    (A new run gets its folders `checkpoints/<recipe>/<run-id>` and `runs/<recipe>/<run-id>` from RunContext,
    once the process group is up.) `--resume` finds the run (`find_run`), takes every flag not given on the
    command line from its checkpoints, applies a differing flag given again where that is honest
    (`MAY_DIFFER`: more --epochs, another --device...) and refuses any other in one line naming the flag and
    both values, before anything is built or trained.
    """
    parser = build_parser(recipe)
    given = parser.parse_args(argv, namespace=argparse.Namespace(**{a.dest: _UNSET for a in parser._actions}))
    explicit = {k for k, v in vars(given).items() if v is not _UNSET}
    args = parser.parse_args(argv)
    run = find_run(recipe, args) if args.resume else None
    if run is not None:
        _adopt_saved_flags(recipe, parser, args, explicit, run)
    return args, run


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


def find_run(recipe: Recipe, args: argparse.Namespace) -> RunFolder | None:
    """The run `--resume` names, opened: a run id, a run folder, a checkpoint file (resumed exactly), the run's
    TensorBoard folder, or nothing (--checkpoint-dir, else the newest run of the recipe; None when there is
    none: a new run). A folder without checkpoints is refused in one line, and nothing is written."""
    root = os.path.join("checkpoints", recipe.name)
    named = args.resume if isinstance(args.resume, str) else None
    if named is None and args.checkpoint_dir is None:
        folder = latest_run_dir(root)
        if folder is None:
            print(f"No earlier run of {recipe.name} in {root}: starting a new run.")
            args.resume = False  # said once: nothing for fit to look for
            return None
        return RunFolder.open(folder)
    target = named if named is not None else args.checkpoint_dir
    what = f"--resume {named}" if named is not None else f"--checkpoint-dir {target} --resume"
    if os.path.isfile(target) or (os.path.isdir(target) and os.path.normpath(target).endswith(SHARDED_SUFFIX)):
        folder, file = os.path.dirname(os.path.normpath(target)) or ".", target
    elif os.path.isdir(target):
        folder, file = target, None
    elif named is not None and os.sep not in named and os.path.isdir(os.path.join(root, named)):
        folder, file = os.path.join(root, named), None  # a run id
    else:
        raise RecipeError(f"{what}: no such run id, run folder or checkpoint file; pass a run id or folder under "
                          f"{root}, or --resume alone for the newest run of this recipe")
    if named is not None and args.checkpoint_dir is not None and \
            os.path.abspath(args.checkpoint_dir) != os.path.abspath(folder):
        raise RecipeError(f"--resume {named} and --checkpoint-dir {args.checkpoint_dir} name two runs; give one "
                          "of them")
    try:
        run = RunFolder.open(folder, file=file)
    except CheckpointError as exc:
        raise RecipeError(f"{what}: {exc}") from None
    if file is None and not run.holds_checkpoints:
        tensorboard = _run_logging_to(folder, root)
        if tensorboard is not None:
            return tensorboard
        raise RecipeError(f"{what}: {folder} holds no run to resume: {describe(folder)}; nothing was written. Pass "
                          f"a run id or a run folder under {root} (or a checkpoint file), or start a new run")
    return run


def _run_logging_to(logdir: str, root: str) -> RunFolder | None:
    """The run (under `root`, by the folder's name) whose TensorBoard folder `logdir` is, or None."""
    if not any(n.startswith("events.out.tfevents") for n in os.listdir(logdir)):
        return None
    folder = os.path.join(root, os.path.basename(os.path.normpath(logdir)))
    if not os.path.isdir(folder):
        return None
    run = RunFolder.open(folder)
    saved = (run.record or {}).get("config", {}).get("logdir")
    if not run.holds_checkpoints or saved is None or os.path.realpath(saved) != os.path.realpath(logdir):
        return None
    return run


def _adopt_saved_flags(recipe: Recipe, parser: argparse.ArgumentParser, args: argparse.Namespace,
                       explicit: set[str], run: RunFolder) -> None:
    """Take the run's saved flags where not given; refuse a given one that differs and may not."""
    if run.record is None:
        return
    config = run.record["config"]
    if config.get("recipe", recipe.name) != recipe.name:
        raise RecipeError(f"--resume: {run.path} holds a run of {config['recipe']}, not of {recipe.name}; "
                          f"resume it with `ember train {config['recipe']} --resume {run.path}`")
    current = vars(args)
    for key, old in config.items():
        if key in current and key not in NOT_ADOPTED and key not in explicit:
            current[key] = old
    given = {key: current[key] for key in explicit if key not in NOT_ADOPTED}
    # with a saved global batch, --batch-size follows the number of processes: checked against it below
    may_differ = MAY_DIFFER | {"batch_size"} if GLOBAL_BATCH in config else MAY_DIFFER
    for key, old, new in run.compare(given, may_differ):
        flag = flag_of(parser, key)
        raise RecipeError(f"{_shown(flag, new)} differs from the run being resumed ({run.path}), which has "
                          f"{_shown(flag, old)}; drop {flag} to keep the run's value, or start a new run without "
                          "--resume")
    _check_global_batch(args, config, run.path)


def _check_global_batch(args: argparse.Namespace, config: dict[str, Any], folder: str) -> None:
    """With another number of processes the run continues where it stopped only with the same global batch
    (the same iterations per epoch); refuse any other in one line saying which --batch-size would do."""
    world, saved = dist.planned_world_size(), config.get(GLOBAL_BATCH)
    if saved is None or args.batch_size * world == saved:
        return
    fits = f"pass --batch-size {saved // world}" if saved % world == 0 else \
        f"use a number of processes that divides {saved}"
    raise RecipeError(f"--batch-size {args.batch_size} in {world} process{'es' if world > 1 else ''} is a global "
                      f"batch of {args.batch_size * world}, but the run being resumed ({folder}) has a "
                      f"global batch of {saved}; {fits} to continue it, or start a new run without --resume")


"""What ember's TensorBoard logging costs per epoch of a recipe's set-up, on the real FashionMNIST.

Rows (medians of interleaved repeats, min..max):
  train epoch, no logger        the recipe's model, optimizer and batch on the fast data path
  train epoch, logger           the same with TensorBoardLogger (CorrectCounter, every-100-iteration points)
  evaluation, no pictures       one pass over the 10,000 test images (accuracy and loss)
  evaluation, pictures          the same with EvalPictures (confusion matrix, misclassified kept on the device)
  drawing + writing pictures    the two images drawn and written to the event file (once per evaluation)
The cost of the pictures per epoch is (evaluation with - without) + drawing, against the epoch's time
(training + evaluation).
Run: python benchmarks/tensorboard_cost.py [--recipe fashion-mnist-mlp|fashion-mnist-speedrun] [--repeats 3]
     [--device cpu] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a script: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402
from ignite.metrics import Accuracy, Loss  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._report import add_json_option, markdown_table, publish, spread  # noqa: E402
from ember.callbacks.correct_counter import CorrectCounter  # noqa: E402
from ember.callbacks.eval_pictures import (  # noqa: E402
    CONFUSION_MATRIX,
    MISCLASSIFIED,
    EvalPictures,
    confusion_matrix_image,
    misclassified_grid,
)
from ember.callbacks.tensorboard_logger import TensorBoardLogger  # noqa: E402
from ember.data import load_dataset, make_loader  # noqa: E402
from ember.recipes import fashion_mnist_mlp, fashion_mnist_speedrun  # noqa: E402
from ember.steps import create_evaluator, create_trainer  # noqa: E402

SETUPS: dict[str, dict[str, Any]] = {
    "fashion-mnist-mlp": {"model": fashion_mnist_mlp.NeuralNetwork, "batch": 64, "eval_batch": 64,
                          "optimizer": lambda p: torch.optim.SGD(p, lr=1e-3), "normalize": None},
    "fashion-mnist-speedrun": {"model": fashion_mnist_speedrun.SpeedNet, "batch": 128,
                               "eval_batch": fashion_mnist_speedrun.EVAL_BATCH,
                               "optimizer": lambda p: torch.optim.AdamW(p, lr=1e-3),
                               "normalize": fashion_mnist_speedrun.NORMALIZE},
}


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def draw(writer: Any, metrics: dict[str, Any], classes: list[str], step: int) -> None:
    """What TensorBoardLogger does with an evaluation's pictures: draw both, write them, flush."""
    writer.add_image("images/confusion_matrix", confusion_matrix_image(metrics[CONFUSION_MATRIX], classes), step,
                     dataformats="HWC")
    wrong = metrics[MISCLASSIFIED]
    grid = misclassified_grid(wrong["images"], wrong["predicted"], wrong["true"], classes)
    writer.add_image("images/misclassified", grid, step, dataformats="HWC")
    writer.flush()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    setup, device = SETUPS[args.recipe], torch.device(args.device)
    train_set, test_set = load_dataset("fashion-mnist", train=True), load_dataset("fashion-mnist", train=False)
    train_loader = make_loader(train_set, setup["batch"], shuffle=True, device=device, normalize=setup["normalize"])
    test_loader = make_loader(test_set, setup["eval_batch"], device=device, normalize=setup["normalize"])
    torch.manual_seed(0)
    model = setup["model"]().to(device)
    loss_fn = nn.CrossEntropyLoss()
    logdir = tempfile.mkdtemp(prefix="ember-tb-cost-")

    def train_epoch(with_logger: bool) -> float:
        counter = CorrectCounter(loss_fn)
        trainer = create_trainer(model, setup["optimizer"](model.parameters()), counter if with_logger else loss_fn,
                                 device)
        if with_logger:
            trainer.add(TensorBoardLogger(logdir, correct=counter, model=model))
        return timed(lambda: trainer.run(train_loader, max_epochs=1))

    def evaluator(pictures: bool) -> Any:
        metrics = {"accuracy": Accuracy(device=device), "loss": Loss(loss_fn, device=device)}
        engine = create_evaluator(model, metrics, device)
        if pictures:
            engine.add(EvalPictures())
        return engine

    plain, with_pictures = evaluator(False), evaluator(True)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(logdir)
    times: dict[str, list[float]] = {k: [] for k in ("train", "train_logger", "eval", "eval_pictures", "draw")}
    train_epoch(False)  # warm-up
    for repeat in range(args.repeats):
        order = [("train", lambda: train_epoch(False)), ("train_logger", lambda: train_epoch(True)),
                 ("eval", lambda: timed(lambda: plain.run(test_loader))),
                 ("eval_pictures", lambda: timed(lambda: with_pictures.run(test_loader)))]
        for name, run in order[repeat % 4:] + order[: repeat % 4]:
            times[name].append(run())
        metrics = with_pictures.state.metrics
        times["draw"].append(timed(lambda: draw(writer, metrics, test_set.classes, repeat + 1)))  # noqa: B023
    writer.close()
    seconds = {k: spread(v) for k, v in times.items()}
    med = {k: s["median"] for k, s in seconds.items()}
    pictures = med["eval_pictures"] - med["eval"] + med["draw"]
    epoch = med["train_logger"] + med["eval_pictures"]
    return {
        "recipe": args.recipe, "device": str(device), "repeats": args.repeats, "machine": platform.processor()
        or platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "seconds": seconds,
        "pictures_s_per_epoch": pictures, "pictures_share_of_epoch": pictures / epoch,
        "logger_share_of_training": med["train_logger"] / med["train"] - 1,
    }


LABELS = {"train": "train epoch, no logger", "train_logger": "train epoch, logger",
          "eval": "evaluation, no pictures", "eval_pictures": "evaluation, pictures",
          "draw": "drawing + writing pictures"}


def table(report: dict[str, Any]) -> str:
    lines = [f"{report['recipe']} on {report['device']} ({report['threads']} threads), {report['repeats']} repeats",
             ""]
    cells = []
    for key, label in LABELS.items():
        s = report["seconds"][key]
        cells.append([label, f"{s['median']:.3f}", f"{s['min']:.3f}..{s['max']:.3f}"])
    lines += markdown_table(["what", "seconds (median)", "min..max"], cells, "lll")
    lines += ["", f"pictures per epoch: {report['pictures_s_per_epoch']:.3f} s = "
              f"{100 * report['pictures_share_of_epoch']:.2f}% of the epoch (training + evaluation); "
              f"logger during training: {100 * report['logger_share_of_training']:+.2f}%"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=list(SETUPS), default="fashion-mnist-mlp")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    add_json_option(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = measure(args)
    publish(table(report), report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

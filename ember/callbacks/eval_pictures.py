"""Pictures of an evaluation: the confusion matrix and the misclassified inputs, collected on the device.

`EvalPictures` rides on an evaluator that already runs: each batch adds to a confusion matrix and keeps
the first misclassified inputs with fixed-shape device operations (no `nonzero`, no host read), and one
transfer at the end of the evaluation brings both to the host. `confusion_matrix_image` and
`misclassified_grid` draw them (with Pillow) for TensorBoard.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ember.engine import Engine, Events
from ember.utils import checks

if TYPE_CHECKING:  # Pillow is imported by the functions that draw, not by `import ember`
    from PIL import Image, ImageFont

CONFUSION_MATRIX = "confusion_matrix"
MISCLASSIFIED = "misclassified"
WRONG, RIGHT = (200, 30, 30), (20, 120, 40)


class EvalPictures:
    """Adds `confusion_matrix` (a C x C CPU tensor, rows = true class, columns = predicted) and
    `misclassified` (a dict of CPU tensors `images`, `predicted`, `true`: the first `keep` wrong inputs in
    evaluation order) to the evaluator's `state.metrics` when it completes.

    The evaluator's output must be `(y_pred, y)` with class scores `y_pred` (N x C) and labels `y`; the
    inputs are taken from `state.batch[0]`. Evaluate copies both into the trainer's metrics
    (`val/confusion_matrix`, `val/misclassified`), where TensorBoardLogger draws them.
    """

    def __init__(self, keep: int = 24) -> None:
        checks.non_negative_int("keep", keep, "a number of images >= 0")
        self.keep = keep
        self._reset()

    def _reset(self) -> None:
        self.counts: torch.Tensor | None = None
        self._kept: tuple[torch.Tensor, ...] | None = None

    def attach(self, evaluator: Engine) -> None:
        """Collect on every evaluation of `evaluator` (attach after its metrics, so they are computed first)."""
        evaluator.add_event_handler(Events.STARTED, lambda engine: self._reset())
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        evaluator.add_event_handler(Events.COMPLETED, self.completed)

    def update(self, engine: Engine) -> None:
        """Add one batch: confusion counts, and its misclassified inputs to the kept ones (all on the device)."""
        y_pred, y = engine.state.output
        if y_pred.ndim != 2 or y.ndim != 1:
            return
        classes = y_pred.shape[1]
        predicted = y_pred.detach().argmax(dim=1)
        y = y.to(predicted.device, non_blocking=True).long()
        if self.counts is None:
            self.counts = torch.zeros(classes * classes, dtype=torch.int64, device=predicted.device)
        self.counts.index_add_(0, y * classes + predicted, torch.ones_like(y))
        if self.keep:
            x = engine.state.batch[0].to(predicted.device, non_blocking=True)
            self._keep_wrong(x.detach(), predicted, y)

    def _keep_wrong(self, x: torch.Tensor, predicted: torch.Tensor, y: torch.Tensor) -> None:
        """Keep the first `keep` wrong samples of (kept so far, this batch): a stable sort puts them first."""
        wrong = predicted != y
        take = _first_true(wrong, self.keep)
        batch = (x[take].float(), predicted[take], y[take], wrong[take])
        if self._kept is not None:
            batch = tuple(torch.cat([old, new]) for old, new in zip(self._kept, batch))
            take = _first_true(batch[3], self.keep)
            batch = tuple(t[take] for t in batch)
        self._kept = batch

    def completed(self, engine: Engine) -> None:
        """Bring the confusion matrix and the kept images to the host in one transfer."""
        if self.counts is None:
            return
        classes = int(round(self.counts.numel() ** 0.5))
        parts = [self.counts.float()]
        if self._kept is not None:
            images, predicted, true, wrong = self._kept
            parts += [images.flatten(), predicted.float(), true.float(), wrong.float()]
        host = torch.cat(parts).cpu()
        engine.state.metrics[CONFUSION_MATRIX] = host[: classes * classes].long().view(classes, classes)
        if self._kept is None:
            return
        n, shape, size = len(images), images.shape, images.numel()
        rest = host[classes * classes:]
        images, rest = rest[:size].view(shape), rest[size:]
        predicted, true, wrong = rest[:n].long(), rest[n: 2 * n].long(), rest[2 * n:].bool()
        engine.state.metrics[MISCLASSIFIED] = {"images": images[wrong], "predicted": predicted[wrong],
                                               "true": true[wrong]}


def _first_true(flags: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of `min(k, len)` entries, the True ones first in their order (fixed shape: no host sync)."""
    order = torch.sort(flags.to(torch.uint8), descending=True, stable=True).indices
    return order[: min(k, len(flags))]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _name(classes: Sequence[str] | None, index: int, width: int = 12) -> str:
    text = str(classes[index]) if classes is not None and index < len(classes) else str(index)
    return text if len(text) <= width else text[: width - 1] + "."


CARD_WIDTH = 320  # TensorBoard's Time Series cards are at least 335 px wide, padding included


def confusion_matrix_image(counts: torch.Tensor, classes: Sequence[str] | None = None, cell: int = 24) -> np.ndarray:
    """An RGB picture (H x W x 3 uint8) of a confusion matrix: rows are true classes, columns predicted;
    each cell shows its count, shaded by its share of the row (the diagonal in blue, mistakes in red). With
    ten classes it is at most CARD_WIDTH wide, so a Time Series card shows it at its own size, readable,
    not shrunk."""
    from PIL import Image, ImageDraw

    counts = counts.long().cpu()
    n = counts.shape[0]
    font, small = _font(11), _font(10)
    label_w = 8 + max(int(font.getlength(_name(classes, i))) for i in range(n))
    top = 34 + max(int(small.getlength(_name(classes, i))) for i in range(n))
    image = Image.new("RGB", (label_w + n * cell + 8, top + n * cell + 8), "white")
    draw = ImageDraw.Draw(image)
    draw.text((label_w, 4), "columns: predicted class, rows: true class", fill="black", font=font)
    rows = counts.sum(dim=1).clamp(min=1)
    for j in range(n):
        label = Image.new("RGB", (top - 26, cell), "white")
        ImageDraw.Draw(label).text((2, cell // 2 - 6), _name(classes, j), fill="black", font=small)
        image.paste(label.rotate(90, expand=True), (label_w + j * cell, 22))
    for i in range(n):
        y0 = top + i * cell
        draw.text((4, y0 + cell // 2 - 7), _name(classes, i), fill="black", font=font)
        for j in range(n):
            share = float(counts[i, j]) / float(rows[i])
            shade = int(255 * (1 - share))
            colour = (shade, shade, 255) if i == j else (255, shade, shade)
            x0 = label_w + j * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour, outline=(220, 220, 220))
            text = str(int(counts[i, j]))
            ink = "white" if share > 0.6 else "black"
            draw.text((x0 + (cell - font.getlength(text)) / 2, y0 + cell // 2 - 7), text, fill=ink, font=font)
    return np.asarray(image)


def _tile(image: torch.Tensor, scale: int) -> Image.Image:
    """One input as a picture: channels first, rescaled to its own range (inputs may be normalised)."""
    from PIL import Image

    image = image.float()
    if image.ndim == 2:
        image = image.unsqueeze(0)
    low, high = image.min(), image.max()
    image = (image - low) / (high - low) if high > low else torch.zeros_like(image)
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array[:, :, :3]).convert("RGB")
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def misclassified_grid(images: torch.Tensor, predicted: torch.Tensor, true: torch.Tensor,
                       classes: Sequence[str] | None = None, columns: int = 3) -> np.ndarray:
    """An RGB grid (H x W x 3 uint8) of misclassified inputs, each captioned with its predicted (red) and
    true (green) class; an empty set gives a small picture that says so. Three columns keep it within
    CARD_WIDTH, so a Time Series card shows it at its own size."""
    from PIL import Image, ImageDraw

    font = _font(11)
    if len(images) == 0:
        image = Image.new("RGB", (260, 40), "white")
        ImageDraw.Draw(image).text((8, 12), "no misclassified test images", fill="black", font=font)
        return np.asarray(image)
    side = images.shape[-1]
    scale = max(1, 64 // side)
    tile_w = max(side * scale, 84)
    tile_h = images.shape[-2] * scale + 30
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * (tile_w + 6) + 6, rows * (tile_h + 6) + 6), "white")
    draw = ImageDraw.Draw(grid)
    for k in range(len(images)):
        x0, y0 = 6 + (k % columns) * (tile_w + 6), 6 + (k // columns) * (tile_h + 6)
        picture = _tile(images[k], scale)
        grid.paste(picture, (x0 + (tile_w - picture.width) // 2, y0))
        below = y0 + picture.height + 2
        draw.text((x0, below), "pred " + _name(classes, int(predicted[k])), fill=WRONG, font=font)
        draw.text((x0, below + 13), "true " + _name(classes, int(true[k])), fill=RIGHT, font=font)
    return np.asarray(grid)

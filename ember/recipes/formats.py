"""The output lines of the seeds the recipes reproduce, as templates for ember's printing handlers.

`LossPrinter(fmt=...)`, `Evaluate(fmt=...)` and `ThroughputMonitor(fmt=...)` fill them in; each recipe picks
the one of its seed, so that its run prints what the seed program printed.
"""

from ember.callbacks.loss_printer import DEFAULT_FMT

# `loss: 2.290156  [    0/60000]` every 100 batches (seed 000, the PyTorch "Optimizing Model Parameters" tutorial),
# which is also LossPrinter's default.
SEED000_FMT = DEFAULT_FMT
# `Epoch [1/5], Step [100/782], Loss: 2.0503`, the mean of the last 100 steps (seed 001; use window=True).
SEED001_FMT = "Epoch [{epoch}/{max_epochs}], Step [{step}/{steps}], Loss: {loss:.4f}"
# `Test Error: \n Accuracy: 49.9%, Avg loss: 2.116347 \n` (seed 000), for metrics named accuracy and loss.
SEED000_EVAL_FMT = "Test Error: \n Accuracy: {accuracy_pct:>0.1f}%, Avg loss: {loss:>8f} \n"
# MindSpore's LossMonitor lines at each epoch end (seed 003):
# `Epoch:[  0/ 10], step:[ 1875/ 1875], loss:[0.189/1.176], time:2.254 ms, lr:0.01000`
# `Epoch time: 4286.163 ms, per step time: 2.286 ms, avg loss: 1.176`
SEED003_FMT = (
    "Epoch:[{epoch0:>3d}/{max_epochs:>3d}], step:[{step:>5d}/{steps:>5d}], "
    "loss:[{loss:.3f}/{avg_loss:.3f}], time:{step_ms:.3f} ms, lr:{lr:.5f}\n"
    "Epoch time: {epoch_ms:.3f} ms, per step time: {step_avg_ms:.3f} ms, avg loss: {avg_loss:.3f}"
)

__all__ = ["SEED000_EVAL_FMT", "SEED000_FMT", "SEED001_FMT", "SEED003_FMT"]

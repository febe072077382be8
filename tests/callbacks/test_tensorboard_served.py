"""Recipes' TensorBoard runs served by `ember board` (the real TensorBoard, on 127.0.0.1) and read back over
TensorBoard's HTTP API.

One module-wide set-up trains two short recipe runs through `ember train` on small fake datasets: the
speed run (OneCycle LR stepped every iteration) and mnist-mlp-plateau (seed 002, whose printed losses are
scaled), the latter interrupted after 9 iterations and resumed from its iteration-6 checkpoint, as after
a kill. One `ember board` server then serves both, and each test reads what a person would see.
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from fakedata import offline, write_fashion_mnist, write_mnist
from PIL import Image

from ember.callbacks import Checkpoint
from ember.recipes.cli import main

pytestmark = pytest.mark.slow

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only: never via a proxy
SPEED, PLATEAU = "speed", "plateau"
ITERS = 8  # 256 training images in batches of 32


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Captured:
    """Takes one object's state out of a checkpoint through Checkpoint.load (the handlers' states here)."""

    state: Any = None

    def state_dict(self) -> Any:
        return self.state

    def load_state_dict(self, state: Any) -> None:
        self.state = state


def train(name: str, *argv: str) -> str:
    """`ember train name ...` (later flags win), its stdout."""
    out = io.StringIO()
    saved = sys.stdout
    sys.stdout = out
    try:
        rc = main(["train", name, "--no-progress", "--device", "cpu", "--log-every", "2", *argv])
    finally:
        sys.stdout = saved
    assert rc == 0, out.getvalue()
    return out.getvalue()


class Board:
    """The HTTP API of a tensorboard server."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/data/plugin"

    def get(self, route: str, **query: str) -> Any:
        with DIRECT.open(f"{self.base}/{route}?{urllib.parse.urlencode(query)}", timeout=10) as response:
            body = response.read()
        return body if route.endswith("individualImage") else json.loads(body)

    def post(self, route: str, body: dict) -> Any:
        request = urllib.request.Request(f"{self.base}/{route}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with DIRECT.open(request, timeout=10) as response:
            return json.loads(response.read())

    def scalars(self, run: str, tag: str) -> list[tuple[int, float]]:
        return [(step, value) for _, step, value in self.get("scalars/scalars", run=run, tag=tag)]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("board")
    fashion, mnist = base / "fashion", base / "mnist"
    write_fashion_mnist(fashion, n_train=256, n_test=128)
    write_mnist(mnist, n_train=256, n_test=128)
    runs = base / "runs"
    found: dict[str, Any] = {"runs": runs}
    with pytest.MonkeyPatch.context() as mp:
        offline(mp, base)
        train("fashion-mnist-speedrun", "--data-root", str(fashion), "--epochs", "2", "--batch-size", "32",
              "--logdir", str(runs / SPEED), "--checkpoint-dir", str(base / "ckpt-speed"), "--histograms", "--graph")
        plateau = ["mnist-mlp-plateau", "--data-root", str(mnist), "--epochs", "2", "--batch-size", "32",
                   "--logdir", str(runs / PLATEAU), "--checkpoint-dir", str(base / "ckpt-plateau"),
                   "--checkpoint-every", "3", "--keep-last", "9"]
        train(*plateau, "--max-iterations", "9")
        found["interrupted"] = read_events(runs / PLATEAU)
        found["interrupted_hparams"] = hparams_tags(runs / PLATEAU)
        for path in (base / "ckpt-plateau").glob("checkpoint_*.pt"):
            if int(re.findall(r"\d+", path.name)[-1]) > 6:
                path.unlink()  # as if killed after iteration 9 with the checkpoint of iteration 6 the newest
        captured = Captured()
        Checkpoint.load(Checkpoint.latest(base / "ckpt-plateau"), {"handlers": captured}, restore_rng=False)
        found["saved_state"] = captured.state["TensorBoardLogger"]
        # Logging every 3 iterations now: the interrupted run's point at 8, past the checkpoint, must go.
        found["printed"] = train(*plateau, "--resume", "--log-every", "3")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ember", "board", str(runs), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    board = Board(port)
    try:
        found["url_line"] = server.stdout.readline()  # type: ignore[union-attr]
        found["hint_line"] = server.stdout.readline()  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail(f"ember board exited early: {server.stderr.read()[-2000:]}")  # type: ignore[union-attr]
            try:
                tags = board.get("scalars/tags")
                if {SPEED, PLATEAU} <= set(tags):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ember board at port {port} did not serve the runs within 60 s")
            time.sleep(0.3)
        found["port"] = port
        found["board"] = board
        yield found
    finally:
        server.kill()
        server.wait(timeout=10)
        server.stdout.close()  # type: ignore[union-attr]
        server.stderr.close()  # type: ignore[union-attr]


def read_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def hparams_tags(folder: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    try:
        return set(events.PluginTagToContent("hparams"))
    except KeyError:  # no hparams data in the folder at all
        return set()


def test_ember_board_prints_its_url_and_refuses_a_taken_port(served, capsys):
    assert served["url_line"].strip().endswith(f"at http://127.0.0.1:{served['port']}/ (Ctrl-C to stop)")
    port = served["port"]
    assert f"ssh -L {port}:127.0.0.1:{port} " in served["hint_line"], "how to reach it from another machine"
    # the served board is another process; `ember board` is asked here, in this one
    capsys.readouterr()
    assert main(["board", str(served["runs"]), "--port", str(served["port"])]) == 1
    taken = capsys.readouterr()
    assert taken.out == ""
    assert taken.err.splitlines() == [f"ember board: error: port {served['port']} on 127.0.0.1 is taken "
                                      "(another TensorBoard?); pass --port with a free one"]
    assert main(["board", str(served["runs"] / "nothing")]) == 1
    missing = capsys.readouterr().err
    assert len(missing.splitlines()) == 1 and "is not a folder" in missing


def test_one_entry_per_run_with_train_and_val_charts_side_by_side(served):
    board = served["board"]
    tags = board.get("scalars/tags")
    assert set(tags) == {SPEED, PLATEAU}, "one TensorBoard run per training run"
    assert set(board.get("images/tags")) <= {SPEED, PLATEAU} and set(board.get("histograms/tags")) <= {SPEED}
    for tag in ("epoch/loss", "epoch/accuracy"):
        train, val = board.scalars(SPEED, f"{tag}/train"), board.scalars(SPEED, f"{tag}/val")
        assert [s for s, _ in train] == [s for s, _ in val] == [ITERS, 2 * ITERS], "at each epoch's last iteration"
    assert all(0 <= v <= 1 for _, v in board.scalars(SPEED, "epoch/accuracy/val"))
    assert not [t for run in tags.values() for t in run if t.startswith("hparam")], "hparams are not charts"


def test_time_series_opens_on_the_epoch_and_iteration_groups(served):
    """TensorBoard's Time Series page expands the first two tag groups (a tag's part before its first "/",
    groups in name order, every plugin's tags together): those must be the epoch and iteration charts."""
    board = served["board"]
    tags = {tag for route in ("scalars/tags", "images/tags", "histograms/tags")
            for run in board.get(route).values() for tag in run}
    groups = sorted({tag.split("/")[0] for tag in tags})
    assert groups[:2] == ["epoch", "iteration"] and {"pictures", "val_best", "weights"} <= set(groups[2:]), groups


def test_learning_rate_at_every_logged_iteration_follows_one_cycle(served):
    lrs = served["board"].scalars(SPEED, "iteration/lr")
    assert [s for s, _ in lrs] == list(range(2, 2 * ITERS + 1, 2))
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, epochs=2, steps_per_epoch=ITERS,
                                                   pct_start=0.25)
    used = []  # the rate each iteration trained with
    for _ in range(2 * ITERS):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert [v for _, v in lrs] == pytest.approx([used[s - 1] for s, _ in lrs], rel=1e-5)
    assert max(v for _, v in lrs) > 10 * min(v for _, v in lrs), "the curve rises and falls"


def test_throughput_epoch_time_and_gradient_norm(served):
    board = served["board"]
    for tag in ("epoch/samples_per_s", "epoch/time_s"):
        values = board.scalars(SPEED, tag)
        assert [s for s, _ in values] == [ITERS, 2 * ITERS] and all(v > 0 for _, v in values), (tag, values)
    norms = board.scalars(SPEED, "iteration/grad_norm")
    assert [s for s, _ in norms] == list(range(2, 2 * ITERS + 1, 2)) and all(v > 0 for _, v in norms)
    losses = board.scalars(SPEED, "iteration/loss")
    assert [s for s, _ in losses] == list(range(2, 2 * ITERS + 1, 2))


def session_groups(board: Board) -> dict[str, Any]:
    body = {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                      "STATUS_RUNNING"],
            "colParams": [], "startIndex": 0, "sliceSize": 100}
    groups = board.post("hparams/session_groups", body)["sessionGroups"]
    return {session["name"]: group for group in groups for session in group["sessions"]}


def test_hparams_hold_every_flag_and_the_final_and_best_validation_values(served):
    board = served["board"]
    experiment = board.post("hparams/experiment", {"experimentName": ""})
    names = {info["name"] for info in experiment["hparamInfos"]}
    assert {"recipe", "epochs", "batch_size", "lr", "seed", "label_smoothing", "weight_decay", "scheduler"} <= names
    assert not names & {"logdir", "checkpoint_dir", "resume", "progress"}
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"epoch/accuracy/val", "val_best/accuracy", "epoch/loss/val", "val_best/loss"} <= metrics
    groups = session_groups(board)
    speed = groups[SPEED]
    assert speed["hparams"]["label_smoothing"] == pytest.approx(0.1) and speed["hparams"]["epochs"] == 2
    assert speed["hparams"]["device"] == "cpu", "the device used, not --device auto"
    assert speed["hparams"]["channels_last"] == 1, "the speed run always trains channels-last (TensorBoard: 1.0)"
    values = {m["name"]["tag"]: m["value"] for m in speed["metricValues"]}
    accuracy = [v for _, v in board.scalars(SPEED, "epoch/accuracy/val")]
    loss = [v for _, v in board.scalars(SPEED, "epoch/loss/val")]
    assert values["epoch/accuracy/val"] == pytest.approx(accuracy[-1])
    assert values["val_best/accuracy"] == pytest.approx(max(accuracy))
    assert values["val_best/loss"] == pytest.approx(min(loss))
    assert groups[PLATEAU]["hparams"]["scheduler"] == "plateau"


def test_hparams_list_each_run_under_a_short_name_of_its_changed_flags(served):
    names = {run: group["name"] for run, group in session_groups(served["board"]).items()}
    # the flags given that differ from the defaults (--device cpu from train(); the folders are not hparams)
    assert names[SPEED] == "epochs=2 batch-size=32 device=cpu · ckpt-speed · fashion-mnist-speedrun"
    assert names[PLATEAU] == "epochs=2 device=cpu · ckpt-plateau · mnist-mlp-plateau", "32 is its default batch"


def test_confusion_matrix_and_misclassified_images_per_evaluation(served):
    board = served["board"]
    tags = board.get("images/tags")[SPEED]
    assert {"pictures/confusion_matrix", "pictures/misclassified"} <= set(tags)
    for tag in ("pictures/confusion_matrix", "pictures/misclassified"):
        entries = board.get("images/images", run=SPEED, tag=tag)
        assert [e["step"] for e in entries] == [ITERS, 2 * ITERS]
        png = board.get("images/individualImage", **dict(urllib.parse.parse_qsl(entries[-1]["query"])))
        picture = Image.open(io.BytesIO(png))
        assert picture.format == "PNG" and picture.width > 200 and picture.height > 40


def test_histograms_and_graph_behind_their_flags(served):
    board = served["board"]
    histograms = board.get("histograms/tags")
    assert {"weights/features.0.weight", "weights/features.0.weight/grad"} <= set(histograms[SPEED])
    assert PLATEAU not in histograms, "off by default"
    graphs = board.get("graphs/info")
    assert graphs[SPEED]["run_graph"] and PLATEAU not in graphs


def test_resumed_run_continues_the_same_run_without_duplicate_steps(served):
    board, interrupted = served["board"], served["interrupted"]
    assert [s for s, _ in interrupted["epoch/loss/train"]] == [ITERS], "the interrupted run had logged epoch 1"
    assert served["interrupted_hparams"] == set(), "a run stopped to be resumed writes no hparams"
    assert [s for s, _ in interrupted["iteration/loss"]] == [2, 4, 6, 8]
    resumed_steps = [2, 4, 6, 9, 12, 15]  # from the checkpoint at 6, every 3
    epochs = [ITERS, 2 * ITERS]
    for tag, steps in [("iteration/loss", resumed_steps), ("iteration/lr", resumed_steps),
                       ("epoch/loss/train", epochs), ("epoch/loss/val", epochs), ("epoch/time_s", epochs)]:
        assert [s for s, _ in board.scalars(PLATEAU, tag)] == steps, tag
    # epoch 1 was resumed at iteration 6: its figures still cover all 8 of its iterations
    epoch1 = served["saved_state"]["epoch"]
    assert epoch1["epoch"] == 1 and epoch1["steps"] == 6
    train_loss = board.scalars(PLATEAU, "epoch/loss/train")
    assert train_loss[0][1] == pytest.approx(interrupted["epoch/loss/train"][0][1], rel=1e-5)
    assert board.scalars(PLATEAU, "epoch/time_s")[0][1] > epoch1["elapsed_s"]
    assert session_groups(board)[PLATEAU]["hparams"]["epochs"] == 2


def test_seed002_prints_its_scaled_losses_and_tensorboard_has_the_means(served):
    board, printed = served["board"], served["printed"]
    lines = re.findall(r"Epoch (\d)\t Training Loss: (\S+)\t Validation Loss:(\S+)\t", printed)
    assert [int(e) for e, _, _ in lines] == [0, 1]
    val = board.scalars(PLATEAU, "epoch/loss/val")
    # the seed's figure: sum of batch loss * batch size over the 4 test batches, / 4 = 32 x the mean
    assert [v for _, v in val] == pytest.approx([float(v) * 4 / 128 for _, _, v in lines], rel=1e-5)
    train_loss = board.scalars(PLATEAU, "epoch/loss/train")
    assert train_loss[1][1] == pytest.approx(float(lines[1][1]) / 32, rel=1e-5)  # epoch 2 ran whole after resume
    assert all(v < 3 for _, v in val + train_loss)

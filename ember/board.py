"""`ember board [LOGDIR]`: the real TensorBoard over ember's runs folder, on 127.0.0.1 only."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
import threading

HOST = "127.0.0.1"


def port_taken(port: int, host: str = HOST) -> bool:
    """Whether another process already listens on (host, port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ember board", description="Serve ember's TensorBoard runs on " + HOST)
    p.add_argument("logdir", nargs="?", default="runs", metavar="LOGDIR",
                   help="folder of runs (default: runs, where `ember train` writes)")
    p.add_argument("--port", type=int, default=6006, help="port on 127.0.0.1 (default: 6006)")
    return p


def _fail(message: str) -> int:
    print(f"ember board: error: {message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Start TensorBoard on LOGDIR, print its URL and serve until Ctrl-C; a clear line and status 1 on errors."""
    args = _parser().parse_args(argv)
    if not os.path.isdir(args.logdir):
        return _fail(f"{args.logdir} is not a folder; train first (`ember train NAME`) or pass the runs folder")
    if not 0 < args.port < 65536:
        return _fail(f"--port must be between 1 and 65535, got {args.port}")
    if port_taken(args.port):
        return _fail(f"port {args.port} on {HOST} is taken (another TensorBoard?); pass --port with a free one")
    from tensorboard import program

    board = program.TensorBoard()
    # The Python loader: it honours the purge marker a resumed run writes (the Rust one drops it).
    board.configure(argv=[None, "--logdir", args.logdir, "--host", HOST, "--port", str(args.port),
                          "--load_fast", "false", "--reload_interval", "2"])
    try:
        url = board.launch()
    except program.TensorBoardPortInUseError:
        return _fail(f"port {args.port} on {HOST} is taken (another TensorBoard?); pass --port with a free one")
    print(f"TensorBoard on {os.path.abspath(args.logdir)} at {url} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("ember board: stopped")
    return 0

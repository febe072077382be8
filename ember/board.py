"""`ember board [LOGDIR]`: the real TensorBoard over ember's runs folder, on 127.0.0.1 unless --host says otherwise."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
import threading

HOST = "127.0.0.1"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def port_taken(port: int, host: str = HOST) -> bool:
    """Whether another process already listens on (host, port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def remote_hint(host: str, port: int) -> str:
    """How to reach the board from another machine: an SSH tunnel to a loopback-only board, or the address."""
    if host in LOOPBACK:
        return (f"On a remote machine? Tunnel to it from your own: ssh -L {port}:127.0.0.1:{port} USER@THIS-HOST, "
                f"then open http://localhost:{port}/ there (or serve every interface: --host 0.0.0.0)")
    return (f"Served on {host}: anyone who can reach this machine's port {port} sees the runs "
            f"(http://THIS-HOST:{port}/)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ember board", description="Serve ember's TensorBoard runs (on 127.0.0.1 "
                                "unless --host says otherwise)")
    p.add_argument("logdir", nargs="?", default="runs", metavar="LOGDIR",
                   help="folder of runs (default: runs, where `ember train` writes)")
    p.add_argument("--host", default=HOST,
                   help=f"address to serve on (default: {HOST}, this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=6006, help="port (default: 6006)")
    return p


def _fail(message: str) -> int:
    print(f"ember board: error: {message}", file=sys.stderr)
    return 1


def _valid_host(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Start TensorBoard on LOGDIR, print its URL and serve until Ctrl-C; a clear line and status 1 on errors."""
    args = _parser().parse_args(argv)
    if not os.path.isdir(args.logdir):
        return _fail(f"{args.logdir} is not a folder; train first (`ember train NAME`) or pass the runs folder")
    if not 0 < args.port < 65536:
        return _fail(f"--port must be between 1 and 65535, got {args.port}")
    if not _valid_host(args.host):
        return _fail(f"--host {args.host} is not an address of this machine; use 127.0.0.1 (the default) or 0.0.0.0")
    taken = f"port {args.port} on {args.host} is taken (another TensorBoard?); pass --port with a free one"
    try:
        if port_taken(args.port, args.host):
            return _fail(taken)
    except OSError as exc:
        return _fail(f"cannot serve on --host {args.host}: {exc.strerror or exc}; use 127.0.0.1 or 0.0.0.0")
    from tensorboard import program

    board = program.TensorBoard()
    # The Python loader: it honours the purge marker a resumed run writes (the Rust one drops it).
    board.configure(argv=[None, "--logdir", args.logdir, "--host", args.host, "--port", str(args.port),
                          "--load_fast", "false", "--reload_interval", "2"])
    try:
        url = board.launch()
    except program.TensorBoardPortInUseError:
        return _fail(taken)
    print(f"TensorBoard on {os.path.abspath(args.logdir)} at {url} (Ctrl-C to stop)", flush=True)
    print(remote_hint(args.host, args.port), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("ember board: stopped")
    return 0

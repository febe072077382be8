"""`ember board`: --host and --port, the remote-machine hint, and the one-line errors (the served dashboard
itself: tests/callbacks/test_tensorboard_served.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from ember.board import main, remote_hint

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def outward_address() -> str | None:
    """An address of this machine other than loopback (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_the_hint_for_a_remote_machine_names_the_ssh_tunnel() -> None:
    assert "ssh -L 6007:127.0.0.1:6007 " in remote_hint("127.0.0.1", 6007)
    assert "--host 0.0.0.0" in remote_hint("127.0.0.1", 6007)
    assert "ssh" not in remote_hint("0.0.0.0", 6006) and "port 6006" in remote_hint("0.0.0.0", 6006)


@pytest.mark.parametrize(("argv", "says"), [
    (["--host", "no-such-host.invalid"], "--host no-such-host.invalid is not an address of this machine"),
    (["--host", "192.0.2.1"], "cannot serve on --host 192.0.2.1"),  # TEST-NET-1: never this machine's
    (["--port", "0"], "--port must be between 1 and 65535, got 0"),
])
def test_bad_host_or_port_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                      says: str) -> None:
    assert main([str(tmp_path), *argv]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("ember board: error: ") and says in err[0], err


def test_host_0000_serves_every_interface(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ember", "board", str(tmp_path), "--host", "0.0.0.0",
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url_line, hint_line = server.stdout.readline(), server.stdout.readline()  # type: ignore[union-attr]
        assert f":{port}/ (Ctrl-C to stop)" in url_line, (url_line, server.stderr.read())  # type: ignore[union-attr]
        assert "Served on 0.0.0.0" in hint_line
        for address in filter(None, ("127.0.0.1", outward_address())):
            with DIRECT.open(f"http://{address}:{port}/data/logdir", timeout=20) as response:
                assert str(tmp_path) in response.read().decode(), address
    finally:
        server.kill()
        server.wait(timeout=10)
        server.stdout.close()  # type: ignore[union-attr]
        server.stderr.close()  # type: ignore[union-attr]

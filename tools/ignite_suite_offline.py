"""pytest plugin for both runs of the Ignite suite: no network, and every test's outcome written down.

No network: connecting to another machine (or resolving its name) raises at once, so a test that downloads
data fails on both engines and drops out of the baseline instead of waiting on unreachable mirrors for minutes.
Local sockets stay open: AF_UNIX (DataLoader worker processes pass tensors over them) and loopback addresses
(a test's own server), so the tests that use them run and count.

Outcomes: with IGNITE_SUITE_OUTCOMES=FILE in the environment, the run writes `{test id: outcome}` as JSON to
FILE, the outcome one of passed, failed, skipped, xfailed, xpassed (a setup or teardown error is failed).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket

_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
_create_connection, _getaddrinfo = socket.create_connection, socket.getaddrinfo
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", ""}


def is_local(host: object) -> bool:
    """Whether `host` (a name or an address) is this machine: a loopback address, an unspecified one, localhost."""
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host is None or not isinstance(host, str):
        return host is None
    name = host.split("%")[0].strip("[]").lower()
    if name in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _refuse(where: object) -> OSError:
    return OSError(f"network access is disabled in the Ignite suite run (tools/ignite_suite_offline.py): {where!r}")


def _allowed(sock: socket.socket, address: object) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return True  # AF_UNIX and the other local families
    return is_local(address[0] if isinstance(address, tuple) else address)


def connect(self: socket.socket, address: object) -> None:
    if not _allowed(self, address):
        raise _refuse(address)
    return _connect(self, address)


def connect_ex(self: socket.socket, address: object) -> int:
    if not _allowed(self, address):
        raise _refuse(address)
    return _connect_ex(self, address)


def getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
    if not is_local(host):
        raise socket.gaierror(socket.EAI_NONAME, f"name resolution is disabled in the Ignite suite run: {host!r}")
    return _getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]


def create_connection(address: tuple, *args: object, **kwargs: object) -> socket.socket:
    if not is_local(address[0]):
        raise _refuse(address)
    return _create_connection(address, *args, **kwargs)  # type: ignore[arg-type]


socket.socket.connect = connect  # type: ignore[method-assign]
socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
socket.create_connection = create_connection
socket.getaddrinfo = getaddrinfo

_outcomes: dict[str, str] = {}


def outcome_of(report: object, previous: str | None) -> str | None:
    """The outcome a test's `report` (of its setup, call or teardown) gives it, after `previous` (None: none yet)."""
    when, wasxfail = getattr(report, "when", None), hasattr(report, "wasxfail")
    if getattr(report, "failed", False):
        return "failed"
    if previous == "failed":
        return previous
    if getattr(report, "skipped", False):
        return "xfailed" if wasxfail else "skipped"
    if when == "call" and getattr(report, "passed", False):
        return "xpassed" if wasxfail else "passed"
    return previous


def pytest_runtest_logreport(report):
    outcome = outcome_of(report, _outcomes.get(report.nodeid))
    if outcome is not None:
        _outcomes[report.nodeid] = outcome


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("IGNITE_SUITE_OUTCOMES")
    if path:
        with open(path, "w") as f:
            json.dump(_outcomes, f, indent=0, sort_keys=True)


def pytest_collection_modifyitems(config, items):
    """Skip the tests whose fixture downloads MNIST: offline, its retry loop would never end."""
    import pytest

    for item in items:
        if "mnist_dataloader" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.skip(reason="needs the network (downloads MNIST)"))

"""pytest plugin for both runs of the Ignite suite: no network, so tests that download data fail at once.

Without it a test that downloads MNIST waits on unreachable mirrors for minutes (then fails on both engines
anyway); with it the download raises immediately, the test fails on Ignite too and drops out of the baseline.
"""

import socket


def _refuse(*args, **kwargs):
    raise OSError("network access is disabled in the Ignite suite run (tools/ignite_suite_offline.py)")


socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse


def pytest_collection_modifyitems(config, items):
    """Skip the tests whose fixture downloads MNIST: offline, its retry loop would never end."""
    import pytest

    for item in items:
        if "mnist_dataloader" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.skip(reason="needs the network (downloads MNIST)"))

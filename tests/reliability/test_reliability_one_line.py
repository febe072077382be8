"""Issue 25 item 6: the command line says a failed save once, and a stop signal during start-up in one line.

A save that fails (here an EIO from the disk, as a read-only folder, a full disk or a file in the way do) is
one `ember: error:` line: the engines' "... is terminating due to exception" log lines are not printed too.
SIGTERM before the run's graceful stop is installed (loading data, building the model) says so in one line
and exits 143 instead of dying silently with -15.
"""

from __future__ import annotations

import errno
import logging
import os
import signal

import pytest
from harness import error_lines, lenet_argv, run_cli, write_tiny_mnist

import ember.checkpoint.folder
import ember.recipes.flags


@pytest.fixture(scope="module")
def mnist(tmp_path_factory, offline_data_for_module):
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist"))


def test_a_failed_save_is_one_error_line(mnist, tmp_path, monkeypatch, caplog):
    def failing(payload, path):
        raise OSError(errno.EIO, "Input/output error", path)

    monkeypatch.setattr(ember.checkpoint.folder, "save_file", failing)
    with caplog.at_level(logging.INFO):
        code, out, err = run_cli(lenet_argv(mnist, tmp_path / "ckpt", "--max-iterations", "2"))
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 1 and "Input/output error" in lines[0] and "could not write checkpoint" in lines[0], err
    said = [r.getMessage() for r in caplog.records] + err.splitlines()
    assert not [line for line in said if "terminating due to exception" in line], said


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_stop_signal_during_start_up_is_one_line_and_128_plus_the_signal(mnist, tmp_path, monkeypatch, signame):
    parse = ember.recipes.flags.parse_flags
    signum = getattr(signal, signame)

    def signalled_while_starting(*args, **kwargs):
        os.kill(os.getpid(), signum)
        return parse(*args, **kwargs)

    monkeypatch.setattr(ember.recipes.flags, "parse_flags", signalled_while_starting)
    before = signal.getsignal(signum)
    code, out, err = run_cli(lenet_argv(mnist, tmp_path / "ckpt"))
    assert code == 128 + signum
    assert err.strip() == f"ember: stopped by {signame} during start-up, before the first checkpoint; nothing was " \
        "saved or changed", err
    assert signal.getsignal(signum) == before  # the command line put the handler back
    assert not list(tmp_path.glob("ckpt/*.pt"))

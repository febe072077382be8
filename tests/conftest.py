"""Fixtures shared by the test folders (tests/ mirrors ember/: engine, steps, data, checkpoint, callbacks, ...).

Helper modules next to this file, importable by name from every test (setup.cfg puts tests/ on the path):
fakedata.py (datasets in their real on-disk formats, `offline`) and harness.py (tiny trainers, bitwise
state comparison, CLI runs and their arguments, child processes).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakedata import offline


@pytest.fixture
def offline_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's folder, with ember's data search limited to what the test writes (`fakedata.offline`)."""
    offline(monkeypatch, tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def offline_data_for_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`offline_data` for a module's shared set-up (module-scoped fixtures): a folder of its own, for the module."""
    folder = tmp_path_factory.mktemp("offline")
    with pytest.MonkeyPatch.context() as mp:
        offline(mp, folder)
        yield folder

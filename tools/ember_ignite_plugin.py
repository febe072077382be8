"""pytest plugin: Ignite's test suite with ember's Engine in the place of Ignite's, and a count of the engines built.

Loaded with `-p ember_ignite_plugin` before any test module is imported, it rebinds every global of every loaded
module (ember's own excepted) that holds Ignite's `Engine` to `ember.Engine`, and every one that holds Ignite's
`DeterministicEngine` to the one ember ships (`ember.steps.DeterministicEngine`). That covers `ignite.engine` and
also the modules that imported Engine before the plugin ran (the param schedulers' `simulate_values`, the
metrics, the handlers); modules imported later get ember's from `ignite.engine`. Events, State and the other
classes are Ignite's own in both runs (ember uses them as they are).

Every engine a test builds is counted: ember's (an instance of `ember.Engine`) or not (a plain Ignite engine,
which would mean the run measured Ignite where it claims to measure ember). With IGNITE_SUITE_ENGINES=FILE in the
environment, the counts and the tests that built plain Ignite engines are written to FILE as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from typing import Any

import ignite.engine
import ignite.engine.deterministic
import ignite.engine.engine

import ember
from ember.steps import DeterministicEngine as EmberDeterministicEngine

IGNITE_ENGINE = ignite.engine.engine.Engine
IGNITE_DETERMINISTIC = ignite.engine.deterministic.DeterministicEngine
_REPLACEMENTS = {id(IGNITE_ENGINE): ember.Engine, id(IGNITE_DETERMINISTIC): EmberDeterministicEngine}


def rebind_loaded_modules() -> int:
    """Point every loaded module's globals that hold Ignite's Engine or DeterministicEngine at ember's; return how
    many were rebound. ember's own modules keep theirs (ember.Engine subclasses Ignite's)."""
    rebound = 0
    for name, module in list(sys.modules.items()):
        if module is None or name == "ember" or name.startswith("ember.") or name == __name__:
            continue
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for key, value in list(namespace.items()):
            replacement = _REPLACEMENTS.get(id(value))
            if replacement is not None and (value is IGNITE_ENGINE or value is IGNITE_DETERMINISTIC):
                namespace[key] = replacement
                rebound += 1
    return rebound


REBOUND = rebind_loaded_modules()
_built: Counter[str] = Counter()
_plain_by_test: Counter[str] = Counter()
_current = "<collection>"
_ignite_init = IGNITE_ENGINE.__init__


def _counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
    kind = "ember" if isinstance(self, ember.Engine) else "ignite"
    _built[kind] += 1
    if kind == "ignite":
        _plain_by_test[_current] += 1
    _ignite_init(self, *args, **kwargs)


IGNITE_ENGINE.__init__ = _counting_init  # type: ignore[method-assign]


def pytest_runtest_logstart(nodeid, location):
    global _current
    _current = nodeid


def pytest_collectstart(collector):
    global _current
    _current = "<collection>"


def pytest_report_header(config):
    return (f"ignite.engine.Engine is ember's ({ember.Engine.__module__}.{ember.Engine.__qualname__}); "
            f"{REBOUND} module globals rebound")


def engine_counts() -> dict[str, Any]:
    """The engines built so far: ember's, plain Ignite ones, and the tests that built plain ones (how many each)."""
    return {"ember": _built["ember"], "ignite": _built["ignite"], "rebound_globals": REBOUND,
            "plain_ignite_by_test": dict(sorted(_plain_by_test.items()))}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = engine_counts()
    terminalreporter.write_line(f"engines built: {counts['ember']} ember, {counts['ignite']} plain Ignite")
    for test_id, n in counts["plain_ignite_by_test"].items():
        terminalreporter.write_line(f"plain Ignite engine ({n}): {test_id}")


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("IGNITE_SUITE_ENGINES")
    if path:
        with open(path, "w") as f:
            json.dump(engine_counts(), f, indent=1)

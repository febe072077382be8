"""pytest plugin: Ignite's test suite with ember's Engine in the place of Ignite's.

Loaded with `-p ember_ignite_plugin` before any test module is imported, it rebinds `Engine` in
`ignite.engine` and `ignite.engine.engine` to `ember.Engine`, and re-executes `ignite.engine.deterministic`
so that `DeterministicEngine` (and `create_supervised_trainer(deterministic=True)`) builds on ember's Engine
too. Events, State and the other classes are Ignite's own in both runs (ember uses them as they are).
"""

import importlib

import ignite.engine
import ignite.engine.deterministic
import ignite.engine.engine

import ember

ignite.engine.Engine = ignite.engine.engine.Engine = ember.Engine
deterministic = importlib.reload(ignite.engine.deterministic)
ignite.engine.DeterministicEngine = deterministic.DeterministicEngine


def pytest_report_header(config):
    return f"ignite.engine.Engine is ember's ({ember.Engine.__module__}.{ember.Engine.__qualname__})"

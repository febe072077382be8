"""The names the reshape moved (docs/changelog.md) still import from their old homes, with a DeprecationWarning
that names the new import, and are the very same objects."""

from __future__ import annotations

import importlib

import pytest

import ember
import ember.steps
from ember.recipes import formats
from ember.recipes.recipe import Recipe


@pytest.mark.parametrize("name", ["create_trainer", "create_evaluator", "default_prepare_batch",
                                  "create_supervised_trainer", "DeterministicEngine"])
def test_step_factories_still_import_from_ember_engine(name: str) -> None:
    engine = importlib.import_module("ember.engine")
    with pytest.warns(DeprecationWarning, match=rf"from ember import {name}.*from ember\.steps import {name}"):
        moved = getattr(engine, name)
    assert moved is getattr(ember.steps, name)


def test_ember_exports_the_step_factories_without_a_warning(recwarn: pytest.WarningsRecorder) -> None:
    assert ember.create_trainer is ember.steps.create_trainer
    assert ember.create_evaluator is ember.steps.create_evaluator
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


@pytest.mark.parametrize("name", ["SEED000_FMT", "SEED001_FMT", "SEED003_FMT", "SEED000_EVAL_FMT"])
def test_seed_formats_still_import_from_ember_callbacks(name: str) -> None:
    callbacks = importlib.import_module("ember.callbacks")
    with pytest.warns(DeprecationWarning, match="ember.recipes.formats"):
        moved = getattr(callbacks, name)
    assert moved == getattr(formats, name)


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        importlib.import_module("ember.engine").no_such_thing  # noqa: B018
    with pytest.raises(AttributeError, match="no_such_thing"):
        importlib.import_module("ember.callbacks").no_such_thing  # noqa: B018


def test_recipe_seed_file_is_the_old_name_of_program() -> None:
    with pytest.warns(DeprecationWarning, match="program"):
        recipe = Recipe(name="x", seed_file="000", dataset="fashion-mnist", summary="s", train=lambda run, args: None,
                        epochs=1, batch_size=2, lr=0.1)
    assert recipe.program == "000"

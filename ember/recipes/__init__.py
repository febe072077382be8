"""The recipes: one module per seed program, the data they need, and the `ember` command line.

Recipes also come from outside ember's source: a file (`ember train path/to/file.py`, its `RECIPE`, or
`file.py:NAME`), a module (`ember train package.module:NAME`), or an installed package that registers
`name = package.module:NAME` in the entry-point group `ember.recipes`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import warnings

from ember.recipes import (
    cifar10_cnn,
    fashion_mnist_cnn,
    fashion_mnist_mlp,
    fashion_mnist_speedrun,
    mnist_lenet,
    mnist_mlp_plateau,
)
from ember.recipes.common import RunContext
from ember.recipes.recipe import Recipe, RecipeError

ENTRY_POINT_GROUP = "ember.recipes"

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        fashion_mnist_mlp.RECIPE,
        cifar10_cnn.RECIPE,
        mnist_mlp_plateau.RECIPE,
        mnist_lenet.RECIPE,
        fashion_mnist_cnn.RECIPE,
        fashion_mnist_speedrun.RECIPE,
    )
}


def looks_like_spec(text: str) -> bool:
    """Whether `text` names a recipe by file or module (`x.py`, `x.py:NAME`, `package.module:NAME`)."""
    return text.endswith(".py") or ".py:" in text or (":" in text and not text.startswith("-"))


def installed_recipes() -> dict[str, Recipe]:
    """Recipes of installed packages (entry-point group `ember.recipes`); a broken one is skipped with a warning."""
    found: dict[str, Recipe] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            recipe = _checked(ep.load(), f"entry point {ep.name} = {ep.value}")
        except Exception as exc:
            warnings.warn(f"skipping recipe entry point {ep.name} = {ep.value}: {exc}", RuntimeWarning, stacklevel=2)
            continue
        found.setdefault(recipe.name, recipe)
    return found


def all_recipes(*specs: str) -> dict[str, Recipe]:
    """ember's recipes, the installed ones, and those named by `specs` (files or modules), by name."""
    recipes = {**RECIPES, **{k: v for k, v in installed_recipes().items() if k not in RECIPES}}
    for spec in specs:
        recipe = find_recipe(spec)
        recipes[recipe.name] = recipe
    return recipes


def find_recipe(spec: str) -> Recipe:
    """The recipe `spec` names: a name from `ember list`, `file.py[:NAME]` or `package.module:NAME`."""
    if spec in RECIPES:
        return RECIPES[spec]
    if looks_like_spec(spec):
        target, attr = _split(spec)
        return _from_file(target, attr) if target.endswith(".py") else _from_module(target, attr or "RECIPE")
    installed = installed_recipes()
    if spec in installed:
        return installed[spec]
    names = ", ".join([*RECIPES, *installed])
    raise RecipeError(f"no recipe {spec!r}: give one of {names} (see `ember list`), a file path/to/recipe.py[:NAME] "
                      "or a module package.module:NAME")


def _split(spec: str) -> tuple[str, str]:
    """`file.py:NAME` -> (file.py, NAME); `package.module:NAME` -> (package.module, NAME); NAME may be ''."""
    if spec.endswith(".py"):
        return spec, ""
    if ".py:" in spec:
        cut = spec.rindex(".py:") + 3
        return spec[:cut], spec[cut + 1 :]
    module, _, attr = spec.partition(":")
    return module, attr


def _from_file(path: str, attr: str) -> Recipe:
    if not os.path.isfile(path):
        raise RecipeError(f"recipe file {path} does not exist")
    name = "ember_user_recipe_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, os.path.abspath(path))
    if spec is None or spec.loader is None:
        raise RecipeError(f"cannot import {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return _attribute(module, attr or "RECIPE", path)


def _from_module(module_name: str, attr: str) -> Recipe:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise RecipeError(f"cannot import {module_name} for the recipe {module_name}:{attr}: {exc}") from None
    return _attribute(module, attr, module_name)


def _attribute(module: object, attr: str, where: str) -> Recipe:
    if not hasattr(module, attr):
        defined = sorted(k for k, v in vars(module).items() if isinstance(v, Recipe))
        hint = f"; it defines {', '.join(defined)}: name one as {where}:NAME" if defined else ""
        raise RecipeError(f"{where} has no {attr}{hint}")
    return _checked(getattr(module, attr), f"{where}:{attr}")


def _checked(obj: object, where: str) -> Recipe:
    if not isinstance(obj, Recipe):
        raise RecipeError(f"{where} is a {type(obj).__name__}, not an ember.recipes.Recipe")
    return obj


__all__ = ["ENTRY_POINT_GROUP", "RECIPES", "Recipe", "RecipeError", "RunContext", "all_recipes", "find_recipe",
           "installed_recipes"]

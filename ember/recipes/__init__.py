"""The recipes: one module per seed program, the data they need, and the `ember` command line."""

from ember.recipes import (
    cifar10_cnn,
    fashion_mnist_cnn,
    fashion_mnist_mlp,
    fashion_mnist_speedrun,
    mnist_lenet,
    mnist_mlp_plateau,
)
from ember.recipes.common import Recipe

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

__all__ = ["RECIPES", "Recipe"]

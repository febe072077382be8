"""`python -m ember` is the `ember` command."""

from ember.recipes.cli import main

raise SystemExit(main())

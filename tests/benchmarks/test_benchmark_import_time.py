"""`import ember` costs little more than `import ignite.engine`: torchvision and Pillow are imported where used."""

import subprocess
import sys

from benchmarks import import_time


def test_import_ember_imports_neither_torchvision_nor_pillow_until_they_are_used():
    code = ("import sys, ember, ember.recipes, ember.callbacks, ember.data\n"
            "print(sorted(m for m in ('torchvision', 'PIL') if m in sys.modules))\n"
            "print(type(ember.data.torchvision_transform(normalize=((0.5,), (0.5,)))).__name__)\n"
            "print('torchvision' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["[]", "Compose", "True"]


def test_importtime_sums_the_top_level_entries():
    stderr = ("import time: self [us] | cumulative | imported package\n"
              "import time:       100 |        100 |   _io\n"
              "import time:       200 |       5000 | site\n"
              "import time:        50 |         50 |     child\n"
              "import time:        10 |       2000 | ember\n")
    assert import_time.importtime_s(stderr) == (5000 + 2000) / 1e6


def test_import_time_figures_are_plausible_and_within_a_generous_bound():
    """One repeat (a few fresh interpreters): the figures make sense, and ember adds well under the 0.9 s of CPU
    that importing torchvision eagerly cost (the goal is 0.2 s; the bound is loose for a loaded machine)."""
    report = import_time.run(repeats=1)
    modules = report["modules"]
    for figures in modules.values():
        assert figures["median_wall_s"] > 0 and figures["median_cpu_s"] > 0 and figures["median_importtime_s"] > 0
    assert modules["pass"]["median_cpu_s"] < modules["ignite.engine"]["median_cpu_s"]
    assert modules["ember"]["median_importtime_s"] > modules["pass"]["median_importtime_s"]
    extra = report["ember_minus_ignite_engine"]["median_cpu_s"]
    assert extra < 0.6, f"import ember costs {extra:.2f} s of CPU more than import ignite.engine"
    assert "ember − ignite.engine" in import_time.render(report)

"""What setup.cfg declares agrees with constraints.txt, the tested set that the README and the Makefile install."""

from __future__ import annotations

import configparser
import importlib.metadata
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return config


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}."""
    found = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            found[canonicalize_name(name)] = version.strip()
    return found


def requirements() -> list[Requirement]:
    """install_requires and the dev extra: what `pip install -e '.[dev]' -c constraints.txt` installs."""
    options = setup_cfg()
    lines = options["options"]["install_requires"].split("\n") + options["options.extras_require"]["dev"].split("\n")
    return [Requirement(line) for line in lines if line.strip()]


def test_python_requires_starts_at_the_python_the_constraints_were_tested_on() -> None:
    """A Python that setup.cfg allows must be one the pinned set installs on: the constraints are tested on one
    version (their first line names it), so python_requires starts there (3.10 has no numpy 2.4 wheel)."""
    header = (REPO / "constraints.txt").read_text().splitlines()[0]
    tested = re.search(r"Python (3\.\d+)", header)
    assert tested, f"constraints.txt's first line names the Python it was tested on: {header!r}"
    declared = SpecifierSet(setup_cfg()["options"]["python_requires"])
    lowest = next(f"3.{minor}" for minor in range(6, 30) if f"3.{minor}" in declared)
    assert lowest == tested[1], f"python_requires allows {lowest}, but constraints.txt was tested on {tested[1]}"
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in declared, "this Python is not one ember allows"


def test_every_requirement_is_pinned_within_its_range() -> None:
    pinned = pins()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is required but not pinned in constraints.txt"
        assert pinned[name] in requirement.specifier, \
            f"constraints.txt pins {name}=={pinned[name]}, outside {requirement}"


def test_the_installed_requirements_are_the_pinned_ones() -> None:
    """The environment the tests run in (`make` installs it with the constraints) is the tested set."""
    pinned = pins()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        installed = importlib.metadata.version(requirement.name)
        assert installed == pinned[name], f"{name} {installed} is installed; constraints.txt pins {pinned[name]}"

"""The documentation's code runs, and what it quotes as ember's output is what ember prints.

The marks that say which blocks run and where a quoted output comes from are explained once, in README.md
("Working on ember"): `<!-- no-run: why -->`, a hidden `<!-- setup:` ... `-->`, `<!-- output -->`,
`<!-- output: ember ARGS -->` and `<!-- output (FashionMNIST): ember ARGS -->` (the `realdata` tests).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fakedata import offline, write_fashion_mnist, write_mnist

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MARK = re.compile(r"^<!--\s*(no-run|output(?: \(FashionMNIST\))?)\s*(?::\s*(.*?))?\s*-->$")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    info: str  # the fence's info string ("python", "", "bash", ...)
    text: str
    mark: str | None = None  # "no-run", "output", "output (FashionMNIST)"
    argument: str | None = None  # the mark's text after ":"

    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


@dataclass
class Page:
    path: Path
    setup: str = ""
    blocks: list[Block] = field(default_factory=list)


def parse(path: Path) -> Page:
    """The fenced blocks of a page with the marks on the line before each, and its hidden set-up."""
    page, lines = Page(path), path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("<!-- setup:"):
            end = next(j for j in range(i, len(lines)) if lines[j].strip() == "-->")
            page.setup += "\n".join(lines[i + 1:end]) + "\n"
            i = end + 1
            continue
        if line.startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            previous = lines[i - 1].strip() if i else ""
            match = MARK.match(previous)
            page.blocks.append(Block(path, i + 1, line[3:].strip(), "\n".join(lines[i + 1:end]),
                                     match[1] if match else None, match[2] if match else None))
            i = end + 1
            continue
        i += 1
    return page


def quoted_lines_in(quoted: str, printed: str) -> list[str]:
    """The quoted lines missing from `printed` (in order; `...` skips), as a list to show."""
    out = [line.rstrip() for line in printed.splitlines()]
    missing, at = [], 0
    for line in quoted.splitlines():
        line = line.rstrip()
        if line.strip() in ("", "..."):
            continue
        try:
            at = out.index(line, at) + 1
        except ValueError:
            missing.append(line)
    return missing


def cli_output(argument: str | None, where: str) -> str:
    """What `ember ARGS` prints (stdout and stderr), run in-process."""
    from ember.recipes.cli import main

    argv = shlex.split(argument or "")
    assert argv[:1] == ["ember"], f"{where}: an output mark names an `ember ...` command, got {argument!r}"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        try:
            status = main(argv[1:])
        except SystemExit as exc:
            status = exc.code
    assert status in (0, None), f"{where}: `{argument}` exited {status}:\n{printed.getvalue()[-3000:]}"
    return printed.getvalue()


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch folder as the working directory, with small fake FashionMNIST and MNIST as ember's data."""
    offline(monkeypatch, tmp_path)
    write_fashion_mnist(tmp_path / "data", n_train=256, n_test=128)
    write_mnist(tmp_path / "data", n_train=256, n_test=128)
    monkeypatch.setenv("EMBER_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_conventions_are_parsed() -> None:
    """The parser sees the marks (so a typo in one does not silently skip a check)."""
    pages = [parse(p) for p in PAGES]
    marks = [b.mark for page in pages for b in page.blocks]
    assert "no-run" in marks and "output" in marks and "output (FashionMNIST)" in marks
    for page in pages:
        for number, line in enumerate(page.path.read_text().splitlines(), 1):
            if line.startswith("<!--") and ("output" in line or "no-run" in line):
                assert MARK.match(line.strip()), f"{page.path.relative_to(REPO)}:{number}: malformed mark {line!r}"


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_python_blocks_run_and_quoted_output_matches(path: Path, scratch: Path) -> None:
    page = parse(path)
    namespace: dict = {"__name__": "__docs__"}
    if page.setup:
        exec(compile(page.setup, f"{path.name} (setup)", "exec"), namespace)
    printed = ""
    for block in page.blocks:
        if block.info == "python" and block.mark != "no-run":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    exec(compile(block.text, block.where(), "exec"), namespace)
                except SystemExit as exc:
                    assert exc.code in (0, None), f"{block.where()}: exited {exc.code}"
                except Exception as exc:
                    pytest.fail(f"{block.where()}: this Python block raised {type(exc).__name__}: {exc}\n"
                                f"(if it is not meant to run, put `<!-- no-run: why -->` on the line before it)")
            printed = out.getvalue()
        elif block.mark == "output":
            quoted = printed if block.argument is None else cli_output(block.argument, block.where())
            missing = quoted_lines_in(block.text, quoted)
            assert not missing, f"{block.where()}: quoted but not printed: {missing}\nprinted:\n{quoted[-3000:]}"


REAL = [(page.path, block) for page in map(parse, PAGES) for block in page.blocks
        if block.mark == "output (FashionMNIST)"]


@pytest.mark.realdata
@pytest.mark.skipif(not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
                    reason=f"the real FashionMNIST is not in {FASHION_MNIST} (apt-get install dataset-fashion-mnist)")
@pytest.mark.parametrize("block", [b for _, b in REAL], ids=[b.where() for _, b in REAL])
def test_quoted_fashion_mnist_output_is_what_ember_prints(block: Block, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The outputs the docs quote from real runs, run again here with the 2 torch threads of the machine that
    printed them (docs/performance.md: the figures repeat with the same thread count and torch build)."""
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EMBER_DATA", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        printed = cli_output(block.argument, block.where())
    finally:
        torch.set_num_threads(threads)
    missing = quoted_lines_in(block.text, printed)
    assert not missing, f"{block.where()}: quoted but not printed: {missing}"


def test_no_run_blocks_say_why() -> None:
    for page in map(parse, PAGES):
        for block in page.blocks:
            if block.mark == "no-run":
                assert block.argument, f"{block.where()}: `<!-- no-run: why -->` needs its reason"

"""README.md and docs/: every relative link resolves (file and heading), every page is linked from the README,
and every ``tunery`` command in a ``bash`` block names a real command with options it has.

    .venv/bin/python -m pytest tests/unit/test_docs.py -q
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from tunery.cli import app

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```[^\n]*\n.*?```", re.S)


def prose(text: str) -> str:
    """The page without its code blocks (a link inside one is an example, not a link)."""
    return FENCE.sub("", text)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_links_every_docs_page() -> None:
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(prose((ROOT / "README.md").read_text()))}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def tunery_commands(page: Path) -> list[list[str]]:
    """Each ``tunery ...`` command line in the page's bash blocks, split as the shell would (comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if not re.search(r"(^|\s)tunery\s", line):
                continue  # other tools' lines, e.g. a curl body that spans lines
            words = shlex.split(line, comments=True)
            for i, word in enumerate(words):
                if word == "tunery" and (i == 0 or "=" in words[i - 1] or words[i - 1] == "-m"):
                    commands.append(words[i + 1 :])
                    break
    return commands


def resolve(words: list[str]) -> tuple[typer.core.TyperCommand, list[str]]:
    """The command the words name (through its groups), and the words after its name."""
    command = typer.main.get_command(app)
    while hasattr(command, "commands"):  # a group
        assert words, "a command group without a command"
        assert words[0] in command.commands, f"no command {words[0]!r}"
        command, words = command.commands[words[0]], words[1:]
    return command, words


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_tunery_commands_name_real_commands_and_options(page: Path) -> None:
    problems = []
    for words in tunery_commands(page):
        shown = "tunery " + " ".join(words)
        try:
            command, rest = resolve(words)
        except AssertionError as error:
            problems.append(f"{shown}: {error}")
            continue
        options = {name for param in command.params for name in (*param.opts, *param.secondary_opts)}
        for word in rest:
            if word.startswith("-") and word != "-" and word.split("=", 1)[0] not in options:
                problems.append(f"{shown}: {command.name} has no option {word.split('=', 1)[0]}")
    assert not problems, "\n".join(problems)


def test_the_command_check_sees_the_readme_commands() -> None:
    """The parser finds the README's tour (so the test above cannot pass by finding nothing)."""
    names = {resolve(words)[0].name for words in tunery_commands(ROOT / "README.md")}
    assert {"validate", "tune", "predict", "merge", "export", "serve"} <= names, names

"""The README's commands are the ones CI and users run."""

import re

from tests.conftest import ROOT

README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"


def readme_command(marker: str) -> str:
    """The README's command line (indented as code) that holds `marker`."""
    (command,) = [line.strip() for line in README.read_text().splitlines()
                  if line.startswith("    ") and marker in line and "python3 -m venv" in line]
    return command


def test_ci_runs_the_readme_test_command():
    ci = CI.read_text()
    command = [line for line in ci.splitlines() if "pytest" in line][-1].strip()
    assert command == readme_command("pytest")


def test_ci_runs_the_readme_first_command_verbatim_in_a_bare_venv():
    """The first command, as a new user pastes it (no extras), runs in CI too, word for word."""
    first = readme_command("charlm train corpora/timemachine.txt")
    assert "[" not in first.split("pip install", 1)[1].split("&&")[0]  # no extras in its install
    assert f"({first}) 2>&1 | tee" in CI.read_text()


def test_readme_shows_the_main_job():
    readme = README.read_text()
    assert "charlm train corpora/timemachine.txt" in readme
    assert 'charlm generate --prefix "time "' in readme


def test_readme_lists_every_guarantee():
    """Every row of the guarantee tables (tests/test_guarantees*.py) is named in the README's
    "What charlm guarantees", with a link to its file."""
    readme = README.read_text()
    section = readme[readme.index("## What charlm guarantees") :].split("\n## ")[0]
    missing = []
    files = sorted((ROOT / "tests" / "guarantees").glob("test_guarantees*.py"))
    for path in files:
        rows = re.findall(r"^def (test_\w+)", path.read_text(), re.MULTILINE)
        assert rows, path
        missing += [row for row in rows if f"`{row}`" not in section]
        assert f"tests/guarantees/{path.name}" in section, path.name
    assert len(files) >= 2 and missing == []

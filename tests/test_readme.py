"""The README's commands are the ones CI and users run."""

from tests.conftest import ROOT


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = [line for line in ci.splitlines() if "pytest" in line][-1].strip()
    assert command in (ROOT / "README.md").read_text()


def test_readme_shows_the_main_job():
    readme = (ROOT / "README.md").read_text()
    assert "charlm train corpora/timemachine.txt" in readme
    assert 'charlm generate --prefix "time "' in readme


def test_readme_lists_every_guarantee():
    """Every row of the guarantees table is named in the README's "What charlm guarantees"."""
    import re

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## What charlm guarantees") :].split("\n## ")[0]
    rows = re.findall(r"^def (test_\w+)", (ROOT / "tests" / "test_guarantees.py").read_text(), re.MULTILINE)
    assert rows and [row for row in rows if f"`{row}`" not in section] == []

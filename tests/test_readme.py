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

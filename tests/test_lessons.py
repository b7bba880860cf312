"""The lessons in docs/lessons/ run, top to bottom, as a learner runs them: each notebook in a
fresh kernel, from a copy of docs/lessons/ beside a copy of the corpora it reads (so that its runs
and token caches stay out of the repository). A cell's own asserts check what it teaches."""

from __future__ import annotations

import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

LESSONS = ROOT / "docs" / "lessons"
NOTEBOOKS = sorted(path.name for path in LESSONS.glob("*.ipynb"))
SHORTER = {"SECONDS = 60": "SECONDS = 3", "EPOCHS = 20": "EPOCHS = 2", "EPOCHS = 30": "EPOCHS = 2"}  # cut for the test


def test_the_lessons_are_stored_without_outputs():
    assert NOTEBOOKS == ["binary-addition.ipynb", "hello-ohlol.ipynb", "rnncell-vs-rnn.ipynb", "srn-by-hand.ipynb",
                         "timemachine.ipynb", "word-pairs.ipynb"]
    for name in NOTEBOOKS:
        notebook = nbformat.read(LESSONS / name, as_version=4)
        nbformat.validate(notebook)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code and all(not cell.outputs and cell.execution_count is None for cell in code), name


@pytest.mark.slow  # a kernel per notebook, and a few seconds of training
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_lesson_runs_top_to_bottom(tmp_path, name):
    corpora = tmp_path / "corpora"
    corpora.mkdir()
    for corpus in ("timemachine.txt", "hello.tsv", "wordpairs.tsv"):
        shutil.copy(ROOT / "corpora" / corpus, corpora / corpus)
    folder = tmp_path / "docs" / "lessons"
    folder.mkdir(parents=True)
    notebook = nbformat.read(LESSONS / name, as_version=4)
    for cell in notebook.cells:
        cell.source = SHORTER.get(cell.source.split("  #")[0], cell.source)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    if any("charlm.train(" in cell.source for cell in notebook.cells):
        assert (folder / "runs").is_dir()  # the lesson's runs went beside it, in the copy

"""Checkpoints written by an earlier charlm (tests/fixtures/checkpoints/, made by
tests/fixtures/make_checkpoints.py) still load, say what they held, and make what they made."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import charlm
from charlm.checkpoints import files as checkpoint
from tests.conftest import run_cli
from tests.fixtures.make_checkpoints import FOLDER, TEXT, TINY, WORDS

EXPECTED = json.loads((FOLDER / "expected.json").read_text(encoding="utf-8"))
MODELS = sorted(name for name, entry in EXPECTED.items() if entry["info"]["kind"] == "model")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_info_of_an_old_checkpoint_says_what_it_held(runner, name):
    path = FOLDER / name
    assert json.loads(run_cli(runner, "info", str(path), "--json").stdout) == EXPECTED[name]["info"]
    shown = run_cli(runner, "info", str(path)).stdout
    meta = EXPECTED[name]["info"]
    assert f"task         {meta['task']} ({meta['kind']})" in shown
    assert f"{meta['training']['steps']} steps" in shown


@pytest.mark.parametrize("name", MODELS)
def test_an_old_checkpoint_loads_and_makes_what_it_made(name):
    model = charlm.load(FOLDER / name)
    assert model.info() == EXPECTED[name]["info"]
    if "translate" in EXPECTED[name]:
        assert model.translate(WORDS) == EXPECTED[name]["translate"]
    else:
        assert model.generate("the ", length=20, seed=1) == EXPECTED[name]["generate"]


def test_an_old_resume_file_goes_on(runner):
    """A run stopped by an earlier charlm resumes: same corpus, same flags, three more steps."""
    Path("text.txt").write_text(TEXT, encoding="utf-8")
    for name in ("lstm.safetensors", "lstm.resume.safetensors"):
        shutil.copy(FOLDER / name, name)
    tensors, meta = checkpoint.load("lstm.resume.safetensors", task="lm", kind="resume")
    assert meta == EXPECTED["lstm.resume.safetensors"]["info"] and tensors
    flags = [*TINY[:TINY.index("--max-steps")], "--max-steps", "6", *TINY[TINY.index("--max-steps") + 2:]]
    run_cli(runner, "train", "text.txt", *flags, "--out", "lstm.safetensors", "--seed", "1", "--resume")
    assert checkpoint.read_metadata("lstm.safetensors")["training"]["steps"] == 6

"""The Python API as a notebook uses it: `charlm.train`, `charlm.load` and what a model does, each
equal to the command it stands for, run through CliRunner with the same options."""

from __future__ import annotations

import json
import inspect
import pydoc
import re
import subprocess
import sys

import pytest

import charlm
from charlm import api
from charlm.errors import TrainingInterrupted, UsageError
from tests.conftest import ROOT, TINY_KEYWORDS, TINY_MODEL, run_cli

TINY = TINY_KEYWORDS
PAIRS_TEXT = "".join(f"{word}\t{word[::-1]}\n" for word in
                     ["abc", "bca", "cab", "aab", "bba", "cca", "ab", "ba", "ca", "abca", "bcab", "cabc"])


@pytest.fixture
def trained(runner, tiny_corpus):
    """A tiny language model trained for 20 steps through the API, in the runner's folder."""
    return charlm.train(tiny_corpus, **TINY, max_steps=20, eval_every=10, out="runs/t.safetensors")


def test_importing_charlm_imports_no_torch():
    code = "import charlm, sys; charlm.CharlmError, charlm.train, charlm.load; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_train_returns_the_run_with_its_metrics(trained):
    assert str(trained.checkpoint) == "runs/t.safetensors"
    assert [record["step"] for record in trained.metrics] == [10, 20]
    assert trained.best_val_loss == min(record["val_loss"] for record in trained.metrics)
    assert charlm.load(trained.checkpoint).info()["training"]["steps"] == 20


def test_train_equals_charlm_train_with_the_same_flags(runner, tiny_corpus, trained):
    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "20", "--eval-every", "10",
            "--out", "cli/t.safetensors")
    assert open("cli/t.safetensors", "rb").read() == open(trained.checkpoint, "rb").read()


def test_the_apis_options_and_defaults_are_charlm_trains():
    from charlm.cli.train import train as command
    from charlm.training.launch import flag

    flags = dict(command.make_context("train", ["corpus.txt"]).params)  # what the command gets
    del flags["corpus"]
    assert {("model" if name == "cell" else name): default for name, default in flags.items()} == api.TRAIN_OPTIONS
    assert all(param.opts[0] == flag(param.name) for param in command.params if param.name in flags)


def test_help_lists_the_options():
    shown = pydoc.render_doc(charlm.train, renderer=pydoc.plaintext)
    for option in ("preprocess: 'str' = 'none'", "max_time: 'float | None' = None", "model: 'str | None' = None",
                   "resume: 'bool' = False", "include: 'Sequence[str]' = ()"):
        assert option in shown
    assert "charlm train --help" in shown


def test_generate_and_stream_equal_charlm_generate(runner, trained):
    model = charlm.load(trained.checkpoint)
    options = ["--prefix", "the ", "--length", "40", "--top-p", "0.9", "--seed", "1"]
    printed = run_cli(runner, "generate", "--checkpoint", trained.checkpoint, *options).stdout
    text = model.generate("the ", length=40, top_p=0.9, seed=1)
    assert text + "\n" == printed
    pieces = list(model.stream("the ", length=40, top_p=0.9, seed=1))
    assert len(pieces) > 3 and "".join(pieces) == text  # as generate gives it: without the printed line break
    several = run_cli(runner, "generate", "--checkpoint", trained.checkpoint, *options, "--num-samples", "3").stdout
    samples = model.generate("the ", length=40, top_p=0.9, seed=1, num_samples=3)
    assert len(samples) == 3 and "\n".join(sample + "\n" for sample in samples) == several


def test_a_stream_left_early_stops_sampling(trained):
    stream = charlm.load(trained.checkpoint).stream("the ", length=10_000, seed=1)
    assert next(stream) == "the "
    stream.close()  # the worker stops at its next piece and is joined


def test_evaluate_equals_charlm_eval(runner, tiny_corpus, trained):
    model = charlm.load(trained.checkpoint)
    printed = json.loads(run_cli(runner, "eval", "--checkpoint", trained.checkpoint, tiny_corpus, "--json").stdout)
    assert model.evaluate(tiny_corpus) == printed
    assert model.evaluate(str(tiny_corpus)) == printed
    assert model.evaluate(tiny_corpus.read_text(encoding="utf-8")) == printed  # the text itself


def test_stats_equals_charlm_stats(runner, tiny_corpus):
    printed = json.loads(run_cli(runner, "stats", tiny_corpus, "--preprocess", "d2l", "--top", "3", "--json").stdout)
    assert charlm.stats(tiny_corpus, preprocess="d2l", top=3) == printed


def test_translate_and_evaluate_pairs_equal_the_commands(runner, tmp_path):
    path = tmp_path / "rev.tsv"
    path.write_text(PAIRS_TEXT, encoding="utf-8")
    run = charlm.train(path, hidden_size=16, embedding_size=8, batch_size=4, epochs=2, quiet=True)
    pairs = charlm.load(run.checkpoint)
    assert isinstance(pairs, charlm.PairModel)
    printed = run_cli(runner, "translate", "--checkpoint", run.checkpoint, "--beam", "3", "abc", "ca").stdout
    assert pairs.translate(["abc", "ca"], beam=3) == printed.splitlines()
    assert pairs.translate("abc", beam=3) == printed.splitlines()[0]
    report = json.loads(run_cli(runner, "eval", "--checkpoint", run.checkpoint, path, "--json").stdout)
    assert pairs.evaluate(path) == report
    attention = pairs.attention("abc")
    assert attention["source"] == ["a", "b", "c"] and attention["output"][-1] == "<eos>"
    assert tuple(attention["weights"].shape) == (len(attention["output"]), 3)


def test_the_lessons_tagger_through_the_api(runner):
    run = charlm.train(ROOT / "corpora" / "hello.tsv", model_type="tagger", model="rnn", embedding_size=0,
                       hidden_size=5, optimizer="adam", lr=0.1, epochs=15, seed=1, quiet=True)
    assert charlm.load(run.checkpoint).translate(["hello"]) == ["ohlol"]


def test_errors_are_charlm_errors_naming_the_settings_as_the_caller_does(runner, tiny_corpus):
    """The command's message, with each flag named as a program names it: a keyword (a bare flag is
    its True, a choice its value), so a notebook user is never told to pass --resume."""
    printed = run_cli(runner, "train", tiny_corpus, "--allow-changed-corpus", ok=False)
    assert printed.exit_code == 2
    assert printed.stderr == "charlm: error: --allow-changed-corpus only applies with --resume (see charlm train --help)\n"
    with pytest.raises(UsageError, match=r"^allow_changed_corpus=True only applies with resume=True$") as raised:
        charlm.train(tiny_corpus, allow_changed_corpus=True)
    assert isinstance(raised.value, charlm.CharlmError)
    trained = charlm.train(tiny_corpus, **TINY, max_steps=2)
    with pytest.raises(charlm.CharlmError, match="already holds a run; pass resume=True to continue it, "
                                                 "overwrite=True to replace it"):
        charlm.train(tiny_corpus, **TINY, max_steps=2)
    with pytest.raises(charlm.CharlmError) as raised:
        charlm.load(trained.checkpoint).generate("the ∑")
    printed = run_cli(runner, "generate", "--checkpoint", trained.checkpoint, "--prefix", "the ∑", ok=False)
    assert "--unknown skip" in printed.stderr and 'unknown="skip"' in str(raised.value)
    assert printed.stderr == "charlm: error: " + str(raised.value).replace('unknown="skip"', "--unknown skip").replace(
        'unknown="unk"', "--unknown unk") + "\n"
    with pytest.raises(charlm.CharlmError, match='unknown="skip"'):
        "".join(charlm.load(trained.checkpoint).stream("the ∑"))
    with pytest.raises(TypeError, match="hiden_size"):
        charlm.train(tiny_corpus, hiden_size=8)


def test_an_interrupted_train_resumes_from_python(runner, tiny_corpus, monkeypatch):
    """A KeyboardInterrupt (a notebook cell stopped) at step 7 saves the run; `resume=True` goes on
    to the same checkpoint as an unbroken run, bit for bit."""
    from charlm.training.trainer import Trainer

    options = {**TINY, "max_steps": 15, "eval_every": 5}
    charlm.train(tiny_corpus, **options, out="once/m.safetensors")
    step = Trainer._train_step
    calls = 0

    def interrupting(self, batch):
        nonlocal calls
        calls += 1
        if calls == 8:
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", interrupting)
    with pytest.raises(TrainingInterrupted, match="stopped by KeyboardInterrupt at step 7"):
        charlm.train(tiny_corpus, **options, out="run/m.safetensors")
    monkeypatch.setattr(Trainer, "_train_step", step)
    run = charlm.train(tiny_corpus, **options, out="run/m.safetensors", resume=True)
    assert [record["step"] for record in run.metrics] == [5, 10, 15]
    assert open("run/m.safetensors", "rb").read() == open("once/m.safetensors", "rb").read()


def test_progress_is_a_notebook_bar_in_a_notebook(monkeypatch):
    from tqdm.auto import tqdm as notebook_tqdm

    from charlm.training import progress as trainer
    monkeypatch.setattr(trainer, "in_notebook", lambda: True)
    shown = trainer.Progress(10, 0, enabled=True)
    assert type(shown.bar) is notebook_tqdm and not shown.lines
    shown.close()
    assert trainer.Progress(10, 0, enabled=False).bar.disable  # quiet=True: nothing


def test_in_notebook_asks_ipython_as_tqdm_does(monkeypatch):
    from charlm.training.progress import in_notebook

    class Shell:
        def __init__(self, config):
            self.config = config

    class IPython:
        shell = None

        def get_ipython(self):
            return self.shell

    fake = IPython()
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert not in_notebook()  # IPython imported, no shell
    fake.shell = Shell({"TerminalIPythonApp": {}})
    assert not in_notebook()
    fake.shell = Shell({"IPKernelApp": {}})
    assert in_notebook()


def test_translations_options_are_one_declaration_for_the_command_the_api_and_the_server(runner):
    """`charlm translate`'s decoding flags, `PairModel.translate`'s keywords and /v1/translate's
    fields are the rows of `settings.TRANSLATE`: the same names, defaults and bounds, a bad value
    refused once in each door's own terms."""
    from charlm.cli.translate import translate_command
    from charlm.settings import TRANSLATE, SettingError, for_command
    from tests.fixtures.make_checkpoints import FOLDER

    rows = for_command(TRANSLATE, "translate")
    keywords = [(name, parameter.default) for name, parameter in
                inspect.signature(charlm.PairModel.translate).parameters.items() if name not in ("self", "texts")]
    assert keywords == [(row.name, row.default) for row in rows]
    flags = {param.name: param.default for param in translate_command.params}
    assert all(flags[row.name] == row.default for row in rows)
    model = charlm.load(FOLDER / "seq2seq.safetensors")
    assert model.translate("man", 1, None, 0.0, "skip") == model.translate("man", unknown="skip")
    for keyword, value, message in [("beam", 0, "beam must be at least 1, got 0"),
                                    ("length_penalty", -1.0, "length_penalty must be at least 0, got -1.0"),
                                    ("unknown", "drop", "unknown must be one of error, skip, unk, got 'drop'")]:
        with pytest.raises(SettingError, match=re.escape(message)):
            model.translate("man", **{keyword: value})
    printed = run_cli(runner, "translate", "--checkpoint", str(FOLDER / "seq2seq.safetensors"), "--beam", "0", "man",
                      ok=False)
    assert printed.exit_code == 2 and "'--beam'" in printed.stderr


def test_the_recipe_line_names_keywords_to_a_program(runner, tiny_corpus, capsys):
    charlm.train(tiny_corpus, hidden_size=8, max_steps=1, out="runs/r.safetensors")
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("recipe: ")]
    assert "weight_drop 0.3" in line and "--" not in line and "hidden_size" not in line

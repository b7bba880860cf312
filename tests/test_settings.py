"""Training's settings table: one row of `charlm.settings.TRAIN` is the flag of `charlm train`, the
keyword of `charlm.train`, the default of both and the check, and a bad value is refused once, in
one line that names it as the caller did (the flag or the keyword)."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

import charlm
from charlm import api
from charlm.training import launch
from charlm.cli import options
from charlm.cli.train import train as train_command
from charlm.errors import CharlmError
from charlm.training.optimization import TrainConfig
from charlm.settings import STATS, TRAIN, Setting, annotation, for_command, table
from tests.conftest import run_cli

# A setting that does not exist, made as a new one would be: one row.
THROWAWAY = Setting("warmup_ratio", float, 0.25, "Of the steps, the share that warms up.", ("train",), low=0, high=1)


def _command(rows: list[Setting]) -> click.Command:
    @click.command()
    @options(rows)
    def command(**settings: object) -> None:
        click.echo(repr(settings))

    return command


def test_a_new_row_is_a_flag_a_keyword_a_default_and_a_check():
    command = _command([THROWAWAY])
    shown = " ".join(CliRunner().invoke(command, ["--help"]).output.split())
    assert "--warmup-ratio FLOAT RANGE" in shown and "Of the steps, the share that warms up." in shown
    assert "[default: 0.25; 0<=x<=1]" in shown
    assert CliRunner().invoke(command, []).output == "{'warmup_ratio': 0.25}\n"
    refused = CliRunner().invoke(command, ["--warmup-ratio", "2"])
    assert refused.exit_code == 2
    assert "Invalid value for '--warmup-ratio': 2.0 is not in the range 0<=x<=1" in refused.output
    signature = api._signature(table(THROWAWAY), "Run")
    assert str(signature.parameters["warmup_ratio"]) == "warmup_ratio: 'float' = 0.25"
    with pytest.raises(CharlmError, match=r"^warmup_ratio must be in \[0, 1\], got 2$"):
        THROWAWAY.check(2, "warmup_ratio")


def test_every_flag_keyword_and_default_of_train_is_its_rows():
    params = {param.name: param for param in train_command.params}
    parameters = inspect.signature(charlm.train).parameters
    for row in for_command(TRAIN, "train"):
        assert params[row.name].opts[0] == row.option and params[row.name].default == row.default
        assert launch.DEFAULTS[row.name] == row.default == api.TRAIN_OPTIONS[row.argument]
        assert parameters[row.argument].default == row.default
        assert parameters[row.argument].annotation == annotation(row)
    assert set(params) - {"corpus"} == {row.name for row in for_command(TRAIN, "train")}
    assert params["cell"].opts == ["--model"] and "model" in parameters  # the one renamed


def test_stats_takes_its_rows_too():
    parameters = inspect.signature(charlm.stats).parameters
    rows = for_command({**TRAIN, **STATS}, "stats")
    assert list(parameters)[1:] == [row.argument for row in rows]
    assert str(parameters["top"]) == "top: 'int' = 10" and str(parameters["include"]) == "include: 'Sequence[str]' = ()"


@pytest.mark.parametrize("keyword, value, says", [
    ("lr", -1, "lr must be a positive number, got -1"),
    ("weight_decay", math.inf, "weight_decay must be finite, 0 or more, got inf"),
    ("hidden_size", 0, "hidden_size must be at least 1, got 0"),
    ("hidden_size", 8.5, "hidden_size must be a whole number, got 8.5"),
    ("model", "nope", "model must be one of rnn, gru, lstm, transformer"),
    ("val_fraction", 1.0, r"val_fraction must be in \[0, 1\), got 1.0"),
    ("include", [1], "include must be strings, got"),
    ("quiet", "yes", "quiet must be true or false, got 'yes'"),
])
def test_a_bad_keyword_is_one_line_naming_it_before_anything_is_read(tmp_path, keyword, value, says):
    with pytest.raises(CharlmError, match=f"^{says}") as raised:
        charlm.train(tmp_path / "missing.txt", **{keyword: value})  # refused before the corpus is looked for
    assert "\n" not in str(raised.value)


def test_a_bad_stats_keyword_names_it(tmp_path):
    with pytest.raises(CharlmError, match="^top must be at least 0, got -1$"):
        charlm.stats(tmp_path / "missing.txt", top=-1)


@pytest.mark.parametrize("args, says", [
    (["--lr", "-1"], "Invalid value for '--lr': -1.0 is not in the range x>0."),
    (["--weight-decay", "inf"], "--weight-decay must be finite, 0 or more, got inf"),
    (["--model", "nope"], "Invalid value for '--model': 'nope' is not one of"),
])
def test_a_bad_flag_is_one_line_naming_it(runner, tiny_corpus, args, says):
    refused = run_cli(runner, "train", tiny_corpus, *args, ok=False)
    assert refused.exit_code != 0 and refused.stderr.count("\n") == 1 and says in refused.stderr
    assert refused.stderr.startswith("charlm: error: ")


def test_the_train_config_checks_with_the_rows_and_names_the_flag():
    with pytest.raises(CharlmError, match=r"^--ema must be a decay in \[0, 1\), got 1.0$"):
        TrainConfig(ema=1.0)
    with pytest.raises(CharlmError, match="^--warmup-steps must be 0 or more, got -1$"):
        TrainConfig(warmup_steps=-1)
    assert TrainConfig(max_time=math.inf).max_time == math.inf  # a limit never reached, not refused


def test_a_setting_of_one_task_is_refused_for_the_other(runner, tmp_path):
    """`Setting.only` says which task reads a setting: the other refuses it, naming the flags in --help's order."""
    (tmp_path / "rev.tsv").write_text("ab\tba\ncd\tdc\n" * 10, encoding="utf-8")
    refused = run_cli(runner, "train", "rev.tsv", "--iterator", "random", "--no-cache", ok=False)
    assert "--no-cache, --iterator only applies to language models of text (--task lm)" in refused.stderr


def test_help_imports_no_torch():
    code = ("import sys; from click.testing import CliRunner; from charlm.cli import cli; "
            "result = CliRunner().invoke(cli, ['train', '--help']); assert result.exit_code == 0, result.output; "
            "assert '--lr-decay-steps' in result.output; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_command_takes_its_flags_from_rows():
    """Beside train and stats: generate, translate, eval and serve declare no flag that is a
    setting by hand; each such flag is its row's, with the row's default."""
    from charlm.cli import cli
    from charlm.settings import GENERATE, SERVE, TRANSLATE

    for name, rows in [("generate", GENERATE), ("translate", TRANSLATE), ("eval", TRANSLATE), ("serve", SERVE)]:
        params = {param.name: param for param in cli.commands[name].params}
        for row in for_command(rows, name):
            assert params[row.name].opts[0] == row.option and params[row.name].default == row.default, (name, row.name)
    assert cli.commands["serve"].params and all(
        param.name in {*SERVE, "checkpoints", "device"} for param in cli.commands["serve"].params)
    fails = CliRunner().invoke(cli, ["serve", "--port", "70000"])
    assert fails.exit_code == 2 and "--port" in fails.output

"""What charlm guarantees about a hostile user's run files: resume states, checkpoints that are not
regular files, metrics files, and training flags. One test per row, named for the row; they run
the way a user meets them, through the CLI in this process, and every wait is bounded.
"""

from __future__ import annotations

import builtins
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from charlm.checkpoints import files as checkpoint

from charlm.checkpoints import loading
from tests.conftest import ROOT, TINY_MODEL, run_cli
from tests.guarantees.test_guarantees import each_loading_command, fails, rewrite, train

OUT, RESUME, METRICS = "r/m.safetensors", "r/m.resume.safetensors", "r/m.metrics.jsonl"
NAN, INF = float("nan"), float("inf")


@pytest.fixture
def resumable(runner, tiny_corpus) -> tuple[dict[str, torch.Tensor], dict]:
    """The resume file of a run stopped by --max-steps 2, mid-epoch: it holds AdamW's state and the
    (h, c) an LSTM carries into its next batch."""
    train(runner, tiny_corpus, "--max-steps", "2", "--out", OUT)
    return checkpoint.load(RESUME)


def run_bytes() -> dict[str, bytes]:
    return {path: Path(path).read_bytes() for path in (OUT, RESUME, METRICS)}


def refuses_to_resume(runner, corpus, tensors, meta, detail="", flags=()):
    """Write the resume file as given: `--resume` refuses it in one line that calls it damaged (with
    `detail`), before a step is taken and without touching a file of the run."""
    checkpoint.save(RESUME, tensors, meta)
    before = run_bytes()
    result = fails(runner, "train", corpus, *TINY_MODEL, *flags, "--out", OUT, "--resume", "--max-steps", "4",
                   message=f"{RESUME}: damaged resume state (")
    assert detail in result.stderr and result.stderr.rstrip().endswith("); train without --resume")
    assert run_bytes() == before


def changed(tensors, **replace) -> dict[str, torch.Tensor]:
    """The tensors with some replaced (a value of None drops that tensor); dots are written as __."""
    tensors = dict(tensors)
    for name, tensor in replace.items():
        name = name.replace("__", ".")
        if tensor is None:
            del tensors[name]
        else:
            tensors[name] = tensor
    return tensors


def with_resume(meta, **fields) -> dict:
    return {**meta, "resume": {**meta["resume"], **fields}}


@pytest.mark.parametrize("damage", [
    lambda t: changed(t, optim__0__exp_avg=torch.zeros(3, 3)),
    lambda t: changed(t, optim__0__step=torch.zeros(3)),
    lambda t: changed(t, carry__0=torch.zeros(1, 3, 16)),  # 3 rows carried into batches of 4
    lambda t: changed(t, carry__1=None),  # an LSTM's h without its c
    lambda t: changed(t, carry__2=torch.zeros(1, 4, 16)),
], ids=["optimizer moment", "optimizer step count", "carried rows", "carried c missing", "carried extra"])
def test_resume_state_of_the_wrong_shape_is_refused_before_training(runner, tiny_corpus, resumable, damage):
    tensors, meta = resumable
    refuses_to_resume(runner, tiny_corpus, damage(tensors), meta)


@pytest.mark.parametrize(("tensors_change", "fields"), [
    ({"optim__0__exp_avg": NAN}, {}),
    ({"optim__1__exp_avg_sq": INF}, {}),  # Adam would silently take no step
    ({"optim__0__step": NAN}, {}),
    ({"carry__1": NAN}, {}),
    ({"train__running_loss": torch.tensor(INF)}, {}),
    ({}, {"loss_sum": NAN}),
    ({}, {"best_val_loss": -INF}),  # no later model could beat it: none would be saved
    ({}, {"elapsed": NAN}),
], ids=["moment NaN", "moment inf", "step count NaN", "carried NaN", "running loss inf", "loss sum NaN",
        "best loss -inf", "elapsed NaN"])
def test_nan_or_inf_in_a_resume_state_is_refused_as_damaged_not_blamed_on_lr(runner, tiny_corpus, resumable,
                                                                            tensors_change, fields):
    tensors, meta = resumable
    replace = {name: value if torch.is_tensor(value) else torch.full_like(tensors[name.replace("__", ".")], value)
               for name, value in tensors_change.items()}
    refuses_to_resume(runner, tiny_corpus, changed(tensors, **replace), with_resume(meta, **fields))


@pytest.mark.parametrize(("case", "message"), [
    ("missing moment", "optimizer state of parameter 3 lacks exp_avg_sq, which --optimizer adamw keeps"),
    ("negative step count", "counts -5 steps, where the run has taken 2"),
    ("more steps than the run", "counts 1000 steps, where the run has taken 2"),
    ("unknown parameter", "optimizer state for parameter 99 of 7"),
    ("another optimizer", "lacks exp_avg, exp_avg_sq, step, which --optimizer adam keeps"),
])
def test_resume_optimizer_state_this_optimizer_cannot_use_is_refused(runner, tiny_corpus, resumable, case, message):
    """What torch only finds at the first step (a traceback), or never (a state for no parameter, or
    another optimizer's state when the file's flags were stripped: AdamW's moments handed to
    SGD, here with momentum_buffer None as an older torch's SGD kept it, resumed with Adam)."""
    tensors, meta = resumable
    flags = ()
    if case == "missing moment":
        tensors = changed(tensors, optim__3__exp_avg_sq=None)
    elif case in ("negative step count", "more steps than the run"):
        tensors = changed(tensors, optim__0__step=torch.tensor(-5.0 if case.startswith("negative") else 1000.0))
    elif case == "unknown parameter":
        tensors = changed(tensors, optim__99__exp_avg=torch.zeros(3))
    else:
        tensors = {name: tensor for name, tensor in tensors.items() if not name.startswith("optim.")}
        scalars = {str(index): {"momentum_buffer": None} for index in range(7)}
        meta = {key: value for key, value in with_resume(meta, optimizer_scalars=scalars).items() if key != "train"}
        flags = ("--optimizer", "adam")
    refuses_to_resume(runner, tiny_corpus, tensors, meta, message, flags)
    if case == "another optimizer":  # what an older torch's SGD kept still resumes with SGD
        train(runner, tiny_corpus, "--optimizer", "sgd", "--out", OUT, "--resume", "--max-steps", "4")


def test_resume_position_past_the_end_of_an_epoch_is_refused(runner, tiny_corpus, resumable):
    """A batch index past an epoch's batches would silently skip the rest of the epoch."""
    tensors, meta = resumable
    refuses_to_resume(runner, tiny_corpus, tensors, with_resume(meta, batch_index=10**6),
                      "batch_index 1000000 is past the end of an epoch (42 batches)")


def test_nonfinite_training_flags_are_refused_up_front(runner, tiny_corpus):
    """An infinite --weight-decay would surface steps later as a NaN loss blamed on --lr, and an
    infinite --clip is no clip (what 0 says); NaN is refused as well. --max-time inf is a limit
    never reached, as without the flag, and trains."""
    for flag, value, message in [
        ("--weight-decay", "inf", "--weight-decay must be finite, 0 or more, got inf"),
        ("--weight-decay", "nan", "--weight-decay must be finite, 0 or more, got nan"),
        ("--clip", "inf", "--clip must be 0 (off) or a finite number, got inf"),
        ("--clip", "nan", "--clip must be 0 (off) or a finite number, got nan"),
        ("--min-lr-ratio", "nan", "--min-lr-ratio must be in [0, 1], got nan"),
        ("--max-time", "nan", "--max-time must be positive, got nan"),
    ]:
        fails(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "3", "--out", OUT, flag, value,
              message=message)
        assert not Path("r").exists()
    train(runner, tiny_corpus, "--max-steps", "2", "--max-time", "inf", "--out", OUT)


def test_a_loss_diverged_by_weight_decay_names_weight_decay(runner, tiny_corpus):
    """A finite but huge --weight-decay diverges as surely as a huge --lr: the advice names both."""
    fails(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "30", "--weight-decay", "1e30", "--out", OUT,
          message="try a lower --lr (now 0.003), a smaller --weight-decay (now 1e+30) or a smaller --clip (now 1.0)")


def test_without_a_validation_split_the_best_loss_is_called_the_training_loss(runner, tiny_corpus):
    """With --val-fraction 0 the best model is chosen by the training loss: `train`, `info` and the
    checkpoint's training summary say so, and say "val" only of a validation loss."""
    shown = [arg for arg in TINY_MODEL if arg != "--quiet"]
    for out, fraction, name in (("t/m.safetensors", "0", "train"), ("v/m.safetensors", "0.1", "val")):
        result = run_cli(runner, "train", tiny_corpus, *shown, "--max-steps", "1", "--val-fraction", fraction,
                         "--out", out)
        (saved,) = [line for line in result.stderr.splitlines() if line.startswith("saved ")]
        assert f"1 steps, best {name} loss " in saved
        assert f", best {name} loss " in run_cli(runner, "info", out).stdout
        training = json.loads(run_cli(runner, "info", out, "--json").stdout)["training"]
        assert (training["best_val_loss"] is None) == (name == "train")
        assert ("best_train_loss" in training) == (name == "train")
    assert "val loss" not in run_cli(runner, "info", "t/m.safetensors").stdout


GOOD_LINE = b'{"step": 1, "tokens": 10, "train_loss": 3.0, "val_loss": 2.9, "val_ppl": 18.2}\n'


@pytest.mark.parametrize(("line", "why"), [
    (b'{"step": 2, "tokens": 20, "note": "caf\xe9"}', "not UTF-8"),
    (b'{"step": 2, "tokens": "20", "train_loss": 2.0}', "tokens is not a number"),
    (b'{"step": 2, "tokens": true, "train_loss": 2.0}', "tokens is not a number"),
    (b'{"step": 2, "tokens": 1' + b"0" * 400 + b'}', "tokens is not a number"),  # no float holds it
    (b'{"step": 2, "tokens": 20, "train_loss": "2.0"}', "train_loss is not a number"),
    (b'{"step": 2, "tokens": 20, "val_loss": [2.0]}', "val_loss is not a number"),
    (b'{"step": 2, "tokens": 20, "val_ppl": {"a": 1}}', "val_ppl is not a number"),
], ids=["latin-1 byte", "string tokens", "bool tokens", "10**400 tokens", "string loss", "list loss", "dict perplexity"])
def test_plot_refuses_a_metrics_line_that_is_not_a_record_naming_file_and_line(runner, line, why):
    Path("p.metrics.jsonl").write_bytes(GOOD_LINE + line + b"\n" + GOOD_LINE)
    fails(runner, "plot", "p.metrics.jsonl", "--out", "p.png",
          message=f"p.metrics.jsonl: line 2 is not a charlm metrics record ({why}); fix or delete that line")
    assert not Path("p.png").exists()


def test_plot_skips_a_last_line_cut_short_by_a_kill_with_a_note(runner):
    """What kill -9 leaves (and --resume drops) is plotted without it; a broken line that is not
    the cut-off last one is still refused."""
    pytest.importorskip("matplotlib")
    Path("p.metrics.jsonl").write_bytes(GOOD_LINE * 2 + b'{"step": 99999, "epoch"')
    result = run_cli(runner, "plot", "p.metrics.jsonl", "--out", "p.png")
    assert result.stderr.splitlines()[:2] == [
        "note: p.metrics.jsonl: skipped line 3, cut short (by a kill while it was written)", "wrote p.png"]
    assert Path("p.png").stat().st_size > 0
    Path("p.metrics.jsonl").write_bytes(GOOD_LINE + b'{"step": 99999, "epoch"\n' + GOOD_LINE)
    fails(runner, "plot", "p.metrics.jsonl", "--out", "q.png", message="line 2 is not a charlm metrics record (not JSON)")


def test_plot_refuses_an_out_name_without_a_picture_suffix(runner):
    """matplotlib would write p.png for --out p, and `plot` say it wrote p."""
    Path("p.metrics.jsonl").write_bytes(GOOD_LINE)
    fails(runner, "plot", "p.metrics.jsonl", "--out", "p", message="p: no picture format in the name; use a .png")
    assert not Path("p").exists() and not Path("p.png").exists()


class Hung(Exception):
    """A command waited past its bound (an Exception, not an OSError, so the CLI does not report it)."""


@pytest.fixture
def bounded():
    """Every command of the test must end within 20 s: a blocking open() is interrupted by SIGALRM."""
    def hung(number, frame):
        raise Hung("the command hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_fifo_is_never_opened_as_a_checkpoint(runner, tiny_corpus, bounded):
    """Opening a FIFO waits for a writer, forever: named, it is refused in one line; lying in
    checkpoints/, the scan for the newest passes it by. So is a FIFO in place of a metrics file
    on --resume."""
    os.mkfifo("fifo.safetensors")
    for command in (["info", "fifo.safetensors"], ["generate", "--checkpoint", "fifo.safetensors"],
                    ["eval", "--checkpoint", "fifo.safetensors", tiny_corpus]):
        fails(runner, *command, message="fifo.safetensors: not a regular file")
    train(runner, tiny_corpus, "--max-steps", "2")
    os.mkfifo("checkpoints/zz-newer.safetensors")
    assert "using checkpoints/tiny.safetensors" in run_cli(runner, "generate", "--length", "3").stderr
    os.unlink("checkpoints/tiny.metrics.jsonl")
    os.mkfifo("checkpoints/tiny.metrics.jsonl")
    fails(runner, "train", tiny_corpus, *TINY_MODEL, "--resume", "--max-steps", "3",
          message="checkpoints/tiny.metrics.jsonl: not a regular file")


def test_the_checkpoint_scan_skips_files_it_cannot_read(runner, tiny_corpus, monkeypatch):
    """An old file in checkpoints/ that cannot be read (a dangling link, a folder, a file whose
    open() is refused: tests run as root, so chmod would not refuse it) does not stop plain
    `generate` while a good checkpoint is there."""
    train(runner, tiny_corpus, "--max-steps", "2")
    os.symlink("nowhere.safetensors", "checkpoints/dangling.safetensors")
    os.mkdir("checkpoints/folder.safetensors")
    Path("checkpoints/locked.safetensors").write_bytes(Path("checkpoints/tiny.safetensors").read_bytes())
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if str(file).endswith("locked.safetensors"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    result = run_cli(runner, "generate", "--length", "3")
    assert "using checkpoints/tiny.safetensors" in result.stderr
    assert loading.latest("checkpoints", "lm") == "checkpoints/tiny.safetensors"


def test_info_shows_a_training_summary_of_any_size_in_one_line(runner, tiny_corpus):
    """Metadata is data: a best loss of 10**400 (an int no float holds) is left out, not a traceback."""
    train(runner, tiny_corpus, "--max-steps", "2")
    path = Path("checkpoints/tiny.safetensors")
    meta = checkpoint.read_metadata(path)
    rewrite(path, training={**meta["training"], "best_val_loss": 10**400})
    shown = run_cli(runner, "info", path).stdout
    assert "training     2 steps, 64 tokens\n" in shown


@pytest.mark.parametrize(("changes", "message"), [
    ({"task": ["lm"]}, "is a ['lm'] checkpoint; this command needs a language-model checkpoint"),
    ({"architecture": ["seq2seq"]}, "unknown task 'lm' (architecture ['seq2seq'])"),
    ({"architecture": 5}, "unknown task 'lm' (architecture 5)"),
], ids=["task is a list", "architecture is a list", "architecture is a number"])
def test_a_task_or_architecture_of_any_json_type_is_refused_in_one_line(runner, tiny_corpus, changes, message):
    """Metadata is data: a list where a name belongs cannot even be looked up (unhashable), a
    number cannot be joined to text. The loading commands refuse it in one line; info shows it."""
    train(runner, tiny_corpus, "--max-steps", "2")
    path = Path("checkpoints/tiny.safetensors")
    rewrite(path, **changes)
    for command in each_loading_command(path):
        if command[0] == "info":
            assert str(next(iter(changes.values()))) in run_cli(runner, *command).stdout
        else:
            fails(runner, *command, message=message)


@pytest.mark.parametrize("train_settings", [[1], {"val_fraction": "x"}, {"val_fraction": NAN}, {"seed": [1]}],
                         ids=["a list", "fraction a string", "fraction NaN", "seed a list"])
def test_eval_held_out_refuses_damaged_training_settings_in_one_line(runner, train_settings):
    """`eval --held-out` splits the pairs again with the checkpoint's val_fraction and seed: those
    of the wrong type or range are a damaged checkpoint, not a traceback from the split."""
    Path("pairs.tsv").write_bytes((ROOT / "corpora" / "wordpairs.tsv").read_bytes())
    run_cli(runner, "train", "pairs.tsv", "--max-steps", "2", "--hidden-size", "8", "--quiet")
    rewrite(Path("checkpoints/pairs.safetensors"), train=train_settings)
    fails(runner, "eval", "--checkpoint", "checkpoints/pairs.safetensors", "pairs.tsv", "--held-out",
          message="damaged training settings (val_fraction, seed) in charlm metadata; score the whole file without")

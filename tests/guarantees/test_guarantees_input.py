"""What charlm guarantees about a hostile user's files and streams: corpora that are not plain
files or change while read, stdin that is endless, not UTF-8 or Windows-made, flags past every
sensible size, and text from a checkpoint that would drive a terminal. One test per guarantee, in
the style of tests/guarantees/test_guarantees.py (whose `fails` they share)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner

from charlm.checkpoints import files as checkpoint
from charlm.cli import cli
from charlm.text.tokens import Vocab
from tests.conftest import ROOT, TINY_MODEL, TINY_TEXT, run_cli
from tests.guarantees.test_guarantees import fails, model_file, train  # noqa: F401 (model_file: a fixture)

TINY_SEQ2SEQ = ("--hidden-size", "16", "--embedding-size", "8", "--batch-size", "4", "--quiet", "--epochs", "1")
PAIRS_TEXT = "".join(f"{word}\t{word[::-1]}\n" for word in ["abc", "bca", "cab", "aab", "bba", "cca", "ab", "ba"])


@pytest.fixture
def pair_model(runner, tmp_path) -> Path:
    (tmp_path / "rev.tsv").write_text(PAIRS_TEXT, encoding="utf-8")
    run_cli(runner, "train", tmp_path / "rev.tsv", *TINY_SEQ2SEQ)
    return Path("checkpoints/rev.safetensors")


def piped(runner, *args, input: bytes | str):
    """`charlm ARGS` with `input` on stdin; the result, whatever the exit code."""
    return runner.invoke(cli, [str(arg) for arg in args], input=input, catch_exceptions=False)


def fails_on(runner, *args, input: bytes | str, message: str):
    """`fails`, with `input` on stdin."""
    result = piped(runner, *args, input=input)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and lines and lines[-1].startswith("charlm: error: "), result.output
    assert message in lines[-1], lines[-1]
    return result


def with_vocab(path: Path, out: str, renamed: dict[str, str], **changes) -> None:
    """Write `path`'s model to `out` with some vocab tokens renamed, as anyone can: the metadata is
    JSON with \\u escapes, so it may hold control characters and even lone surrogates."""
    tensors, meta = checkpoint.load(path)
    itos = [renamed.get(token, token) for token in meta["vocab"]["itos"]]
    meta = {**meta, "vocab": {**meta["vocab"], "itos": itos}, **changes}
    safetensors.torch.save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, out,
                                metadata={checkpoint.METADATA_KEY: json.dumps(meta)})


def start(*args: str | Path) -> subprocess.Popen:
    """A real `python -m charlm ARGS` with pipes on stdin, stdout and stderr (bytes)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "charlm", *map(str, args)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_line(process: subprocess.Popen, timeout: float = 90) -> bytes:
    """The next line of `process`'s stdout (b"" at its end), waiting at most `timeout` seconds."""
    fd, line = process.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            process.kill()
            pytest.fail(f"no line came in {timeout} s: {process.communicate()[1].decode()}")
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return line


class Closed(CliRunner):
    """A CliRunner whose command finds the streams named ("stdin", "stdout", "stderr") None, as
    Python leaves them when the shell closed their file descriptor (`<&-`, `>&-`, `2>&-`)."""

    def __init__(self, *names: str) -> None:
        super().__init__()
        self.names = names

    @contextlib.contextmanager
    def isolation(self, *args, **kwargs):
        with super().isolation(*args, **kwargs) as streams:
            for name in self.names:
                setattr(sys, name, None)
            yield streams


# ---------------------------------------------------------------------------------------------
# Corpora that are not plain text files


@pytest.mark.parametrize("change", ["append", "shrink", "rewrite"])
def test_a_corpus_changed_between_the_two_reading_passes_is_refused(runner, tiny_corpus, monkeypatch, change):
    """Training reads a corpus twice, counting then encoding into a tensor of the counted size: a
    file that grows, shrinks or is rewritten between the passes is one line saying to try again,
    never a traceback or a tensor of another text. Left alone, it trains."""
    from charlm.data import loading as data  # where load_corpus looks encode_stream up

    encode_stream = data.encode_stream
    edits = {"append": ("a", " and more text\n"), "shrink": ("w", TINY_TEXT[:500]),
             "rewrite": ("w", TINY_TEXT.replace("e", "a"))}

    def edited_between_the_passes(*args, **kwargs):
        mode, text = edits[change]
        with open(tiny_corpus, mode, encoding="utf-8") as file:
            file.write(text)
        return encode_stream(*args, **kwargs)

    os.utime(tiny_corpus, (0, 0))  # a write now changes the time, however coarse the file system's clock
    monkeypatch.setattr(data, "encode_stream", edited_between_the_passes)
    fails(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "1",
          message="tiny.txt: the file changed while it was being read; try again")
    assert not Path("checkpoints").exists() and not list(tiny_corpus.parent.glob(".charlm-cache/*"))
    monkeypatch.setattr(data, "encode_stream", encode_stream)
    train(runner, tiny_corpus, "--max-steps", "1")


def test_special_files_given_as_a_corpus_get_the_right_message(runner, tmp_path):
    """A FIFO is named as such from os.stat, never opened (opening one would wait for a writer: a
    helper opens its other end if charlm ever does, so that this test fails rather than hangs);
    /dev/zero and /dev/urandom are character devices; /proc/cpuinfo reports a size of 0 but is
    text, and is read as such."""
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    done = threading.Event()

    def unblock_a_reader() -> None:
        while not done.wait(0.05):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # fails (ENXIO) until a reader is there
            except OSError:
                continue

    threading.Thread(target=unblock_a_reader, daemon=True).start()
    try:
        for command in (["stats", fifo], ["train", fifo]):
            fails(runner, *command, message="pipe.txt: not a regular file (a FIFO); give a text file")
    finally:
        done.set()
    for device in ("/dev/zero", "/dev/urandom"):
        if not os.path.exists(device):
            continue
        fails(runner, "stats", device, message=f"{device}: not a regular file (a character device)")
    if os.path.isfile("/proc/cpuinfo") and os.path.getsize("/proc/cpuinfo") == 0:
        report = json.loads(run_cli(runner, "stats", "/proc/cpuinfo", "--json").stdout)
        assert report["tokens"] > 100 and report["vocab_size"] > 10


def test_a_symbolic_link_loop_given_as_a_corpus_is_named(runner):
    os.symlink("b.txt", "a.txt")
    os.symlink("a.txt", "b.txt")
    fails(runner, "stats", "a.txt", message="a.txt: a loop of symbolic links; check the path")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_with_a_bom_are_told_their_encoding_and_read_with_it(runner, tiny_corpus, encoding):
    """What Windows calls "Unicode" (UTF-16 with a byte-order mark, CRLF line ends) is not called a
    binary file: the message names the --encoding to pass, and with it the text is the same corpus
    as its UTF-8 twin, to count, train on and evaluate."""
    wide = encoding.split("-")[0] + "-" + encoding.split("-")[1]  # utf-16-be -> utf-16
    data = TINY_TEXT.replace("\n", "\r\n")
    Path("wide.txt").write_bytes(data.encode(encoding) if encoding.count("-") == 1 else
                                 "\ufeff".encode(encoding) + data.encode(encoding))
    fails(runner, "stats", "wide.txt", message=f"wide.txt: starts with a {wide.upper()} byte-order mark; "
          f"pass --encoding {wide}")
    plain = run_cli(runner, "stats", tiny_corpus, "--json").stdout
    assert run_cli(runner, "stats", "wide.txt", "--encoding", wide, "--json").stdout == plain
    train(runner, "wide.txt", "--encoding", wide, "--max-steps", "1")
    scores = [json.loads(run_cli(runner, "eval", "--checkpoint", "checkpoints/wide.safetensors", *file, "--json").stdout)
              for file in ([tiny_corpus], ["wide.txt", "--encoding", wide])]
    assert scores[0] == scores[1]


# ---------------------------------------------------------------------------------------------
# translate's stdin


@pytest.mark.slow  # real processes: seconds to import torch
def test_translate_streams_stdin_line_by_line(runner, pair_model):
    """`yes man | charlm translate` answers at once: each line's translation is written and
    flushed before the next line is read, through a pipe that stays open. With --attention-plot
    (one input), a second line is an error at once, not a wait for the end of stdin."""
    process = start("translate", "--checkpoint", pair_model)
    try:
        for line in (b"abc\n", b"ba\n", b"\n"):
            process.stdin.write(line)
            process.stdin.flush()
            answer = read_line(process)
            assert answer.endswith(b"\n") and set(answer[:-1].decode()) <= set("abc"), answer
        process.stdin.close()
        assert read_line(process) == b""
        assert process.wait(60) == 0
    finally:
        process.kill()
    process = start("translate", "--checkpoint", pair_model, "--attention-plot", "a.png")
    try:
        process.stdin.write(b"abc\nba\n")
        process.stdin.flush()
        _, stderr = process.communicate(timeout=90)  # stdin still open: communicate closes it only after
        assert process.returncode != 0
        assert stderr.decode().strip() == ("charlm: error: --attention-plot draws one input; got more than one line "
                                           "(see charlm translate --help)")
    except subprocess.TimeoutExpired:
        pytest.fail("--attention-plot waited for the end of stdin")
    finally:
        process.kill()


def test_translate_names_the_line_of_stdin_that_is_not_utf8(runner, pair_model):
    """Bytes that are not UTF-8 on stdin (read strictly, as under PYTHONIOENCODING=utf-8:strict)
    are one line naming the line and byte, after the lines before them were answered; with
    --unknown skip or unk they are characters the model never saw."""
    result = fails_on(runner, "translate", "--checkpoint", pair_model, input=b"abc\nab\xffc\n",
                      message="line 2 of stdin is not valid utf-8 at byte offset 2; convert it to utf-8, "
                              "or pass --unknown skip")
    assert len(result.stdout.splitlines()) == 1
    expected = run_cli(runner, "translate", "--checkpoint", pair_model, "abc", "abc").stdout
    assert piped(runner, "translate", "--checkpoint", pair_model, "--unknown", "skip", input=b"abc\nab\xffc\n").stdout \
        == expected


@pytest.mark.slow  # a real process: CliRunner's stdin turns "\r\n" into "\n" itself, a real one does not
def test_translate_strips_crlf_line_ends_of_stdin(runner, pair_model):
    expected = run_cli(runner, "translate", "--checkpoint", pair_model, "abc", "", "ba").stdout
    process = start("translate", "--checkpoint", pair_model)
    try:
        stdout, stderr = process.communicate(b"abc\r\n\r\nba\r\n", timeout=90)
    finally:
        process.kill()
    assert process.returncode == 0 and stdout.decode() == expected, stderr.decode()


def test_translate_drops_a_byte_order_mark_at_the_start_of_stdin(runner, pair_model):
    """A file saved by Notepad and piped in (`type words.txt | charlm translate`) starts with a
    UTF-8 byte-order mark, which is not a character of the first line."""
    expected = run_cli(runner, "translate", "--checkpoint", pair_model, "abc", "ba").stdout
    assert piped(runner, "translate", "--checkpoint", pair_model, input=b"\xef\xbb\xbfabc\r\nba\r\n").stdout == expected


def test_translate_bounds_a_line_of_stdin(runner, pair_model):
    """`charlm translate < /dev/zero` (no line break ever) stops at the first MiB of a line, in one line."""
    fails_on(runner, "translate", "--checkpoint", pair_model, input=b"ab\n" + b"z" * (3 << 20),
             message="line 2 of stdin is longer than 1,048,576 bytes; give shorter lines")


def test_translate_with_stdin_closed_says_so(runner, pair_model):
    """`charlm translate <&-`: no WORDS, and no stdin to read them from."""
    result = Closed("stdin").invoke(cli, ["translate", "--checkpoint", str(pair_model)], catch_exceptions=False)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.stderr.strip().startswith("charlm: error: stdin is closed; give the WORDS to translate"), result.output


@pytest.mark.slow  # a real process: seconds to import torch
def test_output_into_a_closed_pipe_ends_quietly(runner, pair_model):
    """`yes man | charlm translate | head -1`: when stdout's reader has gone, charlm stops with a
    non-zero exit and says nothing (no "Broken pipe" error, no "Exception ignored")."""
    process = start("translate", "--checkpoint", pair_model)
    process.stdout.close()  # the reader has gone before the first answer
    try:
        process.stdin.write(b"abc\n" * 300)
        process.stdin.close()
    except BrokenPipeError:  # charlm has already gone: the same
        pass
    try:
        assert process.wait(90) != 0
        assert process.stderr.read() == b""
    finally:
        process.kill()


# ---------------------------------------------------------------------------------------------
# Flags


@pytest.mark.parametrize(("command", "message"), [
    (["train", "tiny.txt", "--threads", str(10**12)],
     "Invalid value for '--threads': 1000000000000 is not in the range 1<=x<=1024"),
    (["generate", "--checkpoint", "{model}", "--length", str(10**20)],
     "Invalid value for '--length': 100000000000000000000 is too large (at most 9,223,372,036,854,775,807)"),
    (["generate", "--checkpoint", "{model}", "--num-samples", str(10**20)], "'--num-samples': 100000000000000000000 is too large"),
    (["translate", "--checkpoint", "{model}", "--max-length", str(10**20), "ab"], "'--max-length': 100000000000000000000 is too large"),
    (["eval", "--checkpoint", "{model}", "tiny.txt", "--max-length", str(10**20)], "'--max-length': 100000000000000000000 is too large"),
])
def test_numbers_past_what_torch_takes_are_one_line_naming_the_limit(runner, model_file, command, message):
    """torch takes thread counts below 2**31 and sizes below 2**63; past them it fails deep inside on
    an overflow. --threads stops at 1024, sizes at 2**63 - 1 (below that, too big is "out of memory")."""
    fails(runner, *[part.format(model=model_file) for part in command], message=message)


def test_eval_bounds_the_memory_of_its_logits(runner, model_file, tiny_corpus, monkeypatch):
    """`charlm eval` walks the text in batches whose logits (rows x steps x vocab, float32) stay
    within a fixed budget: 32 rows of 256 steps of a 100k-word vocab would be 3.3 GB. Fewer steps
    per batch change no result: the state is carried, so the loss is today's within 1e-6."""
    from charlm.data import batches as data
    from charlm.data.batches import eval_batches, lm_eval_batches
    from charlm.data.loading import load_corpus
    from charlm.evaluation import reports as evaluation

    budget = 64 * 1024  # bytes: forces short batches on the tiny model's vocab of 26
    monkeypatch.setattr(data, "EVAL_LOGITS_BYTES", budget, raising=False)
    seen = []
    evaluate = evaluation.evaluate

    def recording(model, batches, *args, **kwargs):
        batches = list(batches)
        seen.append((model, batches))
        return evaluate(model, batches, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", recording)
    report = json.loads(run_cli(runner, "eval", "--checkpoint", model_file, tiny_corpus, "--json").stdout)
    (model, batches), = seen
    vocab_size = model.head.out_features
    assert max(inputs.numel() for inputs, _ in batches) * vocab_size * 4 <= budget
    ids = load_corpus(tiny_corpus, vocab=Vocab.from_dict(checkpoint.read_metadata(model_file)["vocab"])).ids
    unbounded = evaluate(model, eval_batches(ids, 32, 256))  # the batches eval used to take
    assert report["loss"] == pytest.approx(unbounded, rel=1e-6)
    assert sum(targets.numel() for _, targets in batches) == len(ids) - 1
    # A 100k-word vocab within the real budget, and a small one in the batches it always had.
    monkeypatch.undo()
    long_ids = torch.zeros(2_000_000, dtype=torch.int32)
    shapes = {inputs.shape for inputs, _ in lm_eval_batches(long_ids, vocab_size=100_000)()}
    assert max(rows * steps for rows, steps in shapes) * 100_000 * 4 <= 256 << 20 and (32, 20) in shapes
    assert [x.shape for x, _ in lm_eval_batches(long_ids, vocab_size=8192)()] == \
        [x.shape for x, _ in eval_batches(long_ids, 32, 256)]


# ---------------------------------------------------------------------------------------------
# Output


def test_a_word_model_separates_its_words_without_a_prefix(runner, tiny_corpus):
    train(runner, tiny_corpus, "--tokens", "word", "--max-steps", "2", "--out", "words.safetensors")
    vocab = json.loads(run_cli(runner, "info", "words.safetensors", "--json").stdout)["vocab"]["itos"]
    for prefix in ("", "the time", "   "):
        text = run_cli(runner, "generate", "--checkpoint", "words.safetensors", "--length", "12", "--seed", "1",
                       *(["--prefix", prefix] if prefix else [])).stdout
        words = text.split()
        assert words[: len(prefix.split())] == prefix.split() and len(words) == len(prefix.split()) + 12, text
        assert set(words) <= set(vocab) and text == " ".join(words) + "\n"


def test_info_escapes_control_characters_of_the_metadata(runner, model_file):
    """A checkpoint is anyone's file: ESC, BEL and C1 controls in its metadata are shown escaped
    by `info`, in text (\\x1b) and in JSON (\\u001b, \\u009b: json.dumps leaves C1 raw), and a
    lone surrogate neither; the JSON still reads back as the metadata."""
    hostile = {"corpus": "x\x1b]0;pwned\x07y", "architecture": "\x1b[2J\x9b31m"}
    with_vocab(model_file, "hostile.safetensors", {"e": "\udcff"}, **hostile)
    shown = run_cli(runner, "info", "hostile.safetensors").stdout
    assert "corpus x\\x1b]0;pwned\\x07y" in shown and "\\x1b[2J\\x9b31m" in shown
    as_json = run_cli(runner, "info", "hostile.safetensors", "--json").stdout
    for text in (shown, as_json):
        assert not any((ord(char) < 0x20 and char != "\n") or 0x7F <= ord(char) <= 0x9F or 0xD800 <= ord(char) <= 0xDFFF
                       for char in text), text
    meta = json.loads(as_json)
    assert meta["corpus"] == hostile["corpus"] and "\udcff" in meta["vocab"]["itos"]


def test_generate_writes_no_control_characters_to_a_terminal(runner, model_file, monkeypatch):
    """Generated text goes to a pipe or a file exactly; on a terminal every control character but
    newline and tab is written escaped, so a checkpoint's vocab cannot drive the terminal."""
    from charlm import cli as cli_module

    with_vocab(model_file, "hostile.safetensors", {"e": "\x1b", "t": "\x9b", "a": "\x07", "n": "\t"})
    generate = ("generate", "--checkpoint", "hostile.safetensors", "--prefix", "\x1b\x9b\x07 \t", "--length", "200",
                "--seed", "0")
    exact = run_cli(runner, *generate).stdout
    assert exact.startswith("\x1b\x9b\x07 \t") and "\x1b" in exact[5:]
    monkeypatch.setattr(cli_module, "is_terminal", lambda stream: True, raising=False)
    shown = run_cli(runner, *generate).stdout
    assert shown.startswith("\\x1b\\x9b\\x07 \t")
    assert not any((ord(char) < 0x20 and char not in "\n\t") or 0x7F <= ord(char) <= 0x9F for char in shown)
    assert shown == exact.replace("\x1b", "\\x1b").replace("\x9b", "\\x9b").replace("\x07", "\\x07")
    assert run_cli(runner, *generate, "--num-samples", "2").stdout.count("\x1b") == 0


def test_text_the_output_encoding_cannot_hold_is_escaped_not_a_traceback(model_file):
    """A vocab token that is a lone surrogate (no encoding holds it), or text for a terminal that is
    ASCII: the character is written as a backslash escape."""
    runner = CliRunner()
    with_vocab(model_file, "hostile.safetensors", {"e": "\udcff", "t": "é"})
    generate = ("generate", "--checkpoint", "hostile.safetensors", "--prefix", "\udcffé", "--length", "5")
    assert run_cli(runner, *generate).stdout.startswith("\\udcffé")
    assert run_cli(CliRunner(charset="ascii"), *generate).stdout.startswith("\\udcff\\xe9")


def test_an_error_line_escapes_control_characters(runner):
    """The one error line quotes paths and values as given: a file named with an escape sequence
    shows it escaped."""
    result = fails(runner, "stats", "\x1b]0;pwned\x07.txt", message="\\x1b]0;pwned\\x07.txt: no such file")
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr


def test_a_command_with_stdout_or_stderr_closed_says_so_or_goes_on(model_file, tiny_corpus):
    """stdout closed (`>&-`): a command with output to write there ends with one line saying so and
    a non-zero exit, never an AttributeError; `train`, which writes nothing there, trains. stderr
    closed (`2>&-`): the notes and progress go nowhere and the work is done."""
    closed = Closed("stdout")
    for command in (["generate", "--checkpoint", str(model_file), "--length", "5"], ["info", str(model_file)],
                    ["stats", str(tiny_corpus)], ["generate", "--checkpoint", str(model_file), "-i"]):
        result = closed.invoke(cli, command, input="the \n", catch_exceptions=False)
        assert result.exit_code == 1, result.output
        assert result.stderr.splitlines()[-1] == ("charlm: error: stdout is closed, so there is nowhere to write the "
                                                  "output; send it to a file (> out.txt) or a pipe"), result.output
    train = ["train", str(tiny_corpus), *TINY_MODEL, "--max-steps", "2", "--out", "closed.safetensors"]
    assert closed.invoke(cli, train, catch_exceptions=False).exit_code == 0
    loud = [argument for argument in train if argument != "--quiet"]  # its progress goes to stderr
    assert Closed("stderr").invoke(cli, [*loud, "--overwrite"], catch_exceptions=False).exit_code == 0
    assert checkpoint.read_metadata("closed.safetensors")["training"]["steps"] == 2
    written = Closed("stderr").invoke(cli, ["generate", "--checkpoint", "closed.safetensors", "--length", "5", "--seed",
                                            "1"], catch_exceptions=False)
    assert written.exit_code == 0 and len(written.stdout) >= 5
    assert Closed("stdout", "stderr").invoke(cli, ["generate", "--checkpoint", "closed.safetensors"]).exit_code == 1
    asking = Closed("stdin").invoke(cli, ["generate", "--checkpoint", "closed.safetensors", "-i"], catch_exceptions=False)
    assert asking.exit_code == 1 and asking.stderr == ("charlm: error: stdin is closed, so -i has no prefixes to read; "
                                                       "give one with --prefix, without -i\n")


def test_an_attention_plot_named_like_no_picture_is_one_line(runner, pair_model):
    """`translate --attention-plot` with a name matplotlib cannot write (the checkpoint's own, say)
    is one line, and the file named is left as it was; with no suffix at all it is a PNG of that
    very name, not NAME.png."""
    before = pair_model.read_bytes()
    fails(runner, "translate", "--checkpoint", pair_model, "abc", "--attention-plot", pair_model,
          message="Format 'safetensors' is not supported")
    assert pair_model.read_bytes() == before
    run_cli(runner, "translate", "--checkpoint", pair_model, "abc", "--attention-plot", "attention")
    assert Path("attention").read_bytes().startswith(b"\x89PNG") and not Path("attention.png").exists()


@pytest.mark.slow  # a real process: seconds to import torch
def test_generate_into_a_closed_stdout_is_one_line(model_file):
    """`charlm generate >&-` in a real shell's terms: file descriptor 1 closed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "charlm", "generate", "--checkpoint", model_file, "--length", "5"],
                          env=env, stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1), text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.splitlines() == [
        "charlm: error: stdout is closed, so there is nowhere to write the output; send it to a file (> out.txt) or "
        "a pipe"], done.stderr


@pytest.mark.slow  # a real process: seconds to start
def test_a_current_folder_removed_under_the_shell_is_one_line(tmp_path, tiny_corpus):
    """The shell's folder removed under it: one line saying so, not oneMKL's fatal error as torch
    fails to load."""
    gone = tmp_path / "gone"
    gone.mkdir()

    def enter_and_remove() -> None:
        os.chdir(gone)
        os.rmdir(gone)

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "charlm", "stats", tiny_corpus], env=env, capture_output=True,
                          text=True, preexec_fn=enter_and_remove, timeout=120)
    assert done.returncode == 1 and done.stderr.splitlines() == [
        "charlm: error: the current folder no longer exists (removed while the shell was in it); cd into one that "
        "does"], done.stderr

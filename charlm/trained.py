"""Trained models for a program: a language model (`TextModel`: generate, stream, evaluate, info)
and a model of pairs (`PairModel`: translate, attention, evaluate, info), as `charlm.load` gives
them and as `charlm generate`, `translate` and `eval` use them.

Their keywords are the commands' flags, underscored, from `charlm.settings`' rows, checked by them
(`charlm.arguments`); a mistake raises `charlm.CharlmError` naming the setting as its caller does
(`settings.rows.DOOR`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import queue
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charlm.arguments import PathLike, callers_terms, checked, in_callers_words, one_text, paths, text_list
from charlm.errors import CharlmError, UsageError
from charlm.presets import PAIRS
from charlm.settings import GENERATE, TRAIN, TRANSLATE, for_command, parameters
from charlm.settings.rows import shown_value

if TYPE_CHECKING:
    from charlm.generation.continuation import Sample
    from charlm.generation.request import Request
    from charlm.text.corpus import FoundCorpus

def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class TextModel:
    """A trained language model: `generate`, `stream`, `evaluate` and `info`, as the commands
    `charlm generate`, `charlm eval` and `charlm info` do."""

    def __init__(self, path: str, device: Any) -> None:
        from charlm.checkpoints.loading import load_model

        self.path = path
        self.model, self.meta, self.vocab = load_model(path, "lm", device)

    def __repr__(self) -> str:
        return f"TextModel({self.path!r})"

    def info(self) -> dict[str, Any]:
        """The checkpoint's metadata, as `charlm info --json` prints it."""
        from charlm.checkpoints.metadata import write

        return write(self.meta)

    @callers_terms(GENERATE)
    def generate(self, *args: Any, **keywords: Any) -> str | list[str] | Sample | list[Sample]:
        """The text `charlm generate` prints with these options (the prefix, then `length` new
        tokens, or fewer where a `stop` text ends it), without its final line break; a list of them
        for `num_samples` > 1. The keywords are `charlm generate`'s flags, underscored, with the
        same defaults (`charlm generate --help` says what each does); `precision` "auto" is bf16
        where it measures faster here. With `logprobs=N`, a `charlm.generation.continuation.Sample`
        (or a list of them) instead: the new text without the prefix (`text`), its `tokens`, each
        with its log-probability under the model and the N likeliest tokens' (`top`), and why it
        ended (`finish_reason`: "stop" or "length")."""
        request = _request(self.generate, args, keywords)
        pieces: list[str] = []
        _, samples = self.run(request, pieces.append, keep=True)  # a length too long to keep fails at once
        if request.logprobs is not None:
            return samples[0] if request.num_samples == 1 else samples
        if request.num_samples == 1:
            return "".join(pieces).removesuffix("\n")
        return [piece.removeprefix("\n").removesuffix("\n") for piece in pieces]

    @callers_terms(GENERATE)
    def stream(self, *args: Any, **keywords: Any) -> Iterator[str]:
        """The text of `generate` (one sample, no log-probabilities) in pieces, each as soon as it is
        made: the prefix, then the new text a few tokens at a time; `"".join(model.stream(...)) == model.generate(...)`.
        A bad prefix raises here, at once. It keeps what it has not handed on, a few pieces: sampling
        waits for a reader that lags, so a stream of any length takes the memory of a short one."""
        from charlm.generation.sampling import encode_prefix

        request = _request(self.stream, args, keywords)
        encode_prefix(request.prefix, self.vocab, self.meta.tokens, self.meta.preprocess, request.unknown)
        pieces: queue.Queue = queue.Queue(maxsize=STREAM_AHEAD)
        done, stopped = object(), threading.Event()

        def put(piece: Any) -> None:
            while not stopped.is_set():
                with contextlib.suppress(queue.Full):
                    return pieces.put(piece, timeout=0.1)
            raise _Stopped  # the reader has gone: stop sampling

        def work() -> None:
            try:
                self.sample(request, put)
                put(done)
            except _Stopped:
                pass
            except BaseException as error:  # handed to the reader
                with contextlib.suppress(_Stopped):
                    put(error)

        def read() -> Iterator[str]:
            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            try:
                held = None  # the last piece is `sample`'s closing line break, which `generate` leaves out too
                while (piece := pieces.get()) is not done:
                    if isinstance(piece, CharlmError):  # named as the caller names settings, as at once
                        raise in_callers_words(piece, GENERATE.values())
                    if isinstance(piece, BaseException):
                        raise piece
                    if held is not None:
                        yield held
                    held = piece
            finally:
                stopped.set()
                worker.join()

        return read()

    def sample(self, request: Request, on_text: Callable[[str], None]) -> int:
        """The text of `request` handed to `on_text` in pieces, as `charlm generate` prints it (it
        calls this): the prefix, the new text, a line break after each sample; notes on stderr.
        Returns the seed it used: the request's, or one drawn when it has none (the same request
        with that seed gives the same text again)."""
        return self.run(request, on_text)[0]

    def run(self, request: Request, on_text: Callable[[str], None], keep: bool = False) -> tuple[int, list[Sample]]:
        """`sample`, and also each sample's `charlm.generation.continuation.Sample`: its new text
        and tokens (with log-probabilities where the request asks for them; of one sample only
        with `logprobs`: else it is only handed on, and its memory stays that of a short one) and
        why it ended. With `keep` (for a caller that keeps the text) too long to keep fails at once."""
        import random

        from charlm.generation import sampling as generator

        prefix_ids = generator.encode_prefix(request.prefix, self.vocab, self.meta.tokens, self.meta.preprocess,
                                             request.unknown)
        if request.prefix and not prefix_ids and request.unknown == "skip":
            say("note: every character of the prefix was unknown and skipped: generating without one")
        chosen, note = generator.choose_precision(self.model, request.num_samples, request.precision, self.path)
        if note:
            say(note)
        seed = request.seed if request.seed is not None else random.randrange(2**63)
        samples = generator.stream_text(self.model, self.vocab, self.meta.tokens, prefix_ids, request.length,
                                        request.sampling, request.num_samples, seed, on_text=on_text,
                                        precision=chosen, stop=request.stop, logprobs=request.logprobs, keep=keep)
        return seed, samples

    @callers_terms(TRAIN)
    def evaluate(self, text_or_path: str | os.PathLike | Sequence[PathLike] | FoundCorpus, encoding: str = "utf-8",
                 include: Sequence[str] = (), exclude: Sequence[str] = (), held_out: bool = False) -> dict[str, Any]:
        """Loss (nats per token), perplexity ("ppl"), bits per token ("bpc"), the tokens predicted
        and how many the vocab lacks, as `charlm eval --json` reports them. A `Path`, a list of
        paths, or a str naming a file or folder is read as `charlm eval` reads it (the files
        `charlm.text.corpus.find_corpus` found, too); any other str is the text itself. With
        `held_out`, only the part of its own corpus the run held out (another corpus is refused)."""
        from charlm.evaluation.reports import evaluate_text
        from charlm.text.corpus import FoundCorpus, find_corpus
        from charlm.training.resume import recorded_corpus_file

        encoding, include, exclude, held_out = checked(TRAIN, encoding=encoding, include=include, exclude=exclude,
                                                        held_out=held_out)
        if not isinstance(text_or_path, (str, os.PathLike, FoundCorpus, list, tuple)):
            raise UsageError(f"text_or_path must be a text, a path or a list of paths, got {shown_value(text_or_path)}")
        kept = recorded_corpus_file(self.path) if held_out else None
        scored = functools.partial(evaluate_text, self.model, self.meta, self.vocab,
                                   held_out=self.path if held_out else None, resumed_file=kept)
        if isinstance(text_or_path, FoundCorpus):
            return scored(text_or_path, encoding)
        if isinstance(text_or_path, str) and not _names_a_path(text_or_path):
            if held_out:
                raise UsageError("held_out scores the run's own corpus; give its path, not a text")
            with _as_file(text_or_path, "text_or_path") as path:
                return scored(path, "utf-8")
        return scored(find_corpus(paths(text_or_path, "text_or_path"), encoding, include, exclude), encoding)

    @callers_terms()
    def inspect(self, text: str, top_k: int = 5) -> Any:
        """What the model made of `text`, token by token (`charlm.evaluation.inside.Inside`): the
        surprise in bits, the `top_k` tokens it expected with their probabilities, and each
        recurrent layer's hidden state (and an LSTM's cell state) after each token, or each
        transformer block's output and its heads' attention. The text is read and walked as
        `evaluate` reads and walks it, so the mean surprise is its loss."""
        from charlm.data.loading import load_corpus
        from charlm.evaluation.inside import inspect_ids

        one_text(text, "text")
        if type(top_k) is not int or top_k < 1:
            raise UsageError(f"top_k must be a whole number of 1 or more, got {shown_value(top_k)}")
        with _as_file(text, "text") as path:
            data = load_corpus(path, self.meta.tokens, self.meta.preprocess, vocab=self.vocab, cache_dir=None)
        return inspect_ids(self.model, data.ids, self.vocab, top_k)


@contextlib.contextmanager
def _as_file(text: str, said: str) -> Iterator[Path]:
    """`text` in a temporary UTF-8 file, to be read as a corpus is. The user never made that
    file: an error that names it names "the text" instead, and an empty text is refused unwritten."""
    if not text:
        raise UsageError(f"{said} is an empty text: there is nothing to read")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "text.txt"
        path.write_text(text, encoding="utf-8")
        try:
            yield path
        except CharlmError as error:
            error.args = (str(error).replace(str(path), "the text"), *error.args[1:])
            raise


# `generate` and `stream` take `charlm generate`'s options, as its rows declare them; `stream` one sample's text.
_NOT_STREAMED = ("num_samples", "logprobs")
_GENERATE_ROWS = for_command(GENERATE, "generate")
TextModel.generate.__signature__ = inspect.Signature(  # what help() and a notebook's completion show
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *parameters(_GENERATE_ROWS)],
    return_annotation="str | list[str]")
TextModel.stream.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
     *parameters(row for row in _GENERATE_ROWS if row.name not in _NOT_STREAMED)],
    return_annotation="Iterator[str]")


def _request(method: Any, args: tuple, keywords: dict[str, Any]) -> Request:
    """The `Request` of a call to `TextModel.generate` or `.stream` (`method`, bound), checked, a
    value named by its keyword; a keyword neither takes is a TypeError, as Python's own."""
    from charlm.generation.request import Request

    return Request.from_fields(inspect.signature(method).bind(*args, **keywords).arguments, said="keyword")


class _Stopped(Exception):
    """A stream's reader stopped reading."""


# The pieces a stream makes ahead of its reader: past them, sampling waits for the reader.
STREAM_AHEAD = 64


def _names_a_path(text: str) -> bool:
    return "\n" not in text and len(text) < 4096 and os.path.exists(text)


class PairModel:
    """A trained model of source<TAB>target pairs (seq2seq or the lessons' tagger): `translate`,
    `attention`, `evaluate` and `info`, as `charlm translate`, `charlm eval` and `charlm info` do."""

    def __init__(self, path: str, device: Any) -> None:
        from charlm.checkpoints.loading import load_translator

        self.path, self.device = path, device
        self.model, self.meta, self.source_vocab, self.target_vocab = load_translator(path, device)

    def __repr__(self) -> str:
        return f"PairModel({self.path!r})"

    def info(self) -> dict[str, Any]:
        """The checkpoint's metadata, as `charlm info --json` prints it."""
        from charlm.checkpoints.metadata import write

        return write(self.meta)

    @callers_terms(TRANSLATE)
    def translate(self, texts: str | Sequence[str], beam: int = 1, max_length: int | None = None,
                  length_penalty: float = 0.0, unknown: str = "error") -> list[str] | str:
        """The outputs `charlm translate` prints for `texts`, one per input (a str for a str).
        `beam` > 1 is beam search; `max_length` stops an output (default: twice the input's length
        + 10); `unknown` is what to do with characters the model never saw: "error", "skip", "unk".
        The keywords are `charlm translate`'s flags (`charlm.settings.TRANSLATE`), checked by them."""
        from charlm.generation import translation as translate
        from charlm.runtime.device import cpu_threads

        beam, max_length, length_penalty, unknown = checked(TRANSLATE, beam=beam, max_length=max_length,
                                                             length_penalty=length_penalty, unknown=unknown)
        inputs = text_list(texts, "texts")
        with cpu_threads(PAIRS["threads"]):
            outputs = translate.translate(self.model, inputs, self.source_vocab, self.target_vocab, beam, max_length,
                                          length_penalty, unknown)
        return outputs[0] if isinstance(texts, str) else outputs

    @callers_terms(TRANSLATE)
    def attention(self, text: str, unknown: str = "error", output: str | None = None) -> dict[str, Any]:
        """What `charlm translate --attention-plot` draws for `text`: "weights", a tensor
        (output characters + 1, source characters) whose rows sum to 1, with the "source" and
        "output" characters (the output's last is "<eos>") that label it. The output weighed is
        `output`, a translation already made (by beam search, say), or else the greedy one."""
        from charlm.generation import translation as translate
        from charlm.generation.sampling import encode_prefix

        TRANSLATE["unknown"].check(unknown, "unknown")
        one_text(text, "text")
        if output is not None:
            one_text(output, "output")
        output = self.translate(text, unknown=unknown) if output is None else output
        source_ids = encode_prefix(text, self.source_vocab, unknown=unknown, what="input")
        if not source_ids:
            raise UsageError("nothing to plot: the input is empty")
        weights = translate.attention_weights(self.model, source_ids, self.target_vocab.encode(output))
        return {"weights": weights, "source": self.source_vocab.decode(source_ids), "output": [*output, "<eos>"]}

    @callers_terms(TRAIN, TRANSLATE)
    def evaluate(self, pairs_path: PathLike, held_out: bool = False, beam: int = 1, length_penalty: float = 0.0,
                 max_length: int | None = None, skip_bad_lines: bool = False,
                 encoding: str = "utf-8") -> dict[str, Any]:
        """Exact match, character error rate and BLEU on the pairs of a file (with `held_out`,
        those its training held out), as `charlm eval --json` reports them."""
        from charlm.evaluation.reports import score_translator
        from charlm.text.pairs import read_pairs, skipped_message

        if not isinstance(pairs_path, (str, os.PathLike)):
            raise UsageError(f"pairs_path must be a path, got {shown_value(pairs_path)}")
        paths(pairs_path, "pairs_path")
        held_out, skip_bad_lines, encoding = checked(TRAIN, held_out=held_out, skip_bad_lines=skip_bad_lines,
                                                      encoding=encoding)
        beam, length_penalty, max_length = checked(TRANSLATE, beam=beam, length_penalty=length_penalty,
                                                    max_length=max_length)
        pairs, skipped = read_pairs(Path(pairs_path), encoding, skip_bad_lines)
        if line := skipped_message(pairs_path, skipped):
            say(line)
        return score_translator(self.model, self.meta, self.source_vocab, self.target_vocab, self.path, pairs,
                                held_out, beam, length_penalty, max_length, pairs_path)


# `translate` takes `charlm translate`'s decoding options, as their rows declare them.
PairModel.translate.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
     inspect.Parameter("texts", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="str | Sequence[str]"),
     *parameters(for_command(TRANSLATE, "translate"))],
    return_annotation="list[str] | str")

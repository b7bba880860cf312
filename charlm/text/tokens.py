"""Tokens: reading a UTF-8 file in chunks, preprocessing it, splitting it into tokens, and the `Vocab`.

Everything here is standard library only and works on streams of text chunks, so a corpus never
has to be held as one Python string or a list of token strings. Turning tokens into a tensor of ids
is left to `charlm.data.ids`; nothing here knows about torch, models or batches.

    chunks = read_chunks("corpora/timemachine.txt")       # decoded, BOM dropped, CRLF -> \n
    chunks = preprocess_chunks(chunks, "d2l")            # d2l's lower-cased letters and spaces
    counts = count_tokens(chunks, "char")                # Counter of tokens
    vocab = Vocab(counts)                                 # <unk>, then most frequent first
"""

from __future__ import annotations

import codecs
import errno
import json
import os
import re
import stat
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from charlm.errors import CorpusError
from charlm.presets import PREPROCESS_MODES, TOKEN_KINDS

CHUNK_BYTES = 1 << 20  # 1 MiB of the file at a time: bounds each chunk's buffers (tens of MB)
UNK = "<unk>"


# ---------------------------------------------------------------------------------------------
# Reading


def check_readable(path: str | os.PathLike) -> None:
    """Raise a `CorpusError` saying what is wrong if `path` is not a readable regular file. Only
    `os.stat` is asked, so a FIFO is named, never opened (opening one waits for a writer). Whether
    the file is empty is for reading to say: /proc files report a size of 0 and hold text."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise file_error(path, "no such file", "check the path") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise file_error(path, "a loop of symbolic links", "check the path") from None
        raise file_error(path, str(error.strerror or error), "check the path") from None
    if stat.S_ISDIR(mode):
        raise file_error(path, "is a directory", "give a text file")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "a special file")
        raise file_error(path, f"not a regular file ({kind})", "give a text file")
    if not os.access(path, os.R_OK):
        raise file_error(path, "not readable", "check its permissions")


_SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
# Byte-order marks of the encodings whose text is full of NUL bytes, UTF-32's first: its
# little-endian mark starts with UTF-16's.
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def read_chunks(
    path: str | os.PathLike, encoding: str = "utf-8", chunk_bytes: int = CHUNK_BYTES, hasher: Any = None
) -> Iterator[str]:
    """Yield the decoded text of `path` in chunks, as text: a UTF-8 byte-order mark is dropped and
    CRLF / CR line ends become "\\n". Undecodable bytes raise a `CorpusError` naming the byte offset;
    a NUL byte (a binary file) does too, and so do a file with no bytes and a UTF-16 or UTF-32
    byte-order mark read as another encoding (it names the one to pass). A `hasher` (a `hashlib`
    object) is fed every byte read, so the file's content hash comes with no pass of its own."""
    check_readable(path)
    path = os.fspath(path)
    codec = checked_encoding(encoding).name
    decoder = codecs.getincrementaldecoder(codec)("strict")
    pending_cr = False  # a chunk that ended in "\r" may be the first half of "\r\n"
    wide = "16" in codec or "32" in codec
    with open(path, "rb") as file:
        start = file.read(4)
        if not start:
            raise file_error(path, "the file is empty", "give a file with some text in it")
        bom = next((name for mark, name in _WIDE_BOMS if start.startswith(mark)), None)
        if bom and not wide:
            raise file_error(path, f"starts with a {bom.upper()} byte-order mark", f"pass --encoding {bom}")
        # A UTF-8 byte-order mark is not text; `offset` counts the bytes before the current block.
        offset = 3 if codec == "utf-8" and start.startswith(codecs.BOM_UTF8) else 0
        if hasher is not None:
            hasher.update(start[:offset])  # the hash is of the file's bytes, the mark's too
        file.seek(offset)
        while True:
            block = file.read(chunk_bytes)
            final = not block
            if hasher is not None:
                hasher.update(block)
            if b"\0" in block and not wide:
                at = offset + block.index(b"\0")
                raise file_error(path, f"looks like a binary file (NUL byte at offset {at})", "give a text file")
            buffered = len(decoder.getstate()[0])  # bytes held back from the previous block
            try:
                text = decoder.decode(block, final=final)
            except UnicodeDecodeError as error:
                at = max(offset - buffered + error.start, 0)
                raise file_error(path, f"not valid {encoding} at byte offset {at}",
                                 "convert it to UTF-8 or pass --encoding (e.g. --encoding latin-1)") from None
            offset += len(block)
            if pending_cr:
                text = "\r" + text
            pending_cr = text.endswith("\r") and not final
            if pending_cr:
                text = text[:-1]
            if "\r" in text:
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            if text:
                yield text
            if final:
                return


def file_error(path: str | os.PathLike, reason: str, advice: str) -> CorpusError:
    """"PATH: REASON; ADVICE" as a `CorpusError` that keeps the reason apart: a folder's reading
    (`charlm.text.corpus`) skips such a file and says why."""
    return CorpusError(f"{os.fspath(path)}: {reason}; {advice}", reason=reason)


def checked_encoding(encoding: str) -> codecs.CodecInfo:
    """The codec of `encoding`; a name that is none, or not a text encoding, is a `CorpusError`."""
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise CorpusError(f"unknown encoding {encoding!r}; try utf-8 or latin-1") from None
    if not getattr(info, "_is_text_encoding", True):  # base64, rot13, zlib: bytes to bytes, str to str
        raise CorpusError(f"{encoding!r} is not a text encoding; try utf-8 or latin-1")
    return info


# ---------------------------------------------------------------------------------------------
# Preprocessing

_NON_LETTERS = re.compile("[^A-Za-z]+")


def preprocess_chunks(chunks: Iterable[str], mode: str = "none") -> Iterator[str]:
    """Apply a preprocessing mode to a stream of text chunks.

    - "none": the text as it is.
    - "d2l": the d2l book's `read_time_machine`: in each line every run of non-letters becomes one
      space, the line is stripped and lower-cased, and the lines are joined with nothing between.
      On The Time Machine this gives d2l's 170,580 characters.
    """
    if mode == "none":
        yield from chunks
    elif mode == "d2l":
        yield from _d2l_chunks(chunks)
    else:
        raise CorpusError(f"unknown preprocessing {mode!r}; choose one of {', '.join(PREPROCESS_MODES)}")


def preprocess(text: str, mode: str = "none") -> str:
    """`preprocess_chunks` for one string (a prefix, a line typed by a user)."""
    return "".join(preprocess_chunks([text], mode))


def preprocess_prefix(text: str, mode: str = "none") -> str:
    """A prompt preprocessed as its corpus was, but not stripped: with "d2l", "Time " -> "time "."""
    if mode == "d2l":
        return _NON_LETTERS.sub(" ", text).lower()
    preprocess(text, mode)  # checks the mode
    return text


def _d2l_chunks(chunks: Iterable[str]) -> Iterator[str]:
    """d2l's per-line rule (the letter runs of a line, lower-cased, joined by single spaces) applied
    piece by piece, so that a line longer than a chunk is never held whole."""
    started = False  # the current line has given letters
    pending = False  # ... and non-letters came after them: a space, if more letters follow
    for chunk in chunks:
        out = []
        for index, piece in enumerate(chunk.split("\n")):
            if index:
                started = pending = False
            text = _NON_LETTERS.sub(" ", piece)
            letters = text.strip(" ")
            if letters:
                if started and (pending or text[0] == " "):
                    out.append(" ")
                out.append(letters.lower())
                started, pending = True, text[-1] == " "
            elif text:
                pending = started
        if out:
            yield "".join(out)


# ---------------------------------------------------------------------------------------------
# Tokenizers


class Tokenizer:
    """Splits text into tokens and joins tokens back into text.

    "char": every Unicode code point is a token; "word": whitespace-separated words (joined back
    with single spaces, so line breaks are not kept)."""

    def __init__(self, kind: str = "char") -> None:
        if kind not in TOKEN_KINDS:
            raise CorpusError(f"unknown token kind {kind!r}; choose one of {', '.join(TOKEN_KINDS)}")
        self.kind = kind

    def split(self, text: str) -> list[str]:
        return list(text) if self.kind == "char" else text.split()

    def join(self, tokens: Iterable[str]) -> str:
        return ("" if self.kind == "char" else " ").join(tokens)

    def split_chunks(self, chunks: Iterable[str]) -> Iterator[Sequence[str]]:
        """Tokenize a stream of chunks; a word cut by a chunk boundary is kept whole."""
        if self.kind == "char":
            yield from chunks  # a str is a sequence of its characters
            return
        partial = ""
        for chunk in chunks:
            text = partial + chunk
            words = text.split()
            partial = words.pop() if words and not text[-1].isspace() else ""
            if words:
                yield words
        if partial:
            yield [partial]


def count_tokens(chunks: Iterable[str], kind: str = "char") -> Counter:
    """Token frequencies of a stream of text chunks."""
    counts: Counter = Counter()
    for tokens in Tokenizer(kind).split_chunks(chunks):
        counts.update(tokens)
    return counts


# ---------------------------------------------------------------------------------------------
# Vocab


class Vocab:
    """Maps tokens to ids and back.

    Order: `<unk>` (id 0), then the reserved tokens in the order given, then the counted tokens by
    falling frequency, ties broken by the token's code points, so the same counts always give the
    same ids. Tokens rarer than `min_freq`, or past `max_size` entries, are left out and map to
    `<unk>`."""

    def __init__(
        self,
        counts: Mapping[str, int] | None = None,
        min_freq: int = 1,
        reserved: Sequence[str] = (),
        max_size: int | None = None,
    ) -> None:
        specials = [UNK] + [token for token in reserved if token != UNK]
        ranked = sorted((counts or {}).items(), key=lambda item: (-item[1], item[0]))
        kept = [token for token, count in ranked if count >= min_freq and token not in specials]
        if max_size is not None:
            kept = kept[: max(max_size - len(specials), 0)]
        self.itos: list[str] = specials + kept
        self.stoi: dict[str, int] = {token: index for index, token in enumerate(self.itos)}
        self.reserved: tuple[str, ...] = tuple(specials[1:])

    unk_index = 0

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos and self.reserved == other.reserved

    def __getitem__(self, token: str) -> int:
        return self.stoi.get(token, self.unk_index)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.stoi.get(token, self.unk_index) for token in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[index] for index in ids]

    def unknown(self, tokens: Iterable[str]) -> list[str]:
        """The distinct tokens not in the vocab, in order of first appearance."""
        return list(dict.fromkeys(token for token in tokens if token not in self.stoi))

    def extended(self, tokens: Iterable[str]) -> Vocab:
        """This vocab with the `tokens` it lacks added after its own, in the order given: every
        token it has keeps its id."""
        return Vocab.from_dict({"itos": self.itos + [token for token in dict.fromkeys(tokens) if token not in self],
                                "reserved": list(self.reserved)})

    def to_dict(self) -> dict:
        return {"itos": list(self.itos), "reserved": list(self.reserved)}

    @classmethod
    def from_dict(cls, data: Mapping) -> Vocab:
        if not isinstance(data, Mapping):
            raise ValueError("not a charlm vocab")
        itos, reserved = data.get("itos"), data.get("reserved", [])
        if (
            not isinstance(itos, list)
            or not itos
            or itos[0] != UNK
            or not all(isinstance(token, str) for token in itos)
            or len(set(itos)) != len(itos)
            or not isinstance(reserved, list)
            or itos[1 : 1 + len(reserved)] != reserved
        ):
            raise ValueError("not a charlm vocab")
        vocab = cls.__new__(cls)
        vocab.itos = list(itos)
        vocab.stoi = {token: index for index, token in enumerate(itos)}
        vocab.reserved = tuple(reserved)
        return vocab

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        return cls.from_dict(json.loads(text))

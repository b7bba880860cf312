"""Corpus: the text files a corpus is made of, found in the paths a user gives, and their text as
one stream of documents joined by `SEPARATOR`.

    found = find_corpus(["notes/", "extra.txt"], include=["*.md"])    # the candidate files, by name
    chunks = document_chunks(found, "utf-8", "d2l")                  # each preprocessed, then joined
    found.files                   # once read: CorpusFile(path, name, size, sha256, stamp), in order
    found.skipped                 # [(name, why)]: what a folder held that is not text

A file named on the command line is read strictly, as a corpus of one file always was: what is
wrong with it is an error. A folder gives the files `charlm.text.folders.walk` finds in it, in the
order of their sorted paths (hidden files, charlm's own files and links leading out of it left
out). A file reached twice (by a folder and by name, or through a hard link) is read once, the
second named in `skipped`. The first reading of the text hashes each of these
candidates and checks it is text (not empty, no NUL byte, decodable with the encoding) before any
of its text is used: a file that is not is skipped, with its reason, and a folder with no text file
in it is an error. Later readings read the files taken.

Documents are joined by a blank line, "\\n\\n", after each is preprocessed, as nanoGPT-style
corpora are: the model learns a blank line as where one text ends and another may start, and the
separator is text, so a vocab, a checkpoint, `generate` and `eval` need nothing new for it. A
corpus of one file has no separator: its text is what it always was.

The validation split of several files is taken in `VAL_STRETCHES` places (`held_out` says how);
cutting the ids is `charlm.data.ids`'s, as are tokens and the token cache. Standard library only, like
`charlm.text.tokens`, whose reading it uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import stat as stat_module
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from charlm.errors import CorpusError
from charlm.text.folders import printable, walk
from charlm.text.tokens import check_readable, checked_encoding, preprocess_chunks, read_chunks

SEPARATOR = "\n\n"  # between two documents
CHUNK_CHARS = 1 << 18  # small documents are gathered into chunks of about this many characters
HELD_CHARS = 1 << 20  # a file is held whole while it is checked up to this size, and read twice past it
SHOWN = 3  # skipped files named in a message; the rest are counted
VAL_STRETCHES = 20  # the validation split of a corpus of several files is taken in this many places


@dataclass(frozen=True, slots=True)
class CorpusFile:
    path: str  # what is opened
    name: str  # what is shown and recorded: the folder as given, then the path inside it
    size: int | None = None
    sha256: str | None = None  # None for a corpus of one file, hashed as it is tokenized
    stamp: tuple[int, ...] | None = None  # `stamp(path)` before it was first read


# What the first reading found of a candidate: (absolute path, size, SHA-256, why it was skipped or
# None); size and hash are None for what is not a regular file that can be read.
Record = tuple[str, "int | None", "str | None", "str | None"]


@dataclass(frozen=True, slots=True)
class Candidate:
    path: str
    name: str
    root: int  # the index of the path given that it was found in
    strict: bool  # named on the command line: what is wrong with it is an error


@dataclass
class FoundCorpus:
    """The files of a corpus: the candidates `find_corpus` found, and once the text has been read
    (`document_chunks`), the files taken and those skipped."""

    roots: tuple[str, ...]  # the paths as given
    candidates: list[Candidate]
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    files: list[CorpusFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why), in reading order
    records: list[Record] = field(default_factory=list)  # of every candidate, once read
    checked: bool = False  # the candidates have been read: `files` and `skipped` are known

    @property
    def single(self) -> bool:
        """One file named alone: read, tokenized and recorded as a corpus always was."""
        return len(self.roots) == 1 and not os.path.isdir(self.roots[0])

    @property
    def name(self) -> str:
        """The corpus in a few words, as a checkpoint records it: the names of the paths given."""
        return ", ".join(file_name(os.path.normpath(root)) for root in self.roots)

    @property
    def shown(self) -> str:
        """The corpus as messages name it: the paths given."""
        return printable(self.roots[0]) if self.single else ", ".join(printable(os.path.normpath(root))
                                                                       for root in self.roots)

    def identity(self) -> list[dict]:
        """What a run records of its files to notice a change: name, size and SHA-256 of each."""
        return [{"name": file.name, "size": file.size, "sha256": file.sha256} for file in self.files]

    def summary(self) -> str | None:
        """One line on the files of the folders: how many were taken and skipped, the first few
        skipped named with their reason. None when only files were named."""
        if all(not os.path.isdir(root) for root in self.roots) and not self.skipped:
            return None
        line = f"{self.shown}: {_count(len(self.files), 'text file')} taken"
        if self.skipped:
            line += f", {len(self.skipped):,} skipped: {_shown(self.skipped)}"
        return line

    def restore(self, records: list[Record]) -> None:
        """Take what an earlier reading of these very candidates found (their `records`, checked
        to match by the caller): the files taken, stamped now, and those skipped."""
        pairs = list(zip(self.candidates, records))
        self.files = [CorpusFile(candidate.path, candidate.name, size, sha256, stamp(candidate.path))
                      for candidate, (_, size, sha256, why) in pairs if why is None]
        self.skipped += [(candidate.name, why) for candidate, (*_, why) in pairs if why is not None]  # after the walk's
        self.records, self.checked = records, True


def find_corpus(
    paths: Sequence[str | os.PathLike], encoding: str = "utf-8", include: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> FoundCorpus:
    """The candidate files of `paths`, each a file or a folder (see the module docstring), found by
    name: nothing is read yet. One file named alone is checked to be readable, and is the corpus."""
    roots = tuple(os.fspath(path) for path in paths)
    include, exclude = tuple(include), tuple(exclude)
    if not roots:
        raise CorpusError("no corpus given; name a text file or a folder of them")
    found = FoundCorpus(roots, [], include, exclude)
    if found.single:
        check_readable(roots[0])
        found.files, found.checked = [CorpusFile(roots[0], printable(os.path.normpath(roots[0])))], True
        return found
    checked_encoding(encoding)  # a bad --encoding is one error, not a reason to skip every file
    seen: dict[tuple[int, int], int] = {}  # (device, inode) -> the index of the candidate it was found as
    for index, root in enumerate(roots):
        if not os.path.isdir(root):
            _add(found, Candidate(root, printable(os.path.normpath(root)), index, strict=True), seen)
            continue
        before = len(found.candidates), len(found.skipped)
        for path, name in walk(root, include, exclude, found.skipped):
            _add(found, Candidate(path, name, index, strict=False), seen)
        again = any(why.startswith(AGAIN) for _, why in found.skipped[before[1]:])  # its files found already
        if len(found.candidates) == before[0] and not again:
            raise _no_text(root, found.skipped, include or exclude)
    return found


AGAIN = "the same file as "  # a file reached twice: by a folder and by name, or by a hard link


def _add(found: FoundCorpus, candidate: Candidate, seen: dict[tuple[int, int], int]) -> None:
    """Add `candidate` to the corpus, unless the same file (by its device and inode, whatever the
    name or link it is reached by) is in it already: that is read once, and said; strictly if
    either was named on the command line."""
    try:
        info = os.stat(candidate.path)
    except OSError:  # reading it says what is wrong
        found.candidates.append(candidate)
        return
    key = info.st_dev, info.st_ino
    if key not in seen:
        seen[key] = len(found.candidates)
        found.candidates.append(candidate)
        return
    first = found.candidates[seen[key]]
    found.skipped.append((candidate.name, f"{AGAIN}{first.name}, read once"))
    if candidate.strict:
        found.candidates[seen[key]] = dataclasses.replace(first, strict=True)


def _no_text(root: str, skipped: Sequence[tuple[str, str]], globs: Any) -> CorpusError:
    why = f" (skipped: {_shown(skipped)})" if skipped else ""
    advice = ", or change --include / --exclude" if globs else ""
    return CorpusError(f"{root}: no text file in it{why}; give a folder that holds text files{advice}")


def file_name(path: str | os.PathLike) -> str:
    """The name a checkpoint records of a corpus file and compares it by: its base name, `printable`."""
    return printable(os.path.basename(os.fspath(path)))


def stamp(path: str | os.PathLike) -> tuple[int, ...]:
    """What changes when a file is written to or replaced."""
    info = os.stat(path)
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def changed_file(files: Iterable[CorpusFile]) -> CorpusFile | None:
    """The first of `files` whose stamp is not what it was when it was found."""
    for file in files:
        try:
            if stamp(file.path) != file.stamp:
                return file
        except OSError:
            return file
    return None


def document_chunks(
    found: FoundCorpus, encoding: str = "utf-8", preprocess: str = "none", chunk_chars: int = CHUNK_CHARS,
    hasher: Any = None,
) -> Iterator[str]:
    """The text of the corpus: each file read and preprocessed on its own, the documents joined by
    `SEPARATOR`; the one way charlm reads a corpus, of one file or many. A `hasher` (of one file
    named alone, which no first reading hashes) is fed the file's bytes as they are read. The first reading checks the candidates (see the module docstring) and fills
    `found`'s files and skipped once it is read to the end. Small pieces are gathered into chunks
    of about `chunk_chars` characters, so that 10,000 small files cost the tokenizer about as many
    calls as one file of their size."""
    pieces: list[str] = []
    size = 0
    for index, texts in enumerate(_documents(found, encoding, hasher)):
        texts = preprocess_chunks(texts, preprocess)
        for text in itertools.chain((SEPARATOR,), texts) if index else texts:
            if len(text) >= chunk_chars:  # a chunk of a big file goes as it is
                if pieces:
                    yield "".join(pieces)
                    pieces, size = [], 0
                yield text
                continue
            pieces.append(text)
            size += len(text)
            if size >= chunk_chars:
                yield "".join(pieces)
                pieces, size = [], 0
    if pieces:
        yield "".join(pieces)


def _documents(found: FoundCorpus, encoding: str, hasher: Any = None) -> Iterator[Iterable[str]]:
    """The raw text chunks of each file, in order: of the files taken (fed to `hasher`), or on the
    first reading of each candidate that is text, checked whole before any of it is given."""
    if found.checked:
        for file in found.files:
            yield read_chunks(file.path, encoding, hasher=hasher)
        return
    files, skipped, records = [], list(found.skipped), []
    for root, candidates in itertools.groupby(found.candidates, key=lambda candidate: candidate.root):
        taken, passed = len(files), len(skipped)
        for candidate in candidates:
            checked = _checked(candidate, encoding)
            if isinstance(checked, str):
                skipped.append((candidate.name, checked))
                size = file_size(candidate.path)
                records.append((os.path.abspath(candidate.path), size, file_hash(candidate.path, size), checked))
                continue
            file, texts = checked
            files.append(file)
            records.append((os.path.abspath(file.path), file.size, file.sha256, None))
            yield texts
        if len(files) == taken:
            raise _no_text(found.roots[root], skipped[passed:], found.include or found.exclude)
    found.files, found.skipped, found.records, found.checked = files, skipped, records, True


def _checked(candidate: Candidate, encoding: str) -> tuple[CorpusFile, Iterable[str]] | str:
    """A candidate that is text, hashed, and its text; or, unless it is strict, why it is not. The
    text of a file is held until it has been read whole; past `HELD_CHARS` it is read through
    to check it, then given as a second reading."""
    hasher = hashlib.sha256()
    try:
        try:
            before = stamp(candidate.path)
        except OSError:  # what is wrong, read_chunks says first thing, before it opens anything
            before = None
        reading = read_chunks(candidate.path, encoding, hasher=hasher)
        texts: Iterable[str] = []
        held = 0
        for text in reading:
            texts.append(text)
            held += len(text)
            if held > HELD_CHARS:
                for _ in reading:
                    pass
                texts = read_chunks(candidate.path, encoding)
                break
    except CorpusError as error:
        if candidate.strict or error.reason is None:
            raise
        return error.reason
    before = before or stamp(candidate.path)  # it appeared as it was read: the end's stamps catch that
    return CorpusFile(candidate.path, candidate.name, before[2], hasher.hexdigest(), before), texts


def file_size(path: str | os.PathLike) -> int | None:
    """The size of a regular file, or None for anything else (never opened)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size if stat_module.S_ISREG(info.st_mode) else None


def file_digest(path: str | os.PathLike, block_bytes: int = 1 << 22) -> str:
    """The SHA-256 of a file's bytes, as reading hashes them (~1.5 GB/s)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(block_bytes):
            hasher.update(block)
    return hasher.hexdigest()


def file_hash(path: str | os.PathLike, size: int | None) -> str | None:
    """`file_digest` of a regular file (of `file_size` `size`), or None where there is none that
    can be read: a file that is not regular is never opened."""
    if size is None:
        return None
    try:
        return file_digest(path)
    except OSError:
        return None


def records_digest(records: Iterable[Sequence[Any]]) -> str:
    """One SHA-256 of every candidate's record: what a token cache entry checks its files by."""
    return hashlib.sha256(json.dumps([list(record) for record in records]).encode()).hexdigest()


def held_out(documents: int, val_fraction: float) -> str:
    """How the validation split of a corpus of `documents` files is taken (`charlm.data.ids.Corpus.split`),
    in words: of one file, the last part of its text; of several, the last part of each of
    `VAL_STRETCHES` equal stretches of their joined text, so that every part of the corpus is
    validated, not only the files that sort last."""
    share = f"the last {100 * val_fraction:g} %"
    return share if documents == 1 else f"{share} of each of {VAL_STRETCHES} equal stretches"



def corpus_changes(before: Sequence[dict], after: Sequence[dict]) -> list[str]:
    """What changed between two `FoundCorpus.identity()` records, in words ("notes/a.txt
    edited"); nothing when the same contents come in the same order, whatever their names."""
    if [(file.get("size"), file.get("sha256")) for file in before] == [(file["size"], file["sha256"]) for file in after]:
        return []
    old = {file.get("name"): file for file in before}
    new = {file["name"]: file for file in after}
    edited = [name for name in new if name in old and old[name].get("sha256") != new[name]["sha256"]]
    added = [name for name in new if name not in old]
    removed = [name for name in old if name not in new]
    changes = [f"{_count(len(names), 'file')} {what} ({_names(names)})"
               for what, names in (("edited", edited), ("added", added), ("removed", removed)) if names]
    return changes or ["the same files in another order"]


def _count(number: int, what: str) -> str:
    return f"{number:,} {what}{'' if number == 1 else 's'}"


def _names(names: Sequence[str]) -> str:
    return ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN:,} more" if len(names) > SHOWN else "")


def _shown(skipped: Sequence[tuple[str, str]]) -> str:
    """The first few skipped files with their reasons, and how many more."""
    shown = "; ".join(f"{name}: {why}" for name, why in skipped[:SHOWN])
    return shown + (f"; and {len(skipped) - SHOWN:,} more" if len(skipped) > SHOWN else "")

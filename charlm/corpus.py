"""Corpus: the text files a corpus is made of, found in the paths a user gives, and their text as
one stream of documents joined by `SEPARATOR`.

    found = find_corpus(["notes/", "extra.txt"], include=["*.md"])    # hashed, checked to be text
    found.files                   # CorpusFile(path, name, size, sha256, stamp), in reading order
    found.skipped                 # [(name, why)]: what a folder held that is not text
    chunks = document_chunks(found.files, "utf-8", "d2l")           # each preprocessed, then joined

A file named on the command line is read strictly, as a corpus of one file always was: what is
wrong with it is an error. A folder is walked recursively, its files in the order of their sorted
paths, leaving out hidden files and folders (a name starting with "."), files and folders an
`exclude` glob matches and files no `include` glob matches (a glob is matched against the path
inside the folder and against the name). What is left is read once here, to hash it and check it is
text (not empty, no NUL byte, decodable with the encoding); a file that is not is skipped, with its
reason. A folder with no text file in it is an error.

Documents are joined by a blank line, "\\n\\n", after each is preprocessed, as nanoGPT-style
corpora are: the model learns a blank line as where one text ends and another may start, and the
separator is text, so a vocab, a checkpoint, `generate` and `eval` need nothing new for it. A
corpus of one file has no separator: its text is what it always was.

The validation split of several files is taken in `VAL_STRETCHES` places (`held_out` says how);
cutting the ids is `charlm.data`'s, as are tokens and the token cache. Standard library only, like
`charlm.text`, whose reading it uses.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from charlm.errors import CorpusError
from charlm.text import check_readable, checked_encoding, preprocess_chunks, read_chunks

SEPARATOR = "\n\n"  # between two documents
CHUNK_CHARS = 1 << 20  # small documents are gathered into chunks of about this many characters
SHOWN = 3  # skipped files named in a message; the rest are counted
VAL_STRETCHES = 20  # the validation split of a corpus of several files is taken in this many places


@dataclass(frozen=True)
class CorpusFile:
    path: str  # what is opened
    name: str  # what is shown and recorded: the folder as given, then the path inside it
    size: int | None = None
    sha256: str | None = None  # None for a corpus of one file, hashed as it is tokenized
    stamp: tuple[int, ...] | None = None  # `stamp(path)` before it was read here


@dataclass
class FoundCorpus:
    """The files of a corpus, as `find_corpus` found them."""

    roots: tuple[str, ...]  # the paths as given
    files: list[CorpusFile]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why), in reading order
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @property
    def single(self) -> bool:
        """One file named alone: read, tokenized and recorded as a corpus always was."""
        return len(self.roots) == 1 and not os.path.isdir(self.roots[0])

    @property
    def name(self) -> str:
        """The corpus in a few words, as a checkpoint records it: the names of the paths given."""
        return ", ".join(os.path.basename(os.path.normpath(root)) for root in self.roots)

    @property
    def shown(self) -> str:
        """The corpus as messages name it: the paths given."""
        return self.roots[0] if self.single else ", ".join(os.path.normpath(root) for root in self.roots)

    def identity(self) -> list[dict]:
        """What a run records of its files to notice a change: name, size and SHA-256 of each."""
        return [{"name": file.name, "size": file.size, "sha256": file.sha256} for file in self.files]

    def summary(self) -> str | None:
        """One line on the files of the folders: how many were taken and skipped, the first few
        skipped named with their reason. None when only files were named."""
        if all(not os.path.isdir(root) for root in self.roots):
            return None
        line = f"{self.shown}: {_count(len(self.files), 'text file')} taken"
        if self.skipped:
            line += f", {len(self.skipped):,} skipped: {_shown(self.skipped)}"
        return line


def find_corpus(
    paths: Sequence[str | os.PathLike], encoding: str = "utf-8", include: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> FoundCorpus:
    """The text files of `paths`, each a file or a folder (see the module docstring). One file
    named alone is only checked to be readable; every other file is read once, to hash it."""
    roots = tuple(os.fspath(path) for path in paths)
    include, exclude = tuple(include), tuple(exclude)
    if not roots:
        raise CorpusError("no corpus given; name a text file or a folder of them")
    found = FoundCorpus(roots, [], [], include, exclude)
    if found.single:
        check_readable(roots[0])
        found.files.append(CorpusFile(roots[0], os.path.normpath(roots[0])))
        return found
    checked_encoding(encoding)  # a bad --encoding is one error, not a reason to skip every file
    for root in roots:
        if not os.path.isdir(root):
            found.files.append(_scan(root, os.path.normpath(root), encoding, strict=True))
            continue
        taken = len(found.files)
        skipped = len(found.skipped)
        for path, name in _walk(root, include, exclude, found.skipped):
            scanned = _scan(path, name, encoding, strict=False)
            if isinstance(scanned, str):
                found.skipped.append((name, scanned))
            else:
                found.files.append(scanned)
        if len(found.files) == taken:
            why = f" (skipped: {_shown(found.skipped[skipped:])})" if len(found.skipped) > skipped else ""
            globs = ", or change --include / --exclude" if include or exclude else ""
            raise CorpusError(f"{root}: no text file in it{why}; give a folder that holds text files{globs}")
    return found


def _walk(root: str, include: tuple[str, ...], exclude: tuple[str, ...],
          skipped: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """(path, name) of the files under `root` that are not hidden and that the globs choose, in
    the order of their sorted paths inside it; links to folders are named in `skipped`, not followed."""
    shown_root = os.path.normpath(root)
    chosen = []

    def unreadable(error: OSError) -> None:
        skipped.append((_name(shown_root, os.path.relpath(error.filename or root, root)),
                        f"a folder that cannot be read ({error.strerror or error})"))

    for folder, folders, files in os.walk(root, onerror=unreadable):
        inside = os.path.relpath(folder, root)
        inside = "" if inside == "." else inside.replace(os.sep, "/") + "/"
        kept = []
        for name in folders:
            if name.startswith(".") or _matches(inside + name, name, exclude):
                continue
            if os.path.islink(os.path.join(folder, name)):
                skipped.append((_name(shown_root, inside + name), "a link to a folder, not followed"))
                continue
            kept.append(name)
        folders[:] = kept
        for name in files:
            relative = inside + name
            if name.startswith(".") or _matches(relative, name, exclude):
                continue
            if include and not _matches(relative, name, include):
                continue
            chosen.append(relative)
    for relative in sorted(chosen):
        yield os.path.join(root, *relative.split("/")), _name(shown_root, relative)


def _matches(relative: str, name: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(relative, glob) or fnmatch.fnmatchcase(name, glob) for glob in globs)


def _name(root: str, relative: str) -> str:
    return relative if root == "." else f"{root}/{relative}"


def _scan(path: str, name: str, encoding: str, strict: bool) -> CorpusFile | str:
    """The file, hashed and checked to be text as `read_chunks` reads it; or, unless `strict`,
    why it is not."""
    hasher = hashlib.sha256()
    try:
        check_readable(path)
        before = stamp(path)
        for _ in read_chunks(path, encoding, hasher=hasher):
            pass
    except CorpusError as error:
        if strict or error.reason is None:
            raise
        return error.reason
    return CorpusFile(path, name, before[2], hasher.hexdigest(), before)


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
    files: Sequence[CorpusFile], encoding: str = "utf-8", preprocess: str = "none", chunk_chars: int = CHUNK_CHARS,
) -> Iterator[str]:
    """The text of `files`, each read and preprocessed on its own, joined by `SEPARATOR`. Small
    pieces are gathered into chunks of about `chunk_chars` characters, so that 10,000 small files
    cost the tokenizer about as many calls as one file of their size."""
    pieces: list[str] = []
    size = 0
    for index, file in enumerate(files):
        texts = preprocess_chunks(read_chunks(file.path, encoding), preprocess)
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


def held_out(documents: int, val_fraction: float) -> str:
    """How the validation split of a corpus of `documents` files is taken (`charlm.data.Corpus.split`),
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

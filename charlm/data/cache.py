"""Token cache: a corpus's token ids kept in a folder (`TokenCache`), so the next run on the same text
starts at once; checked against the text on disk and against its own digest before it is trusted.

It knows nothing about tokenizing (`charlm.data.ids`) or about batches.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

from charlm.data.ids import Corpus, content_digest
from charlm.errors import CharlmError
from charlm.text.corpus import FoundCorpus, file_digest, file_hash, file_name, file_size, records_digest
from charlm.text.tokens import Vocab

CACHE_FOLDER = ".charlm-cache"


CACHE_KIND = "token-ids"


CACHE_NAME_CHARS = 100  # of the corpus name, in its cache entry's name


def default_cache_dir(path: str | os.PathLike) -> str:
    """`.charlm-cache/` beside the corpus."""
    return os.path.join(os.path.dirname(os.path.abspath(path)), CACHE_FOLDER)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TokenCache:
    """The token ids of one corpus under one set of tokenization settings, kept in a folder so that
    the next run on the same text skips reading and tokenizing it.

    The entry is `<folder>/<corpus name>.<key>.safetensors`, the key hashing the corpus's absolute
    path and the settings, so re-tokenizing an edited file replaces its entry instead of piling up
    another (the name part is cut to `CACHE_NAME_CHARS`, so a long corpus name still has an entry).
    The entry holds the ids (memory-mapped when loaded), the vocab, the corpus's size and SHA-256,
    and a SHA-256 of the ids and vocab themselves: it is used only when the file on disk has that
    size and hash, so an edited file is noticed (a hit costs one quick read to hash it), and only
    when the entry's own content hashes right and every id is inside the vocab, so a damaged or
    tampered entry is rebuilt (said on stderr) instead of trained on. A folder that cannot be
    written, or is full, costs the cache, never the run: one line on stderr says so. Entries are
    written atomically, so processes sharing a folder never read a part.

    A corpus of several files (a `FoundCorpus`) is keyed by the paths given and the --include /
    --exclude globs. Its entry holds the size of every candidate file, why those skipped were, and
    one SHA-256 of every candidate's absolute path, size, SHA-256 and skip: an added, removed or
    edited file replaces the entry (a hit costs a stat of each file and one read to hash it, as
    for one file; a file of another size is seen from the stat, before anything is read).
    """

    def __init__(self, folder: str | os.PathLike, corpus: str | os.PathLike | FoundCorpus,
                 settings: dict[str, Any]) -> None:
        self.found = corpus if isinstance(corpus, FoundCorpus) else None
        if self.found is not None:
            self.source = self.size = None
            roots = [os.path.abspath(root) for root in self.found.roots]
            keyed = {"sources": roots, "include": list(self.found.include), "exclude": list(self.found.exclude),
                     **settings}
            name = file_name(roots[0]) + (f"+{len(roots) - 1}" if len(roots) > 1 else "")
        else:
            self.source = os.path.abspath(corpus)
            keyed = {"source": self.source, **settings}
            name = file_name(self.source)
            self.size = os.path.getsize(self.source) if os.path.isfile(self.source) else None
        key = _digest(json.dumps(keyed, sort_keys=True).encode())[:16]
        self.path = os.path.join(os.fspath(folder), f"{name[:CACHE_NAME_CHARS]}.{key}.safetensors")

    def load(self) -> Corpus | None:
        """The cached corpus, or None when there is no sound entry for this very content."""
        from charlm.checkpoints import files as checkpoint  # the one home of safetensors

        try:
            meta = checkpoint.read_metadata(self.path)
            if meta.get("kind") != CACHE_KIND or not self._same_source(meta):
                return None
        except (CharlmError, OSError, KeyError, TypeError, ValueError):  # missing, stale or foreign
            return None
        try:
            tensors, meta = checkpoint.load(self.path, kind=CACHE_KIND)
            ids, vocab = tensors["ids"], Vocab.from_dict(meta["vocab"])
            if ids.dim() != 1 or ids.is_floating_point() or len(ids) == 0:
                raise ValueError("not a tensor of token ids")
            if meta["content_sha256"] != content_digest(ids, vocab):
                raise ValueError("its content does not match its checksum")
            if int(ids.min()) < 0 or int(ids.max()) >= len(vocab):
                raise ValueError("ids outside its vocab")
            if self.found is not None:
                self.found.restore(self.records)
            return Corpus(ids, vocab, meta["tokens"], meta["preprocess"], cached=True,
                          documents=len(self.found.files) if self.found is not None else 1,
                          sha256=meta["source"]["sha256"] if self.found is None else None)
        except (CharlmError, OSError, KeyError, TypeError, ValueError, RuntimeError) as error:
            print(f"charlm: note: the token cache {self.path} is damaged ({error}); reading the text again",
                  file=sys.stderr)
            return None

    def _same_source(self, meta: dict[str, Any]) -> bool:
        """Whether the entry was made from the very files to read now: the same sizes (nothing is
        read when one differs), then the same hashes."""
        if self.found is None:
            source = meta["source"]
            return source["size"] == self.size and source["sha256"] == file_digest(self.source)
        entry, candidates = meta["files"], self.found.candidates
        sizes = [file_size(candidate.path) for candidate in candidates]
        if entry["sizes"] != sizes:
            return False
        skipped = entry["skipped"]
        records = [(os.path.abspath(candidate.path), size, file_hash(candidate.path, size), skipped.get(str(index)))
                   for index, (candidate, size) in enumerate(zip(candidates, sizes))]
        if records_digest(records) != entry["digest"]:
            return False
        self.records = records
        return True

    def store(self, corpus: Corpus, sha256: str) -> None:
        """Keep `corpus`, read from the file whose bytes hash to `sha256` (or from the files its
        `FoundCorpus` records)."""
        from charlm.checkpoints import files as checkpoint

        if self.found is not None:  # sizes to tell a change before reading, a digest of every record
            records = self.found.records
            source = {"files": {"sizes": [size for _, size, _, _ in records], "digest": records_digest(records),
                                "skipped": {str(index): why for index, (*_, why) in enumerate(records) if why is not None}}}
        else:
            source = {"source": {"name": file_name(self.source), "size": self.size, "sha256": sha256}}
        meta = {"kind": CACHE_KIND, **source, "vocab": corpus.vocab.to_dict(), "tokens": corpus.tokens,
                "preprocess": corpus.preprocess, "content_sha256": content_digest(corpus.ids, corpus.vocab)}
        try:
            checkpoint.save(self.path, {"ids": corpus.ids}, meta)
        except (OSError, CharlmError) as error:  # unwritable, full, or a vocab too big for a header
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            print(f"charlm: note: cannot write the token cache {self.path} ({reason}); "
                  "going on without it (choose another --cache-dir, or --no-cache)", file=sys.stderr)

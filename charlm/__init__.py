"""charlm: character-level language models and string-to-string models on recurrent networks.

Pipeline, one module each: text (tokenizers, Vocab) -> data (ids, batches) -> model / cells /
kernels -> trainer -> checkpoint -> generate -> cli. Importing the package imports no torch: the
Python API (`charlm.train`, `charlm.load`, `charlm.stats`; `charlm.api`) is imported when first used.

    import charlm
    run = charlm.train("corpora/timemachine.txt", preprocess="d2l", max_time=120)
    print(charlm.load(run.checkpoint).generate("time ", length=200, seed=1))
"""

from __future__ import annotations

from typing import Any

from charlm.errors import CharlmError

__version__ = "0.1.0"
__all__ = ["CharlmError", "PairModel", "Run", "TextModel", "load", "stats", "train"]

_API = {"train", "load", "stats", "Run", "TextModel", "PairModel"}


def __getattr__(name: str) -> Any:
    """The API's names, from `charlm.api` when first asked for (it imports torch when it runs)."""
    if name in _API:
        from charlm import api

        return getattr(api, name)
    raise AttributeError(f"module 'charlm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})

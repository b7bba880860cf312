"""charlm: character-level language models and string-to-string models on recurrent networks.

    import charlm
    run = charlm.train("corpora/timemachine.txt", preprocess="d2l", max_time=120)
    print(charlm.load(run.checkpoint).generate("time ", length=200, seed=1))

Importing the package imports no torch: the Python API (`charlm.train`, `charlm.load`,
`charlm.stats`; `charlm.api`) is imported when first used. The tree is the pipeline, upstream
first; a module imports only from those above it (tests/guarantees/test_layout.py keeps it so):

    errors                   the errors a user can cause, each shown as one line
    presets                  the choices and the default values, by task and architecture
    settings                 every setting declared once, as rows; the tables by name
    settings.rows            what a row is: type, default, bounds in words, help, commands; its check
    models.registry          the architectures by task and name (the settings' choices)
    settings.training        the rows of charlm train, stats and what they share
    settings.generation      the rows of generate, translate and serve, and of the server's requests
    settings.export          the rows of charlm export
    text.tokens              files read in chunks, preprocessing, tokenizers, the Vocab
    text.corpus              the files of a corpus found in folders, read as one stream of documents
    text.folders             a folder's files for a corpus: no recursion, charlm's own files and outward links left out
    text.pairs               source<TAB>target files, their split and vocabs
    runtime.device           the device, CPU threads, seeds and autocast
    runtime.cores            the cores free now: affinity, quota, others' use; threads kept at them
    runtime.files            files written atomically, temporaries, a run's lock
    runtime.processes        stop signals, and the processes of a torchrun (World)
    runtime.measured         choices measured on this machine (bf16, the recurrent path), kept
    checkpoints.files        the safetensors format: headers checked, never pickle
    checkpoints.metadata     a checkpoint's metadata typed: one writer, one reader
    data.ids                 tokens -> a tensor of ids (Corpus), and the one way to count tokens
    data.cache               the token cache
    data.loading             DataConfig, and a corpus loaded as ids through the cache
    data.batches             ids -> batches for language models and pairs
    models.state             the states a model carries between batches and steps
    models.protocol          the model contract (a Protocol) and its hooks' defaults
    models.cells             the recurrent cells from their equations (the lessons')
    models.kernels           fast CPU forward and backward for torch's recurrent layers
    models.recurrent_layers  which path runs a recurrent layer, exactly and fastest
    models.recurrent         the recurrent language model (RNN, GRU, LSTM)
    models.recurrent_stepper its single steps for generation, in fp32 or bf16
    models.transformer       the causal transformer, its key/value cache and its stepper
    models.minrnn            minGRU and minLSTM: trained by a parallel scan, generated step by step
    models.ensemble          --ensemble N: members trained side by side, predicting with their mean
    models.seq2seq           the pair models: the lessons' tagger, the encoder-decoder
    checkpoints.loading      models rebuilt from checkpoints; a folder's newest
    generation.request       one generation request, frozen, from any door to the sampler
    generation.continuation  a request's new text by sample: gaps, stop texts, log-probabilities, ends
    generation.sampling      sampling text: the prefix pass, steps, penalties, filters, the printed pieces
    generation.translation   greedy and beam search for pair models
    evaluation.scores        exact match, character error rate, BLEU
    evaluation.reports       the loss, perplexity and bits per token; a checkpoint's scores on a file
    evaluation.inside        per token: the surprise, what the model expected, its units' activations, attention
    evaluation.inside_page   that view as data and as one self-contained HTML page (inside_view.js: its script)
    training.optimization    TrainConfig, the optimizer, the learning rate of each step, --ema
    training.recipe          the settings left out, fitted to the text's size and --max-time
    training.pace            one model's pace here now, for the recipe's count of models in --max-time
    training.time_budget     the schedule fitted to --max-time, and how often a run evaluates
    training.run_files       a run's files: names, lock, what may be replaced, the metrics file
    training.resume          the resume file, written and checked whole
    training.progress        the progress bar or lines, an evaluation's line and sample
    training.watch           the held-out loss watched: over-fitting named, --early-stop
    training.sharing         torchrun's share of each batch
    training.trainer         the loop
    training.setup           a run assembled from a corpus and settings (data, model, metadata)
    training.launch          settings -> a trained run, for the CLI and the API alike
    plot                     loss curves and attention maps (matplotlib)
    arguments                the API's arguments checked by their rows and kinds; errors in the caller's terms
    trained                  trained models for a program: TextModel, PairModel
    api                      the Python API: train, load, stats
    serve.fields             a request body's fields read once, with their bounds
    serve.chat               a conversation written as text by a chat template
    serve.openai_requests    OpenAI's completion and chat bodies read into Requests
    serve.batcher            generations of one model stepped together as one batch
    serve.streaming          text from the batcher's thread to a request, as server-sent events
    serve.jobs               a request's generations on a batcher: slots, waiting, pieces to stream
    serve.http               a JSON body read, an answer written, errors in either dialect
    serve.guards             who may ask: the Host named, the API key shown
    serve.catalog            the models a server serves, by name
    serve.openai_routes      OpenAI's dialect: models, completions, chat, as objects and chunks
    serve.app                the HTTP API in both dialects and the playground (Starlette)
    serve.server             the server on a socket (uvicorn)
    export                   a trained model outside charlm and torch
    export.steps             a model's one-step function as a graph of tensors; the transformer's fixed window
    export.onnx              the ONNX file and its metadata, written, and checked when read back
    export.web               a static page that generates in the browser (ONNX Runtime Web, no network)
    cli                      the charlm command: the group, shared options, printing
    cli.train, cli.generate, cli.translate, cli.evaluate, cli.inside, cli.inspect, cli.plot, cli.serve,
    cli.export
                             one module per command
    __main__                 python -m charlm
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

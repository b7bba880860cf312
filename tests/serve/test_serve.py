"""`charlm serve`'s API through Starlette's test client (and, where a socket matters, a real
uvicorn server on loopback): every field and bad value, streaming, the text of `charlm generate`
alone and batched, the bounds, and that a request reaches no file."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import threading
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="charlm[serve] is not installed")
pytest.importorskip("httpx", reason="Starlette's test client needs httpx")

with warnings.catch_warnings():  # Starlette 1.x would rather have httpx2, which is not on PyPI's index here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

import charlm  # noqa: E402
from charlm.checkpoints.files import read_metadata  # noqa: E402
from charlm.generation.request import Request, Sampling  # noqa: E402
from charlm.checkpoints.metadata import describe  # noqa: E402
from charlm.serve.app import create_app  # noqa: E402
from charlm.serve.batcher import Batcher, Generation  # noqa: E402
from charlm.serve.catalog import load_catalog  # noqa: E402
from charlm.serve.fields import Limits  # noqa: E402
from charlm.serve.server import running  # noqa: E402
from charlm.settings import GENERATE  # noqa: E402
from tests.conftest import TINY_KEYWORDS, TINY_TEXT, run_cli  # noqa: E402

TINY = TINY_KEYWORDS
PAIRS_TEXT = "".join(f"{word}\t{word[::-1]}\n" for word in
                     ["abc", "bca", "cab", "aab", "bba", "cca", "ab", "ba", "ca", "abca", "bcab", "cabc"])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A folder with a tiny language model (and its metrics) and a tiny pair model, trained here."""
    folder = tmp_path_factory.mktemp("serve")
    (folder / "tiny.txt").write_text(TINY_TEXT, encoding="utf-8")
    (folder / "rev.tsv").write_text(PAIRS_TEXT, encoding="utf-8")
    charlm.train(folder / "tiny.txt", **TINY, max_steps=20, eval_every=10, out=folder / "models" / "tiny.safetensors")
    charlm.train(folder / "rev.tsv", hidden_size=16, embedding_size=8, batch_size=4, epochs=2, quiet=True,
                 out=folder / "models" / "rev.safetensors")
    charlm.train(folder / "tiny.txt", **TINY, tokens="word", max_steps=5, out=folder / "models" / "words.safetensors")
    return folder / "models"


@pytest.fixture(scope="module")
def catalog(models):
    return load_catalog([str(models)])


@pytest.fixture(scope="module")
def client(catalog):
    with TestClient(create_app(catalog), raise_server_exceptions=False) as client:
        yield client


def post(client, path: str, body: object, **options):
    return client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"}, **options)


def events(text: str) -> list[tuple[str, dict]]:
    """(event name, data) of each server-sent event."""
    found = []
    for block in text.split("\n\n"):
        if block:
            lines = dict(line.split(": ", 1) for line in block.split("\n"))
            found.append((lines.get("event", "message"), json.loads(lines["data"])))
    return found


def cli_text(runner, models: Path, *options: str) -> str:
    return run_cli(runner, "generate", "--checkpoint", models / "tiny.safetensors", *options).stdout


# ---------------------------------------------------------------------------------------------
# What is served


def test_models_lists_each_checkpoint_with_what_charlm_info_says(client, models):
    listed = client.get("/v1/models").json()["models"]
    assert [(model["name"], model["task"], model["checkpoint"]) for model in listed] == [
        ("rev", "translate", "rev.safetensors"), ("tiny", "lm", "tiny.safetensors"), ("words", "lm", "words.safetensors")]
    for model in listed:
        path = models / model["checkpoint"]
        assert {key: value for key, value in model.items() if key not in ("name", "checkpoint")} == \
            describe(read_metadata(path))
        assert str(models) not in json.dumps(model)  # the file's name, not where it lives
    assert listed[1]["vocab_sizes"]["vocab_size"] == len(charlm.load(models / "tiny.safetensors").vocab)
    assert listed[1]["training"]["steps"] == 20


def test_two_checkpoints_of_one_name_get_two_names(models, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(models / "tiny.safetensors", other / "tiny.safetensors")
    names = list(load_catalog([str(models / "tiny.safetensors"), str(other), str(models / "tiny.safetensors")]))
    assert names == ["tiny", "tiny-2"]


def test_metrics_give_a_models_loss_curve(client, models, tmp_path):
    points = client.get("/v1/models/tiny/metrics").json()["points"]
    assert [point["step"] for point in points] == [10, 20]
    assert all(isinstance(point["val_loss"], float) for point in points)
    shutil.copy(models / "tiny.safetensors", tmp_path / "bare.safetensors")  # no metrics beside it
    with TestClient(create_app(load_catalog([str(tmp_path / "bare.safetensors")]))) as bare:
        shown = bare.get("/v1/models/bare/metrics").json()
    assert shown["points"] == [] and "no evaluations" in shown["note"]


def test_the_page_and_its_script_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/playground.js"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere: works offline
    assert client.get("/playground.css").headers["content-type"].startswith("text/css")


# ---------------------------------------------------------------------------------------------
# Generating: the text of `charlm generate`


@pytest.mark.parametrize("options", [
    {"prefix": "the ", "length": 60, "seed": 0},
    {"prefix": "time", "length": 40, "seed": 7, "temperature": 0.7, "top_k": 5},
    {"prefix": "his ", "length": 50, "seed": 123456789, "top_p": 0.8, "temperature": 1.3},
    {"prefix": "", "length": 30, "seed": 3},
    {"prefix": "grey", "length": 0, "seed": 1},
    {"prefix": "a ", "length": 25, "seed": 5, "greedy": True},
    {"prefix": "and ", "length": 30, "seed": 2, "num_samples": 3},
], ids=["plain", "temperature-top-k", "top-p", "no-prefix", "length-0", "greedy", "three-samples"])
def test_generate_gives_the_text_of_charlm_generate(client, runner, models, options):
    answer = post(client, "/v1/generate", options)
    assert answer.status_code == 200, answer.text
    samples = answer.json()["samples"]
    flags = [f"--{name.replace('_', '-')}" if value is True else f"--{name.replace('_', '-')}={value}"
             for name, value in options.items()]
    assert "\n\n".join(samples) + "\n" == cli_text(runner, models, *flags)
    assert answer.json()["model"] == "tiny" and answer.json()["seed"] == options["seed"]


def test_a_word_model_gives_the_text_of_charlm_generate(client, runner, models):
    """Words are joined by a space, also after the prefix, batched or not."""
    for options in ({"prefix": "the time", "length": 12, "seed": 5}, {"prefix": "", "length": 8, "seed": 6},
                    {"prefix": "his grey eyes", "length": 10, "seed": 7, "num_samples": 2}):
        samples = post(client, "/v1/generate", {"model": "words", **options}).json()["samples"]
        printed = run_cli(runner, "generate", "--checkpoint", models / "words.safetensors",
                          *(f"--{name.replace('_', '-')}={value}" for name, value in options.items())).stdout
        assert "\n\n".join(samples) + "\n" == printed
        streamed = events(post(client, "/v1/generate", {"model": "words", **options, "stream": True}).text)
        assert "".join(data["text"] for name, data in streamed if name == "message" and data["sample"] == 0) == \
            samples[0]


def test_a_stream_is_the_sample_in_pieces_then_done(client):
    body = {"model": "tiny", "prefix": "the ", "length": 80, "seed": 4}
    whole = post(client, "/v1/generate", body).json()["samples"]
    streamed = post(client, "/v1/generate", {**body, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    found = events(streamed.text)
    assert found[-1] == ("done", {"model": "tiny", "seed": 4})
    assert found[0][1] == {"sample": 0, "text": "the "}  # the prefix, alone
    assert "".join(data["text"] for name, data in found[:-1]) == whole[0]
    several = events(post(client, "/v1/generate", {**body, "num_samples": 2, "stream": True}).text)
    texts = ["".join(data["text"] for _, data in several[:-1] if data["sample"] == sample) for sample in (0, 1)]
    assert texts == post(client, "/v1/generate", {**body, "num_samples": 2}).json()["samples"]


def test_without_a_seed_one_is_drawn_and_given_back(client):
    first = post(client, "/v1/generate", {"prefix": "the ", "length": 40}).json()
    again = post(client, "/v1/generate", {"prefix": "the ", "length": 40, "seed": first["seed"]}).json()
    assert again["samples"] == first["samples"]


@pytest.fixture(scope="module")
def wider(models):
    """A 2x128 LSTM (one step of training): matrix products of the sizes that real models have."""
    run = charlm.train(models.parent / "tiny.txt", hidden_size=128, num_layers=2, embedding_size=32, max_steps=1,
                       batch_size=4, seq_len=8, quiet=True, out=models.parent / "wider" / "wider.safetensors")
    return load_catalog([str(run.checkpoint)])


@pytest.fixture(scope="module")
def transformer(models):
    """A transformer of context 8: its caches join only at equal lengths, and fill and are halved."""
    run = charlm.train(models.parent / "tiny.txt", model="transformer", num_layers=2, num_heads=2, embedding_size=16,
                       seq_len=8, batch_size=4, max_steps=5, quiet=True,
                       out=models.parent / "transformer" / "transformer.safetensors")
    return load_catalog([str(run.checkpoint)])


@pytest.mark.parametrize("name", ["tiny", "wider", "transformer"])
def test_requests_stepped_as_one_batch_give_the_text_they_give_alone(catalog, wider, transformer, name):
    """Many requests at once (different prefixes, lengths, sampling, samples per request) are
    stepped together, and each still gets exactly the text `TextModel.generate` gives it alone."""
    model = {**catalog, **wider, **transformer}[name].model
    asks = [dict(prefix=prefix, length=length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                 num_samples=num_samples)
            for seed, (prefix, length, temperature, top_k, top_p, num_samples) in enumerate([
                ("the ", 120, 1.0, 0, 1.0, 1), ("his ", 90, 0.8, 0, 1.0, 2), ("", 150, 1.2, 4, 1.0, 1),
                ("time", 60, 1.0, 0, 0.7, 3), ("a", 200, 0.5, 10, 0.9, 1), ("grey eyes", 30, 1.0, 0, 1.0, 4),
                ("shone", 110, 1.5, 0, 1.0, 1), ("was ", 80, 0.9, 3, 0.95, 2)] * 2)]
    batcher = Batcher(model.model, model.vocab, model.meta["tokens"])
    texts = [[""] * ask["num_samples"] for ask in asks]
    ended = [threading.Event() for _ in asks]
    for index, ask in enumerate(asks):
        def on_text(sample, piece, index=index):
            texts[index][sample] += piece
        prefix_ids = model.vocab.encode(list(ask["prefix"]))
        batcher.submit(Generation(Request.from_fields(ask), prefix_ids, on_text,
                                  lambda failure, index=index: ended[index].set()))
    assert all(event.wait(60) for event in ended)
    batcher.close()
    # They were stepped together; the transformer's caches join only at the same length, so its
    # requests, which arrive at other positions, step in groups of their own rows.
    assert batcher.largest_batch > (20 if name != "transformer" else 1)
    for ask, text in zip(asks, texts):
        alone = model.generate(**ask, precision="fp32")  # the batcher's, as create_app makes it
        assert text == ([alone] if ask["num_samples"] == 1 else alone), ask


def test_a_batcher_with_no_threads_fixed_steps_few_rows_on_one_thread_and_a_batch_on_the_cores_free(catalog):
    """With no --threads, a step of fewer than SPLIT_ROWS rows runs on one thread and a larger
    batch's on the cores the shared count says are free; the text is the same either way."""
    import torch

    from charlm.serve.batcher import SPLIT_ROWS

    class Cores:  # two cores free, whoever asks
        def __init__(self) -> None:
            self.said: list[bool] = []

        def share(self, worker: object, working: bool) -> int:
            self.said.append(working)
            return 2

    model, cores = catalog["tiny"].model, Cores()
    batcher = Batcher(model.model, model.vocab, model.meta["tokens"], threads=None, cores=cores)
    seen, step = [], batcher.step
    batcher.step = lambda ids, state: seen.append((ids.shape[0], torch.get_num_threads())) or step(ids, state)
    for rows in (1, SPLIT_ROWS):
        texts, done = [""] * rows, threading.Event()
        batcher.submit(Generation(Request(length=30, seed=5, num_samples=rows), model.vocab.encode(list("the ")),
                                  lambda sample, piece: texts.__setitem__(sample, texts[sample] + piece),
                                  lambda failure: done.set()))
        assert done.wait(30)
        alone = model.generate("the ", length=30, seed=5, num_samples=rows, precision="fp32")
        assert texts == ([alone] if rows == 1 else alone)
    batcher.close()
    assert {threads for rows, threads in seen if rows < SPLIT_ROWS} == {1}
    assert {threads for rows, threads in seen if rows >= SPLIT_ROWS} == {2}
    assert False in cores.said and True in cores.said  # working, and resting between the requests


def test_serve_shares_the_cores_free_unless_threads_are_fixed(runner, models, monkeypatch):
    from charlm.runtime.cores import FreeCores
    from charlm.serve import server

    apps = []
    monkeypatch.setattr(server, "serve_forever", lambda app, sock, on_stop: apps.append(app))
    run_cli(runner, "serve", models / "tiny.safetensors", "--port", "0", "--precision", "fp32")
    batcher = apps[0].state.batchers["tiny"]
    assert batcher.threads is None and isinstance(batcher.cores, FreeCores)
    run_cli(runner, "serve", models / "tiny.safetensors", "--port", "0", "--precision", "fp32", "--threads", "2")
    batcher = apps[1].state.batchers["tiny"]
    assert batcher.threads == 2 and batcher.cores is None


def test_a_bf16_batcher_gives_the_text_of_generate_in_bf16(wider):
    """`--precision bf16`: a lone request gets the text `charlm generate --precision bf16` gives."""
    model = wider["wider"].model
    batcher = Batcher(model.model, model.vocab, model.meta["tokens"], precision="bf16")
    text, done = [""], threading.Event()
    batcher.submit(Generation(Request(length=80, sampling=Sampling(0.9), seed=4), model.vocab.encode(list("the ")),
                              lambda sample, piece: text.__setitem__(0, text[0] + piece), lambda failure: done.set()))
    assert done.wait(60)
    batcher.close()
    assert batcher.precision == "bf16" and batcher.note is None
    assert text[0] == model.generate("the ", length=80, temperature=0.9, seed=4, precision="bf16")


def test_serve_decides_its_precision_once_for_one_request_and_a_full_batch(runner, models, monkeypatch):
    from charlm.runtime import measured as tuning
    from charlm.serve import server
    from charlm.serve.batcher import MEASURED_ROWS

    measured = []
    monkeypatch.setattr(tuning, "bf16_capable", lambda: True)
    monkeypatch.setattr(tuning, "MIN_GENERATION_WORK", 0)
    monkeypatch.setattr(tuning, "_probe", lambda model, rows, device: measured.append(rows) or
                        ({"fp32": 2e-3, "bf16": 1e-3}, 0.0))
    apps = []
    monkeypatch.setattr(server, "serve_forever", lambda app, sock, on_stop: apps.append(app))
    printed = run_cli(runner, "serve", models / "tiny.safetensors", "--port", "0")
    assert measured == list(MEASURED_ROWS) and apps[0].state.batchers["tiny"].precision == "bf16"
    assert "tiny: note: generating in bf16: a step of 1 row measured 2000 µs in fp32" in printed.stderr
    run_cli(runner, "serve", models / "tiny.safetensors", "--port", "0", "--precision", "fp32")
    assert apps[1].state.batchers["tiny"].precision == "fp32" and len(measured) == len(MEASURED_ROWS)


def test_states_that_refuse_to_join_step_one_by_one(catalog, monkeypatch):
    """A state class whose `join` raises ValueError (a cache of another length) costs batching,
    not correctness."""
    from charlm.models.state import RecurrentState

    model = catalog["tiny"].model
    monkeypatch.setattr(RecurrentState, "join", classmethod(lambda cls, states: (_ for _ in ()).throw(ValueError())))
    batcher = Batcher(model.model, model.vocab, model.meta["tokens"])
    texts, done = ["", ""], [threading.Event(), threading.Event()]
    for index, seed in enumerate((1, 2)):
        batcher.submit(Generation(Request(length=50, seed=seed), model.vocab.encode(list("the ")),
                                  lambda sample, piece, index=index: texts.__setitem__(index, texts[index] + piece),
                                  lambda failure, index=index: done[index].set()))
    assert all(event.wait(30) for event in done)
    batcher.close()
    assert texts == [model.generate("the ", length=50, seed=seed) for seed in (1, 2)]



@pytest.mark.parametrize(("name", "value"), [("temperature", 0.5), ("top_k", 3), ("top_p", 0.6), ("greedy", True)])
def test_requests_that_differ_in_one_sampling_field_draw_their_own_text_when_batched(runner, models, catalog, name,
                                                                                      value):
    """The batcher draws by each request's whole `Sampling`: two requests alike but for one of its
    fields (the same prefix and seed), stepped together, each get the text `charlm generate` prints
    for their options; none is drawn with the other's, whatever field a new option adds."""
    from dataclasses import fields, replace

    assert name in {field.name for field in fields(Sampling)}
    model = catalog["tiny"].model
    plain = Request(prefix="the ", length=40, seed=3)
    changed = replace(plain, sampling=replace(plain.sampling, **{name: value}))
    batcher = Batcher(model.model, model.vocab, model.meta["tokens"])
    texts, done = ["", ""], [threading.Event(), threading.Event()]
    for index, request in enumerate((plain, changed)):
        batcher.submit(Generation(request, model.vocab.encode(list(request.prefix)),
                                  lambda sample, piece, index=index: texts.__setitem__(index, texts[index] + piece),
                                  lambda failure, index=index: done[index].set()))
    assert all(event.wait(30) for event in done)
    batcher.close()
    assert batcher.largest_batch == 2  # stepped as one batch
    flag = GENERATE[name].option
    options = ("--prefix", "the ", "--length", "40", "--seed", "3", "--precision", "fp32")
    assert texts[0] + "\n" == cli_text(runner, models, *options)
    assert texts[1] + "\n" == cli_text(runner, models, *options, *([flag] if value is True else [flag, str(value)]))
    assert texts[0] != texts[1]


# ---------------------------------------------------------------------------------------------
# What a request may not ask


@pytest.mark.parametrize(("body", "words"), [
    ({"length": "10"}, "length must be a whole number"),
    ({"length": True}, "length must be a whole number"),
    ({"length": 1.0}, "length must be a whole number"),
    ({"length": -1}, "length must be from 0"),
    ({"length": 2001}, "length must be from 0 to 2,000"),
    ({"num_samples": 0}, "num_samples must be from 1"),
    ({"num_samples": 33}, "num_samples must be from 1 to 32"),
    ({"temperature": -1}, "temperature must be at least 0"),
    ({"temperature": "hot"}, "temperature must be a number"),
    ({"top_k": -1}, "top_k must be from 0"),
    ({"top_k": 2.5}, "top_k must be a whole number"),
    ({"top_p": 0}, "top_p must be above 0 and at most 1"),
    ({"top_p": 1.5}, "top_p must be above 0 and at most 1"),
    ({"seed": 1.5}, "seed must be a whole number"),
    ({"seed": 2**64}, "seed must be from"),
    ({"greedy": 1}, "greedy must be true or false"),
    ({"stream": "yes"}, "stream must be true or false"),
    ({"unknown": "ignore"}, "unknown must be one of error, skip, unk"),
    ({"prefix": 5}, "prefix must be a string"),
    ({"prefix": "x" * 4001}, "prefix is 4,001 characters long; at most 4,000"),
    ({"prefix": "QQ"}, "the prefix has 1 character the model never saw: 'Q'"),
    ({"model": "rev"}, "model \"rev\" is not a language model"),
    ({"model": 3}, "model must be a string"),
    ({"colour": "red", "size": 1}, "unknown fields 'colour', 'size'; this endpoint takes model, prefix"),
])
def test_a_bad_field_is_a_400_saying_what_is_wrong(client, body, words):
    answer = post(client, "/v1/generate", {"length": 5, **body})
    assert answer.status_code == 400
    assert list(answer.json()) == ["error"] and "\n" not in answer.json()["error"]
    assert words in answer.json()["error"]


@pytest.mark.parametrize(("content", "kind", "status", "words"), [
    (b"not json", "application/json", 400, "the body is not JSON"),
    (b'{"temperature": NaN}', "application/json", 400, "NaN is not a JSON number"),
    (b'{"length": Infinity}', "application/json", 400, "Infinity is not a JSON number"),
    (b'{"temperature": 1e999}', "application/json", 400, "temperature must be a number, got Infinity"),
    (b"[1, 2]", "application/json", 400, "the body must be a JSON object"),
    (b'{"prefix": "\xff"}', "application/json", 400, "the body is not UTF-8"),
    (b"[" * 100_000, "application/json", 413, "larger than 65,536 bytes"),
    (b"[" * 60_000, "application/json", 400, "the body is not JSON"),
    (b'{"prefix": "the "}', "text/plain", 415, "Content-Type: application/json"),
    (b'{"prefix": "the "}', "application/x-www-form-urlencoded", 415, "Content-Type: application/json"),
], ids=["not-json", "nan", "infinity", "overflow", "not-an-object", "not-utf8", "too-large", "too-deep", "text", "form"])
def test_a_bad_body_is_a_4xx_in_one_line(client, content, kind, status, words):
    answer = client.post("/v1/generate", content=content, headers={"Content-Type": kind})
    assert answer.status_code == status and words in answer.json()["error"]


def test_a_body_too_large_is_refused_unread_even_without_a_length(client):
    def chunks():  # chunked: no Content-Length to refuse it by
        yield b'{"prefix": "'
        for _ in range(100):
            yield b"x" * 1000
    answer = client.post("/v1/generate", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    declared = client.post("/v1/generate", content=b"{}", headers={"Content-Type": "application/json",
                                                                   "Content-Length": "10000000"})
    assert declared.status_code == 413


def test_a_model_is_named_never_a_path(client, models, monkeypatch):
    import builtins
    import os

    opened = []
    real_open, real_stat = builtins.open, os.stat
    monkeypatch.setattr(builtins, "open", lambda path, *args, **kwargs: opened.append(str(path)) or
                        real_open(path, *args, **kwargs))
    monkeypatch.setattr(os, "stat", lambda path, *args, **kwargs: opened.append(str(path)) or
                        real_stat(path, *args, **kwargs))
    for name in (str(models / "tiny.safetensors"), "../models/tiny", "tiny.safetensors", "/etc/passwd", "nope"):
        answer = post(client, "/v1/generate", {"model": name, "length": 5})
        assert answer.status_code == 404 and "GET /v1/models lists them" in answer.json()["error"]
    for path in ("/v1/models/..%2Ftiny/metrics", "/v1/models/%2Fetc%2Fpasswd/metrics", "/../pyproject.toml",
                 "/static/../app.py", "/index.html"):
        answer = client.get(path)
        assert answer.status_code == 404 and list(answer.json()) == ["error"], path
    assert [path for path in opened if "passwd" in path or "pyproject" in path or "safetensors" in path] == []
    client.get("/v1/models/tiny/metrics")  # what the server does read, fixed at start: the spy sees it
    assert any(path.endswith("tiny.metrics.jsonl") for path in opened)


def test_a_wrong_method_or_path_is_a_json_error(client):
    assert client.get("/v1/generate").json() == {"error": "GET is not allowed here"}
    assert client.get("/v2/models").json() == {"error": "no such path: /v2/models"}


def test_a_server_error_is_a_500_with_no_traceback(catalog, monkeypatch, caplog):
    served = catalog["rev"]
    monkeypatch.setattr(served.model, "translate", lambda *args: (_ for _ in ()).throw(RuntimeError("secret detail")))
    with TestClient(create_app(catalog), raise_server_exceptions=False) as client:
        answer = post(client, "/v1/translate", {"inputs": ["abc"]})
    assert answer.status_code == 500
    assert answer.json() == {"error": "the server failed on this request; its log says why"}
    assert "secret detail" in caplog.text  # on the server's side only


def test_a_host_not_allowed_is_refused(catalog):
    with TestClient(create_app(catalog, allowed_hosts=("localhost", "127.0.0.1")), base_url="http://evil.example") \
            as client:
        assert client.get("/v1/models").status_code == 421
    with TestClient(create_app(catalog, allowed_hosts=("localhost",)), base_url="http://localhost:8000") as client:
        assert client.get("/v1/models").status_code == 200


# ---------------------------------------------------------------------------------------------
# Pair models


def test_translate_gives_what_charlm_translate_prints(client, runner, models):
    for beam in (1, 3):
        answer = post(client, "/v1/translate", {"model": "rev", "inputs": ["abc", "ca", "bca"], "beam": beam})
        printed = run_cli(runner, "translate", "--checkpoint", models / "rev.safetensors", "--beam", beam,
                          "abc", "ca", "bca").stdout
        assert answer.json() == {"model": "rev", "outputs": printed.splitlines()}
    short = post(client, "/v1/translate", {"inputs": ["abcabc"], "max_length": 2}).json()["outputs"]
    assert len(short[0]) <= 2


@pytest.mark.parametrize(("body", "words"), [
    ({"inputs": []}, "inputs must be a list of one or more strings"),
    ({"inputs": "abc"}, "inputs must be a list of one or more strings"),
    ({"inputs": ["abc", 3]}, "inputs must be a list of one or more strings"),
    ({"inputs": ["a"] * 65}, "inputs holds 65 strings; at most 64"),
    ({"inputs": ["a" * 1001]}, "a string of inputs is 1,001 characters long; at most 1,000"),
    ({"inputs": ["abc"], "beam": 0}, "beam must be from 1 to 16"),
    ({"inputs": ["abc"], "beam": 17}, "beam must be from 1 to 16"),
    ({"inputs": ["abc"], "max_length": 0}, "max_length must be from 1"),
    ({"inputs": ["abc"], "length_penalty": -1}, "length_penalty must be at least 0"),
    ({"inputs": ["xyz"]}, "the input has 3 characters the model never saw"),
    ({"inputs": ["abc"], "model": "tiny"}, "model \"tiny\" is not a translation model"),
    ({"inputs": ["abc"], "prefix": "a"}, "unknown field 'prefix'"),
])
def test_a_bad_translate_request_is_a_400(client, body, words):
    answer = post(client, "/v1/translate", body)
    assert answer.status_code == 400 and words in answer.json()["error"], answer.text


def test_attention_gives_a_row_per_output_character(client, catalog):
    shown = post(client, "/v1/attention", {"input": "abc"}).json()
    expected = catalog["rev"].model.attention("abc")
    assert shown["source"] == ["a", "b", "c"] and shown["output"] == expected["output"]
    assert len(shown["weights"]) == len(shown["output"]) and all(abs(sum(row) - 1) < 1e-5 for row in shown["weights"])
    assert post(client, "/v1/attention", {"input": 5}).status_code == 400


# ---------------------------------------------------------------------------------------------
# Over a real socket: a bounded number in flight, and a client that goes stops its generation


def slow_steps(app, name: str = "tiny", seconds: float = 0.005) -> None:
    """Each model step of `name`'s batcher takes at least `seconds`: generations last long enough
    to be caught in flight."""
    batcher = app.state.batchers[name]
    step = batcher.step

    def slow(ids, state):
        time.sleep(seconds)
        return step(ids, state)

    batcher.step = slow


def open_stream(url: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("POST", "/v1/generate", json.dumps(body), {"Content-Type": "application/json"})
    return connection, connection.getresponse()


def wait_until(condition, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_beyond_the_limit_in_flight_is_429_and_a_client_gone_frees_its_place(catalog):
    app = create_app(catalog, Limits(in_flight=2))
    slow_steps(app)
    batcher, slots = app.state.batchers["tiny"], app.state.slots
    with running(app) as url:
        streams = [open_stream(url, {"prefix": "the ", "length": 2000, "stream": True}) for _ in range(2)]
        for _, response in streams:
            assert response.status == 200 and response.readline().startswith(b"data: ")
        _, refused = open_stream(url, {"prefix": "the ", "length": 5})
        assert refused.status == 429 and "busy" in json.loads(refused.read())["error"]
        for connection, _ in streams:
            connection.sock.shutdown(socket.SHUT_RDWR)
            connection.close()
        assert wait_until(lambda: batcher.in_flight == 0 and slots.used == 0)  # both generations stopped
        _, served = open_stream(url, {"prefix": "the ", "length": 5})
        assert served.status == 200 and json.loads(served.read())["samples"]


def test_concurrent_requests_over_a_socket_each_get_their_text_alone(catalog):
    """Requests sent at once to a real server are batched and still get, each, the text of the
    same request alone (`TextModel.generate`, which is `charlm generate`'s)."""
    app = create_app(catalog)
    slow_steps(app, seconds=0.001)  # so that they overlap
    asks = [{"prefix": prefix, "length": 60 + 7 * seed, "seed": seed, "temperature": 0.9, "stream": seed % 2 == 0}
            for seed, prefix in enumerate(["the ", "his ", "a", "time ", "grey ", "was "] * 2)]
    answers: list = [None] * len(asks)
    with running(app) as url:
        def ask(index: int) -> None:
            _, response = open_stream(url, asks[index])
            answers[index] = (response.status, response.read().decode())
        threads = [threading.Thread(target=ask, args=(index,)) for index in range(len(asks))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert app.state.batchers["tiny"].largest_batch > 1
    model = catalog["tiny"].model
    for body, (status, text) in zip(asks, answers):
        assert status == 200
        sample = ("".join(data["text"] for name, data in events(text) if name == "message") if body["stream"]
                  else json.loads(text)["samples"][0])
        assert sample == model.generate(body["prefix"], length=body["length"], seed=body["seed"], temperature=0.9)


def test_a_client_gone_before_its_answer_stops_its_generation(catalog):
    app = create_app(catalog)
    slow_steps(app)
    batcher = app.state.batchers["tiny"]
    with running(app) as url:
        connection, _ = None, None
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("POST", "/v1/generate", json.dumps({"prefix": "the ", "length": 2000}),
                           {"Content-Type": "application/json"})
        # stepping, not only admitted: a client gone before its first step is dropped unstepped
        assert wait_until(lambda: batcher.in_flight == 1 and batcher.steps >= 1)
        connection.sock.shutdown(socket.SHUT_RDWR)
        connection.close()
        assert wait_until(lambda: batcher.in_flight == 0 and app.state.slots.used == 0)
        assert batcher.largest_batch == 1 and batcher.steps < 1999


def test_a_stopping_server_ends_its_streams_saying_so(catalog):
    app = create_app(catalog)
    slow_steps(app)
    with running(app, on_stop=app.state.stop) as url:
        _, response = open_stream(url, {"prefix": "the ", "length": 2000, "stream": True})
        assert response.readline().startswith(b"data: ")
        app.state.stop()
        rest = events(response.read().decode().split("\n\n", 1)[1])
        _, refused = open_stream(url, {"prefix": "the ", "length": 5})
        assert refused.status == 503 and json.loads(refused.read()) == {"error": "the server is stopping"}
    assert rest[-1] == ("error", {"error": "the server is stopping"})


# ---------------------------------------------------------------------------------------------
# The command


def test_the_readme_lists_every_bound():
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("`charlm serve`"):readme.index("## What charlm guarantees")]
    limits = Limits()
    rows = [f"| request body | {limits.body_bytes // 1024} KiB", f"| `prefix` | {limits.prefix_chars:,} characters",
            f"| `length` | {limits.length:,} tokens", f"| `num_samples` | {limits.num_samples} |",
            f"| `inputs` | {limits.inputs} strings of at most {limits.input_chars:,} characters",
            f"| `beam` | {limits.beam} |", f"| `max_length` | {limits.max_length:,} characters",
            f"| requests at work (generations and translations) | {limits.in_flight} |",
            f"| `prompt` of /v1/completions | {limits.prompts} strings (n × prompts at most {limits.num_samples})",
            f"| `messages` of /v1/chat/completions | {limits.messages} |",
            f"| a request body's arrival | {limits.read_seconds:g} s | 408 |",
            f"| a stream's client taking none of it | {limits.write_seconds:g} s |"]
    assert [row for row in rows if row not in section] == []


def test_serve_with_no_checkpoint_says_so_in_one_line(runner):
    printed = run_cli(runner, "serve", ok=False)
    assert printed.exit_code == 1
    assert printed.stderr == ("charlm: error: no model checkpoint in checkpoints/; train one first "
                              "(charlm train corpora/timemachine.txt) or name a checkpoint\n")


def test_serve_binds_loopback_and_warns_beyond_it(runner, models, monkeypatch):
    from charlm.serve import server

    served = []
    monkeypatch.setattr(server, "serve_forever", lambda app, sock, on_stop: served.append(sock.getsockname()[0]))
    quiet = run_cli(runner, "serve", models / "tiny.safetensors", "--port", "0")
    assert "warning" not in quiet.stderr and "serving tiny (lm) at http://127.0.0.1:" in quiet.stderr
    refused = run_cli(runner, "serve", models, "--host", "0.0.0.0", "--port", "0", ok=False)
    assert refused.exit_code == 2 and "--allow-no-key" in refused.stderr and "--api-key" in refused.stderr
    loud = run_cli(runner, "serve", models, "--host", "0.0.0.0", "--port", "0", "--allow-no-key")
    assert loud.stderr.startswith("warning: serving on 0.0.0.0, which other machines can reach, without a key")
    assert "serving rev (translate), tiny (lm), words (lm) at http://0.0.0.0:" in loud.stderr
    assert served == ["127.0.0.1", "0.0.0.0"]


def test_serve_without_the_extra_names_it(runner, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "uvicorn" else
                        find_spec(name, *args))
    printed = run_cli(runner, "serve", ok=False)
    assert printed.exit_code == 1
    assert printed.stderr == "charlm: error: charlm serve needs uvicorn, an optional extra: pip install 'charlm[serve]'\n"


def test_temperature_0_is_greedy(client, catalog):
    """As at the other doors (tests/generation/test_request.py): temperature 0 is greedy's text."""
    greedy = catalog["tiny"].model.generate("the ", length=30, greedy=True, precision="fp32")
    answer = post(client, "/v1/generate", {"model": "tiny", "prefix": "the ", "length": 30, "temperature": 0})
    assert answer.status_code == 200 and answer.json()["samples"] == [greedy]


@pytest.mark.parametrize(("path", "body"), [("/v1/generate", {"prefix": "QQ", "length": 5}),
                                            ("/v1/translate", {"inputs": ["xyz"]})])
def test_an_error_names_the_json_fields_not_the_flags(client, path, body):
    """What the command line says with --unknown skip, the server says with the field it takes."""
    error = post(client, path, body).json()["error"]
    assert '"unknown": "skip"' in error and '"unknown": "unk"' in error and "--" not in error


def test_inside_gives_the_models_view_of_a_text_within_bounds(client, catalog):
    text = TINY_TEXT[:300]
    seen = post(client, "/v1/inside", {"text": text, "top_k": 3}).json()
    expected = catalog["tiny"].model.inspect(text, top_k=3)
    assert seen["model"] == "tiny" and seen["tokens"] == expected.tokens and seen["surprise"][0] is None
    assert seen["surprise"][1:] == [round(value, 3) for value in expected.surprise[1:]]
    assert [len(found) for found in seen["expected"][1:]] == [3] * (len(text) - 1)
    for found in seen["ranked"].values():
        for unit, _ in found:
            assert len(seen["units"][unit]) == len(text)
    for body, field in (({"text": 5}, "text"), ({"text": "ab", "top_k": 0}, "top_k"), ({"text": "ab", "top_k": 21}, "top_k"),
                        ({"text": "x" * 20_001}, "text"), ({"text": "ab", "model": "rev"}, "model"),
                        ({"text": "ab", "surprise": 1}, "surprise")):
        answer = post(client, "/v1/inside", body)
        assert answer.status_code == 400 and "error" in answer.json(), (body, answer.text)
    one = post(client, "/v1/inside", {"text": "t"})
    assert one.status_code == 400 and "fewer than 2 tokens" in one.json()["error"]


def test_inside_gives_any_unit_asked_for_and_the_page_its_script(client, catalog):
    text = TINY_TEXT[:200]
    seen = post(client, "/v1/inside", {"text": text, "units": ["layer 0 c 3", "layer 0 h 0"]}).json()
    expected = catalog["tiny"].model.inspect(text)
    assert seen["layers"] == {name: 16 for name in expected.activations}
    for unit, (name, index) in (("layer 0 c 3", ("layer 0 c", 3)), ("layer 0 h 0", ("layer 0 h", 0))):
        values = expected.activations[name][:, index].tolist()
        assert seen["units"][unit][:-1] == [round(value, 4) for value in values[:-1]] and seen["units"][unit][-1] is None
    for units in (["layer 9 h 0"], ["layer 0 h 16"], ["layer 0 h"], ["x"] * 17, "layer 0 h 1", [3]):
        answer = post(client, "/v1/inside", {"text": text, "units": units})
        assert answer.status_code == 400 and "units" in answer.json()["error"], (units, answer.text)
    script = client.get("/inside.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert b"function insideView" in script.content

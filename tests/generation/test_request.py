"""A generation request (`charlm.generation.request.Request`): one frozen, hashable object from every door
(`charlm generate`'s flags, `TextModel.generate`'s keywords, a JSON body) to the sampler, its
fields the rows of `charlm.settings.GENERATE`, a bad value refused once, in one line that names it
as its caller did."""

from __future__ import annotations

import inspect
from dataclasses import FrozenInstanceError, fields, replace

import pytest

import charlm
from charlm.trained import TextModel
from charlm.generation.request import Request, Sampling
from charlm.settings import GENERATE, SettingError, for_command
from tests.conftest import run_cli, train_tiny


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A tiny language model, trained for 2 steps."""
    return train_tiny(tmp_path_factory.mktemp("request"), 2)


def test_a_request_is_frozen_hashable_and_equal_by_value():
    request = Request("the ", 40, Sampling(0.8, 5), seed=1)
    same = Request.from_fields({"prefix": "the ", "length": 40, "temperature": 0.8, "top_k": 5, "seed": 1},
                               said="flag")
    assert request == same and hash(request) == hash(same) and len({request, same}) == 1
    assert request != replace(request, seed=2) and request.sampling != replace(request.sampling, top_p=0.9)
    with pytest.raises(FrozenInstanceError):
        request.length = 3
    with pytest.raises(FrozenInstanceError):
        request.sampling.top_k = 3
    assert Sampling(temperature=1) == Sampling() and type(Sampling(temperature=1).temperature) is float


def test_its_fields_are_the_generate_rows():
    """One declaration: each setting of `charlm generate` is a field of `Request` or its `Sampling`,
    with the row's default, and nothing else is."""
    declared = {field.name: field.default for kind in (Request, Sampling) for field in fields(kind)
                if field.name != "sampling"}
    assert declared == {name: row.default for name, row in GENERATE.items()}
    assert Request().sampling == Sampling()


BAD = [
    ("temperature", -1, "{} must be 0 (greedy) or a positive number, got -1"),
    ("temperature", float("inf"), "{} must be 0 (greedy) or a positive number, got inf"),
    ("top_k", -1, "{} must be 0 (off) or more, got -1"),
    ("top_p", 1.5, "{} must be in (0, 1], got 1.5"),
    ("top_p", float("nan"), "{} must be in (0, 1], got nan"),
    ("greedy", 1, "{} must be true or false, got 1"),
    ("length", -1, "{} must be at least 0, got -1"),
    ("length", 2.0, "{} must be a whole number, got 2.0"),
    ("num_samples", 0, "{} must be at least 1, got 0"),
    ("seed", 1.5, "{} must be a whole number, got 1.5"),
    ("unknown", "ignore", "{} must be one of error, skip, unk, got 'ignore'"),
    ("precision", "fp16", "{} must be one of auto, fp32, bf16, got 'fp16'"),
    ("prefix", None, "{} must be given, got null"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD)
@pytest.mark.parametrize("door", ["flag", "keyword", "field"])
def test_a_bad_value_is_refused_in_one_line_named_as_its_door_names_it(name, value, message, door):
    said = {"flag": GENERATE[name].option, "keyword": name, "field": name}[door]
    with pytest.raises(SettingError) as raised:
        Request.from_fields({name: value}, said=door)
    assert str(raised.value) == message.format(said) and raised.value.said == said
    assert isinstance(raised.value, charlm.CharlmError)


def test_the_cli_refuses_what_click_lets_through_naming_the_flag(runner, model_path):
    for flags, message in [(["--temperature", "inf"],
                            "--temperature must be 0 (greedy) or a positive number, got inf"),
                           (["--top-p", "nan"], "--top-p must be in (0, 1], got nan")]:
        printed = run_cli(runner, "generate", "--checkpoint", model_path, *flags, ok=False)
        assert printed.exit_code == 1 and printed.stderr == f"charlm: error: {message}\n" and printed.stdout == ""


def test_the_api_refuses_naming_the_keyword(model_path):
    model = charlm.load(model_path)
    with pytest.raises(SettingError, match=r"^top_p must be in \(0, 1\], got 1.5$"):
        model.generate("the ", top_p=1.5)
    with pytest.raises(SettingError, match="^num_samples must be at least 1, got 0$"):
        model.generate("the ", num_samples=0)
    with pytest.raises(SettingError, match=r"^temperature must be 0 \(greedy\) or a positive number, got -1$"):
        model.stream("the ", temperature=-1)  # at once, before the first piece is read
    with pytest.raises(TypeError, match="topp"):
        model.generate("the ", topp=0.9)
    with pytest.raises(TypeError, match="num_samples"):
        model.stream("the ", num_samples=2)


def test_the_apis_keywords_are_charlm_generates_flags(model_path):
    """`generate` and `stream` take the rows `charlm generate` takes, in order, with their defaults
    (positionally too), as the command's options do; `stream` but those of several samples and
    log-probabilities, which its text has no place for."""
    from charlm.cli.generate import generate as command

    rows = for_command(GENERATE, "generate")
    expected = [(row.argument, row.default) for row in rows]
    shown = [(name, parameter.default) for name, parameter in inspect.signature(TextModel.generate).parameters.items()
             if name != "self"]
    assert shown == expected
    streamed = [name for name in inspect.signature(TextModel.stream).parameters if name != "self"]
    assert streamed == [name for name, _ in expected if name not in ("num_samples", "logprobs")]  # one sample's text
    flags = dict(command.make_context("generate", []).params)
    del flags["checkpoint"], flags["device"], flags["interactive"]  # the command's own, not a setting
    assert flags == dict(expected)
    assert [param.opts[0] for param in command.params if param.name in flags] == [row.option for row in rows]
    model = charlm.load(model_path)
    assert model.generate("the ", 10, 1.0, 0, 1.0, True) == model.generate("the ", length=10, greedy=True)


def test_temperature_0_is_greedy_at_every_door(runner, model_path):
    """OpenAI, llama.cpp and Ollama read temperature 0 as greedy; so do charlm generate, the API and
    the server (one `Sampling`, equal to greedy's, so the batcher draws them together)."""
    assert Sampling(temperature=0) == Sampling(greedy=True) and hash(Sampling(temperature=0)) == hash(Sampling(greedy=True))
    model = charlm.load(model_path)
    greedy = model.generate("the ", length=30, greedy=True)
    assert model.generate("the ", length=30, temperature=0, seed=5) == greedy
    printed = run_cli(runner, "generate", "--checkpoint", model_path, "--prefix", "the ", "--length", "30",
                      "--temperature", "0")
    assert printed.stdout == greedy + "\n" and "--seed" not in printed.stderr  # greedy needs no seed
    # the server's door: tests/serve/test_serve.py::test_temperature_0_is_greedy


def test_a_generation_without_a_seed_says_the_seed_that_writes_it_again(runner, model_path):
    """Without --seed, charlm generate draws a seed and says it on stderr: that seed gives the same
    text again; with one, it says nothing."""
    import re

    first = run_cli(runner, "generate", "--checkpoint", model_path, "--prefix", "the ", "--length", "40")
    seed = re.search(r"^note: --seed (\d+) writes this text again$", first.stderr, re.MULTILINE)
    assert seed, first.stderr
    again = run_cli(runner, "generate", "--checkpoint", model_path, "--prefix", "the ", "--length", "40",
                    "--seed", seed.group(1))
    assert again.stdout == first.stdout and "writes this text again" not in again.stderr

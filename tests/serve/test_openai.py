"""`charlm serve` in OpenAI's dialect, through the real `openai` client against a live server on
loopback: the models list, completions (plain, streamed, several, stop, seed, logprobs, echo,
penalties), chat (plain and streamed), errors as the client's own classes, and keys. Each text is
the one `charlm generate` prints for the same settings and seed."""

from __future__ import annotations

import json
import time
import warnings

import pytest

pytest.importorskip("starlette", reason="charlm[serve] is not installed")
openai = pytest.importorskip("openai", reason="the openai client is in the test extra")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from charlm.serve.app import create_app  # noqa: E402
from charlm.serve.catalog import load_catalog  # noqa: E402
from charlm.serve.chat import ChatTemplate  # noqa: E402
from charlm.serve.server import running  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.serve.test_serve import models, post  # noqa: E402, F401  (the fixture: tiny models trained once)

KEY = "sesame"


@pytest.fixture(scope="module")
def catalog(models):  # noqa: F811
    return load_catalog([str(models)])


@pytest.fixture(scope="module")
def server(catalog):
    app = create_app(catalog)
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tiny(catalog):
    return catalog["tiny"].model


def test_the_models_list_is_openais_with_charlms_details_kept(client, catalog):
    listed = client.models.list()
    assert [model.id for model in listed.data] == ["rev", "tiny", "words"]
    assert all(model.object == "model" and model.owned_by == "charlm" and model.created > 0 for model in listed.data)
    assert client.models.retrieve("tiny").model_extra["charlm"] == catalog["tiny"].listing()
    with pytest.raises(openai.NotFoundError, match="no model named"):
        client.models.retrieve("nope")


def test_a_completion_is_the_text_charlm_generate_prints(client, tiny, runner, models):  # noqa: F811
    made = client.completions.create(model="tiny", prompt="the ", max_tokens=40, seed=3)
    assert made.object == "text_completion" and made.model == "tiny" and made.id.startswith("cmpl-")
    [choice] = made.choices
    printed = run_cli(runner, "generate", "--checkpoint", models / "tiny.safetensors", "--prefix", "the ",
                      "--length", "40", "--seed", "3", "--precision", "fp32").stdout
    assert "the " + choice.text + "\n" == printed and choice.finish_reason == "length" and choice.index == 0
    assert (made.usage.prompt_tokens, made.usage.completion_tokens, made.usage.total_tokens) == (4, 40, 44)
    again = client.completions.create(model="tiny", prompt="the ", max_tokens=40, seed=3)
    assert again.choices[0].text == choice.text  # the seed reproduces it
    default = client.completions.create(model="tiny", prompt="the ", seed=1)
    assert len(default.choices[0].text) == 16  # OpenAI's default max_tokens


def test_a_streamed_completion_is_the_same_text_in_chunks(client):
    whole = client.completions.create(model="tiny", prompt="his ", max_tokens=60, seed=5).choices[0].text
    chunks = list(client.completions.create(model="tiny", prompt="his ", max_tokens=60, seed=5, stream=True,
                                            stream_options={"include_usage": True}))
    assert all(chunk.object == "text_completion" for chunk in chunks)
    texts = [choice.text for chunk in chunks for choice in chunk.choices]
    assert "".join(texts) == whole
    assert [choice.finish_reason for chunk in chunks for choice in chunk.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 60


def test_n_and_several_prompts_give_each_sample_of_generate(client, tiny):
    made = client.completions.create(model="tiny", prompt=["the ", "a"], max_tokens=30, n=3, seed=7)
    assert [choice.index for choice in made.choices] == list(range(6))
    for first, prompt in ((0, "the "), (3, "a")):
        samples = tiny.generate(prompt, length=30, num_samples=3, seed=7, precision="fp32")
        assert [prompt + choice.text for choice in made.choices[first:first + 3]] == samples
    streamed = list(client.completions.create(model="tiny", prompt="the ", max_tokens=30, n=3, seed=7, stream=True))
    texts = ["".join(choice.text for chunk in streamed for choice in chunk.choices if choice.index == index)
             for index in range(3)]
    assert texts == [choice.text for choice in made.choices[:3]]


def test_stop_ends_a_completion_before_it(client, tiny):
    whole = tiny.generate("the ", length=80, seed=2, precision="fp32")[4:]
    at = min(whole.find(text) for text in (" ", "e") if text in whole)
    made = client.completions.create(model="tiny", prompt="the ", max_tokens=80, seed=2, stop=[" ", "e"])
    assert made.choices[0].text == whole[:at] and made.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(model="tiny", prompt="the ", max_tokens=80, seed=2, stop=[" ", "e"],
                                              stream=True))
    assert "".join(choice.text for chunk in streamed for choice in chunk.choices) == whole[:at]
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_logprobs_and_echo(client, tiny):
    made = client.completions.create(model="tiny", prompt="the ", max_tokens=20, seed=4, logprobs=3)
    logprobs = made.choices[0].logprobs
    assert "".join(logprobs.tokens) == made.choices[0].text and len(logprobs.tokens) == 20
    assert logprobs.text_offset == list(range(20)) and all(value <= 0 for value in logprobs.token_logprobs)
    assert all(len(top) in (3, 4) and top[token] == value for token, value, top in
               zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs))
    alone = tiny.generate("the ", length=20, seed=4, logprobs=3, precision="fp32")
    assert logprobs.token_logprobs == pytest.approx([token.logprob for token in alone.tokens], abs=1e-5)
    echoed = client.completions.create(model="tiny", prompt="the ", max_tokens=20, seed=4, logprobs=3, echo=True)
    assert echoed.choices[0].text == "the " + made.choices[0].text
    assert echoed.choices[0].logprobs.tokens[:4] == list("the ")
    assert echoed.choices[0].logprobs.token_logprobs[:4] == [None] * 4
    assert echoed.choices[0].logprobs.text_offset == list(range(24))


@pytest.mark.parametrize("extra", [{"presence_penalty": 1.5}, {"frequency_penalty": -1.0},
                                   {"extra_body": {"repetition_penalty": 1.4}},
                                   {"extra_body": {"min_p": 0.1, "top_k": 5}, "temperature": 0.8},
                                   {"temperature": 0}])
def test_penalties_and_filters_give_the_text_of_generate(client, tiny, extra):
    made = client.completions.create(model="tiny", prompt="his ", max_tokens=50, seed=9, **extra)
    keywords = {**extra.get("extra_body", {}), **{name: value for name, value in extra.items() if name != "extra_body"}}
    assert "his " + made.choices[0].text == tiny.generate("his ", length=50, seed=9, precision="fp32", **keywords)


def test_chat_writes_the_conversation_with_the_template_and_stops_at_the_next_turn(client, tiny):
    messages = [{"role": "system", "content": "the time traveller"}, {"role": "user", "content": "his eyes"}]
    made = client.chat.completions.create(model="tiny", messages=messages, max_tokens=60, seed=1)
    assert made.object == "chat.completion" and made.id.startswith("chatcmpl-")
    [choice] = made.choices
    assert choice.message.role == "assistant"
    template = ChatTemplate()
    prefix = template.render([("system", "the time traveller"), ("user", "his eyes")])
    assert prefix == "system: the time traveller\nuser: his eyes\nassistant: "
    alone = tiny.generate(prefix, length=60, seed=1, unknown="skip", stop=template.stops(), precision="fp32")
    assert choice.message.content == alone.replace("system the time traveller\nuser his eyes\nassistant ", "", 1)
    streamed = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=60, seed=1,
                                                   stream=True))
    assert all(chunk.object == "chat.completion.chunk" for chunk in streamed)
    assert streamed[0].choices[0].delta.role == "assistant"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed) == choice.message.content
    assert streamed[-1].choices[0].finish_reason == choice.finish_reason


def test_a_template_a_user_gives_is_used_and_a_bad_one_refused(catalog):
    template = ChatTemplate("{role}:\n{content}\n\n")
    assert template.render([("ROMEO", "hi")]) == "ROMEO:\nhi\n\nassistant:\n"
    assert template.stops(["ROMEO"]) == ("\n\nuser:", "\n\nassistant:", "\n\nsystem:", "\n\nROMEO:")
    from charlm.errors import UsageError

    for bad in ("{content}", "{role} {content} {content}", "{role} {content} {other}", "{role {content}"):
        with pytest.raises(UsageError, match="--chat-template"):
            ChatTemplate(bad)


def test_the_clients_own_errors(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.completions.create(model="nope", prompt="the ")
    assert raised.value.code == "model_not_found" and raised.value.param == "model"
    for options, param in [({"temperature": -1}, "temperature"), ({"max_tokens": -1}, "max_tokens"),
                           ({"max_tokens": 2001}, "max_tokens"), ({"n": 33}, "n"), ({"n": 10**9}, "n"),
                           ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"top_p": 0}, "top_p"),
                           ({"logprobs": 6}, "logprobs"), ({"suffix": "end"}, "suffix"),
                           ({"presence_penalty": 3}, "presence_penalty"), ({"seed": 1.5}, "seed"),
                           ({"extra_body": {"min_p": 2}}, "min_p"), ({"extra_body": {"colour": 1}}, "colour")]:
        with pytest.raises(openai.BadRequestError) as raised:
            client.completions.create(model="tiny", prompt="the ", **options)
        assert raised.value.param == param and raised.value.type == "invalid_request_error", options
    with pytest.raises(openai.BadRequestError, match="the prompt has 1 character the model never saw: 'Q'; remove "
                       "them, or pass \"unknown\": \"skip\""):
        client.completions.create(model="tiny", prompt="QQ")
    with pytest.raises(openai.BadRequestError, match="prompt must be a string or a list of strings"):
        client.completions.create(model="tiny", prompt=[1, 2, 3])
    with pytest.raises(openai.BadRequestError, match="tools are not supported"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "a"}],
                                       tools=[{"type": "function", "function": {"name": "f"}}])
    with pytest.raises(openai.BadRequestError, match="is not a language model"):
        client.chat.completions.create(model="rev", messages=[{"role": "user", "content": "a"}])


@pytest.mark.parametrize(("body", "words"), [
    ({"prompt": "the ", "max_tokens": "5"}, "max_tokens must be a whole number"),
    ({"prompt": "the ", "stream": "yes"}, "stream must be true or false"),
    ({"prompt": "the ", "stop": 5}, "stop must be a string or a list of strings"),
    ({"prompt": "the ", "stop": [""]}, "stop texts must be 1 to 100 characters long"),
    ({"prompt": None}, "prompt must be a string or a list of strings"),
    ({"prompt": ["a"] * 17}, "prompt holds 17 strings; at most 16"),
    ({"prompt": ["a"] * 9, "n": 4}, "n times the prompts is 36; at most 32"),
    ({"prompt": "x" * 4001}, "a prompt is 4,001 characters long"),
    ({"prompt": "the ", "logit_bias": {"1": 5}}, "logit_bias is not supported"),
    ({"prompt": "the ", "best_of": 3}, "best_of is not supported"),
    ({"prompt": "the ", "stream_options": 1}, "stream_options must be an object"),
])
def test_a_hostile_completion_is_a_400_in_openais_shape(catalog, body, words):
    with TestClient(create_app(catalog)) as local:
        answer = post(local, "/v1/completions", {"model": "tiny", **body})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error" and set(error) == {
        "message", "type", "param", "code"}


@pytest.mark.parametrize(("messages", "words"), [
    ([], "messages must be a list of one or more messages"),
    ([{"role": "tool", "content": "x"}], "messages[0].role \"tool\" is not taken"),
    ([{"role": "user", "content": 5}], "messages[0].content must be a string"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "parts must be text"),
    (["hello"], "messages[0] must be an object"),
])
def test_a_hostile_chat_is_a_400(catalog, messages, words):
    with TestClient(create_app(catalog)) as local:
        answer = post(local, "/v1/chat/completions", {"messages": messages})
    assert answer.status_code == 400 and words in answer.json()["error"]["message"], answer.text


def test_every_openai_path_answers_errors_in_openais_shape_and_charlms_keep_theirs(catalog):
    with TestClient(create_app(catalog)) as local:
        assert local.get("/v1/embeddings").json()["error"]["message"] == "no such path: /v1/embeddings"
        assert local.get("/v1/completions").status_code == 405
        assert local.get("/v1/completions").json()["error"]["type"] == "invalid_request_error"
        assert local.post("/v1/completions", content="{").json()["error"]["message"].startswith("send the body as JSON")
        assert local.get("/v1/generate").json() == {"error": "GET is not allowed here"}
        assert local.get("/v1/models").json()["models"][1]["name"] == "tiny"  # charlm's listing, as before


def test_a_key_is_asked_for_on_every_api_path(catalog):
    app = create_app(catalog, api_key=KEY)
    with running(app) as url:
        wrong = openai.OpenAI(base_url=url + "v1", api_key="wrong", max_retries=0)
        for headers in ({"Authorization": openai.omit}, {}):  # no key at all, then the wrong one
            with pytest.raises(openai.AuthenticationError) as raised:
                wrong.models.list(extra_headers=headers)
            assert raised.value.code == "invalid_api_key"
            with pytest.raises(openai.AuthenticationError):
                wrong.completions.create(model="tiny", prompt="the ", max_tokens=3, extra_headers=headers)
        allowed = openai.OpenAI(base_url=url + "v1", api_key=KEY, max_retries=0)
        assert allowed.completions.create(model="tiny", prompt="the ", max_tokens=3, seed=1).choices[0].text
    with TestClient(create_app(catalog, api_key=KEY)) as local:  # the first one's batchers stopped with it
        assert local.get("/").status_code == 200  # the page asks for the key itself
        native = post(local, "/v1/generate", {"length": 3})
        assert native.status_code == 401 and native.json() == {"error": "this server needs an API key: send "
                                                                         "Authorization: Bearer KEY"}
        assert local.post("/v1/generate", content=json.dumps({"length": 3}), headers={
            "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}).status_code == 200


def test_a_stream_that_fails_ends_with_openais_error_object(catalog):
    app = create_app(catalog)
    batcher = app.state.batchers["tiny"]

    def broken(ids, state):
        raise RuntimeError("boom")

    batcher.step = broken
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIError, match="the generation failed on the server"):
            list(client.completions.create(model="tiny", prompt="the ", max_tokens=20, stream=True))


def test_a_streamed_completion_of_several_choices_is_joined_into_few_chunks(client):
    """n=8 choices streamed (their pieces interleaved as the batch makes them) come joined, at most
    one chunk per 20 ms, each choice with the text and the log-probabilities of the same completion
    not streamed."""
    asked = {"model": "tiny", "prompt": "the ", "max_tokens": 400, "n": 8, "seed": 5, "logprobs": 2}
    whole = client.completions.create(**asked).choices
    started = time.monotonic()
    chunks = list(client.completions.create(**asked, stream=True))
    seconds = time.monotonic() - started
    texts, tokens = [""] * 8, [[] for _ in range(8)]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            tokens[choice.index] += choice.logprobs.tokens if choice.logprobs else []
    assert texts == [choice.text for choice in whole]
    assert tokens == [choice.logprobs.tokens for choice in whole]
    assert len(chunks) <= 8 + 2 + seconds / 0.02, (len(chunks), seconds)  # each choice's last, and one a 20 ms

"""The OpenAI dialect's requests: a body of `/v1/completions` or `/v1/chat/completions` read into
charlm's own `Request` (one per prompt), field by field with the rows' types and bounds and the
server's `Limits`, under OpenAI's names: `max_tokens` is charlm's `length`, `n` its
`num_samples`, `prompt` (or the chat's rendered `messages`) its `prefix`; `top_k`, `min_p` and
`repetition_penalty` are the extensions llama.cpp and vLLM take, `unknown` charlm's own.

What charlm cannot do is refused by name (`suffix`, tools, a `logit_bias`); what changes nothing
here is taken and ignored (`user`, `stream_options` but its `include_usage`). It knows nothing
about HTTP beyond `Fields`, nor about models.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from charlm.generation.request import Request
from charlm.serve.chat import ROLES, ChatTemplate
from charlm.serve.fields import Fields, Limits, RequestError, shown
from charlm.settings import GENERATE

# charlm's settings by the names OpenAI gives them, where they differ
OPENAI_NAMES = {"length": "max_tokens", "num_samples": "n", "prefix": "prompt"}
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
            "seed")
COMMON = ("model", "max_tokens", *SAMPLING, "n", "stream", "stream_options", "stop", "user", "logit_bias", "unknown")
COMPLETION_FIELDS = (*COMMON, "prompt", "logprobs", "echo", "suffix", "best_of")
CHAT_FIELDS = (*COMMON, "messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools", "tool_choice",
               "functions", "function_call", "response_format", "parallel_tool_calls")
MAX_LOGPROBS = {"completions": 5, "chat": 20}  # OpenAI's bounds on logprobs and top_logprobs
COMPLETION_LENGTH = 16  # OpenAI's default max_tokens for completions; a chat's is charlm's length
NO_TOOLS = "a character model calls no tools"


@dataclass(frozen=True)
class Asked:
    """A request of the OpenAI dialect: the model named (None: the first language model), each
    prompt's `Request` (the chat's one), whether the answer streams (and ends with usage), and
    for completions whether each text starts with its prompt (`echo`)."""

    model: str | None
    requests: tuple[Request, ...]
    stream: bool
    include_usage: bool
    echo: bool = False


def _common(fields: Fields, limits: Limits, length: int, unknown: str) -> dict[str, Any]:
    """The fields both routes take, as charlm's settings by name."""
    values = {name: fields.setting(GENERATE[name], *limits.bounds(name)) for name in SAMPLING}
    values["length"] = fields.integer("max_tokens", length, 0, limits.length)
    values["num_samples"] = fields.integer("n", 1, 1, limits.num_samples)
    values["unknown"] = fields.choice("unknown", unknown, GENERATE["unknown"].choice_list())
    values["stop"] = fields.stops("stop")
    fields.text("user", None, None)
    if fields.data.get("logit_bias"):
        raise RequestError("logit_bias is not supported", param="logit_bias")
    options = fields.data.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not isinstance(options.get("include_usage", False),
                                                                                  bool)):
        raise RequestError(f"stream_options must be an object such as {{\"include_usage\": true}}, got {shown(options)}",
                           param="stream_options")
    return values


def _model(fields: Fields) -> str | None:
    return fields.text("model", None, 200)


def _streaming(fields: Fields) -> tuple[bool, bool]:
    stream = fields.boolean("stream", False)
    return stream, stream and bool((fields.data.get("stream_options") or {}).get("include_usage"))


def read_completion(data: dict[str, Any], limits: Limits) -> Asked:
    """A body of /v1/completions."""
    fields = Fields(data, COMPLETION_FIELDS)
    if fields.data.get("suffix"):
        raise RequestError("suffix is not supported: a character model continues a prompt, it does not fill in "
                           "before a suffix", param="suffix")
    values = _common(fields, limits, COMPLETION_LENGTH, GENERATE["unknown"].default)
    best_of = fields.integer("best_of", None, 1, None)
    if best_of not in (None, 1, values["num_samples"]):
        raise RequestError("best_of is not supported (but as 1 or n): no completion is ranked here", param="best_of")
    values["logprobs"] = fields.integer("logprobs", None, 0, MAX_LOGPROBS["completions"])
    prompt = data.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(text, str) for text in prompts):
        raise RequestError(f"prompt must be a string or a list of strings (token ids are not taken: a character "
                           f"model's tokens are characters), got {shown(prompt)}", param="prompt")
    if len(prompts) > limits.prompts:
        raise RequestError(f"prompt holds {len(prompts):,} strings; at most {limits.prompts}", param="prompt")
    if len(prompts) * values["num_samples"] > limits.num_samples:
        raise RequestError(f"n times the prompts is {len(prompts) * values['num_samples']:,}; at most "
                           f"{limits.num_samples}", param="n")
    if longest := max((len(text) for text in prompts if len(text) > limits.prefix_chars), default=0):
        raise RequestError(f"a prompt is {longest:,} characters long; at most {limits.prefix_chars:,}", param="prompt")
    stream, include_usage = _streaming(fields)
    base = Request.from_fields(values, said="field")
    return Asked(_model(fields), tuple(replace(base, prefix=text) for text in prompts), stream, include_usage,
                 fields.boolean("echo", False))


def read_chat(data: dict[str, Any], limits: Limits, template: ChatTemplate) -> Asked:
    """A body of /v1/chat/completions: its messages written as text by `template` (the last
    `limits.prefix_chars` characters of it: a character model reads the recent past), the reply
    ending where the template's next turn would start, or at the request's own stops."""
    fields = Fields(data, CHAT_FIELDS)
    for name in ("tools", "functions"):
        if fields.data.get(name):
            raise RequestError(f"{name} are not supported: {NO_TOOLS}", param=name)
    for name in ("tool_choice", "function_call"):
        if fields.data.get(name) not in (None, "none"):
            raise RequestError(f"{name} is not supported: {NO_TOOLS}", param=name)
    form = fields.data.get("response_format")
    if form is not None and form != {"type": "text"}:
        raise RequestError("response_format is not supported but as {\"type\": \"text\"}: a character model writes "
                           "free text", param="response_format")
    values = _common(fields, limits, GENERATE["length"].default, "skip")
    if fields.data.get("max_completion_tokens") is not None:
        values["length"] = fields.integer("max_completion_tokens", None, 0, limits.length)
    fields.boolean("parallel_tool_calls", False)
    if fields.boolean("logprobs", False):
        values["logprobs"] = fields.integer("top_logprobs", 0, 0, MAX_LOGPROBS["chat"])
    elif fields.data.get("top_logprobs") is not None:
        raise RequestError("top_logprobs needs \"logprobs\": true", param="top_logprobs")
    messages = _messages(data.get("messages"), limits)
    speakers = [speaker for speaker, _ in messages if speaker not in ROLES]
    values["prefix"] = template.render(messages)[-limits.prefix_chars:]
    values["stop"] = (*values["stop"], *template.stops(speakers))
    stream, include_usage = _streaming(fields)
    return Asked(_model(fields), (Request.from_fields(values, said="field"),), stream, include_usage)


def _messages(messages: Any, limits: Limits) -> list[tuple[str, str]]:
    """(speaker, content) of each message: its name where it has one, else its role."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(f"messages must be a list of one or more messages, got {shown(messages)}", param="messages")
    if len(messages) > limits.messages:
        raise RequestError(f"messages holds {len(messages):,}; at most {limits.messages}", param="messages")
    read = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object with a role and content, got {shown(message)}", param=where)
        role, content, name = message.get("role"), message.get("content"), message.get("name")
        if role not in ROLES:
            refused = f"{shown(role)} is not taken: {NO_TOOLS}" if role in ("tool", "function") else \
                f"must be one of {', '.join(ROLES)}, got {shown(role)}"
            raise RequestError(f"{where}.role {refused}", param=f"{where}.role")
        if isinstance(content, list):  # parts: only text
            if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                       for part in content):
                raise RequestError(f"{where}.content parts must be text ({{\"type\": \"text\", \"text\": ...}}): a "
                                   "character model reads only text", param=f"{where}.content")
            content = "".join(part["text"] for part in content)
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise RequestError(f"{where}.content must be a string, got {shown(content)}", param=f"{where}.content")
        if name is not None and (not isinstance(name, str) or not name or len(name) > 64):
            raise RequestError(f"{where}.name must be a string of 1 to 64 characters", param=f"{where}.name")
        read.append((name or role, content))
    return read

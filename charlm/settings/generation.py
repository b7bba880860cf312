"""Generation's and translation's settings, and the server's: `charlm generate`'s, `translate`'s
and `serve`'s flags, `TextModel.generate`'s and `PairModel.translate`'s keywords, the fields of a
request to the server ("http"), and the fields of `charlm.generation.request.Request`. Standard
library only.
"""

from __future__ import annotations

from dataclasses import replace

from charlm.presets import PRECISIONS, UNKNOWN_POLICIES
from charlm.settings.rows import Setting, table
from charlm.settings.training import MAX_THREADS

# What to do with characters a model never saw: generation's prefix, translation's inputs.
UNKNOWN = Setting("unknown", str, "error", "What to do with characters the model never saw: stop with an error, drop "
                  "them, or map them to <unk>.", choices=UNKNOWN_POLICIES)


# ---------------------------------------------------------------------------------------------
# Generation: `charlm generate`'s flags, `TextModel.generate`'s keywords, the fields of a request
# to the server ("http"), and the fields of `charlm.generation.request.Request`.

GENERATE = table(
    Setting("prefix", str, "", "Text to start from (preprocessed like the corpus).", ("generate", "http")),
    Setting("length", int, 200, "Tokens to generate.", ("generate", "http"), low=0),
    Setting("temperature", float, 1.0, "Divides the logits: below 1 sharper, above 1 flatter; 0 always takes the "
            "likeliest token, as greedy does (OpenAI's, llama.cpp's and Ollama's reading).", ("generate", "http"),
            low=0, finite=True, rule="0 (greedy) or a positive number"),
    Setting("top_k", int, 0, "Sample among the k likeliest (0: all).", ("generate", "http"), low=0,
            rule="0 (off) or more"),
    Setting("top_p", float, 1.0, "Sample among the likeliest tokens that make up this much probability.",
            ("generate", "http"), low=0, high=1, low_open=True),
    Setting("greedy", bool, False, "Always take the likeliest token.", ("generate", "http")),
    Setting("seed", int, None, "Same seed, same text (on this machine, in this precision).", ("generate", "http")),
    Setting("num_samples", int, 1, "Samples at once.", ("generate", "http"), low=1),
    replace(UNKNOWN, commands=("generate", "http")),
    Setting("precision", str, "auto", "Of the steps' matrix products. auto: bf16 where this machine has bf16 matrix "
            "units and a step measures faster in it at --num-samples rows with the same next-token odds (kept beside "
            "the checkpoint), else fp32. fp32 gives the same text for a seed at any --num-samples.", ("generate",),
            choices=PRECISIONS),
    # The controls every generator shares (OpenAI's, llama.cpp's, vLLM's names), after the ones above
    # so that the API's positional order stays as it was. Penalties act on the model's logits before
    # the temperature, as vLLM applies them; min-p after top-p.
    Setting("min_p", float, 0.0, "Drop the tokens less likely than this share of the likeliest one's probability "
            "(after the temperature; 0: off).", ("generate", "http"), low=0, high=1),
    Setting("repetition_penalty", float, 1.0, "Make each token already in the prefix or the text less likely: a "
            "positive logit divided by it, a negative one multiplied (1: off; CTRL's, llama.cpp's and vLLM's).",
            ("generate", "http"), low=0, low_open=True, finite=True, rule="a positive number (1: off)"),
    Setting("presence_penalty", float, 0.0, "Subtract this from the logit of each token the text has made at least "
            "once (OpenAI's; negative: more likely).", ("generate", "http"), low=-2, high=2),
    Setting("frequency_penalty", float, 0.0, "Subtract this times the number of times the text has made a token from "
            "its logit (OpenAI's; negative: more likely).", ("generate", "http"), low=-2, high=2),
    Setting("stop", tuple, (), "End a sample before this text, which it does not include (repeat for several; the "
            "first to appear wins).", ("generate", "http"), metavar="TEXT"),
    Setting("logprobs", int, None, "With each new token, its log-probability under the model and those of the N "
            "likeliest tokens (before the temperature, penalties and filters); the CLI writes them on stderr.",
            ("generate",), low=0, high=20, metavar="N"),
)

# The most stop texts a request holds (four from its caller, as OpenAI bounds them, and a chat
# template's four), and the most characters of each.
MAX_STOPS = 8
MAX_STOP_CHARS = 100


# ---------------------------------------------------------------------------------------------
# Translation: `charlm translate`'s and `charlm eval`'s decoding flags, `PairModel.translate`'s
# keywords, the fields of a request to /v1/translate ("http").

TRANSLATE = table(
    Setting("beam", int, 1, "Beam search keeping this many candidates (1: greedy).", ("translate", "eval", "http"),
            low=1),
    Setting("max_length", int, None, "Stop an output at this many characters.", ("translate", "eval", "http"), low=1,
            shown_default="twice the input's length + 10"),
    Setting("length_penalty", float, 0.0, "Beam search ranks finished outputs by log-probability / length ** this "
            "(0: total log-probability; 1: per character).", ("translate", "eval", "http"), low=0, finite=True),
    replace(UNKNOWN, commands=("translate", "http")),
)


# ---------------------------------------------------------------------------------------------
# The server: `charlm serve`'s flags (with --device, `TRAIN`'s). Its requests' fields are the rows above.

SERVE = table(
    Setting("host", str, "127.0.0.1", "The address to listen on; anything but a loopback address is reachable from "
            "other machines.", ("serve",)),
    Setting("port", int, 8000, "The port to listen on (0: a free one).", ("serve",), low=0, high=65535),
    Setting("threads", int, None, "CPU threads for torch per language model, fixed. By default a step of few rows runs "
            "on one thread and a larger batch's on the cores other programs leave free less one for the requests' "
            "own work, shared between the models generating, looked at again as it serves.", ("serve",), low=1, high=MAX_THREADS),
    replace(GENERATE["precision"], commands=("serve",), help="Of the generation steps' matrix products. auto: bf16 "
            "where this machine has bf16 matrix units and a step measures faster in it both for one request and for "
            "a full batch, with the same next-token odds, else fp32 (the text of `charlm generate --precision "
            "fp32`)."),
    Setting("api_key", str, None, "Answer only requests that say `Authorization: Bearer KEY` (the playground asks "
            "for it); from the environment variable CHARLM_API_KEY when not given.", ("serve",), envvar="CHARLM_API_KEY",
            metavar="KEY"),
    Setting("allow_no_key", bool, False, "Serve beyond loopback without --api-key: anyone who can reach the port "
            "can use the models.", ("serve",)),
    Setting("chat_template", str, "{role}: {content}\n", "How /v1/chat/completions writes a conversation as text: "
            "one turn per message, {role} (or the message's name) and {content} in it; the reply starts as an "
            "assistant's turn and stops where the next turn would start.", ("serve",), metavar="TEMPLATE",
            shown_default='"{role}: {content}\\n"'),
)

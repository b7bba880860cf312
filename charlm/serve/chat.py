"""A conversation as text for a character model: the chat template of `charlm serve --chat-template`.

A template is one turn, with `{role}` and `{content}` in it: `"{role}: {content}\\n"` (the
default) writes `user: hello` and a line break for each message. The prefix a reply continues is
every message's turn, then the start of the assistant's (`assistant: `); the reply stops where any
next turn would start (`\\nuser:`, `\\nassistant:`, `\\nsystem:` after the default's line break),
so a model trained on dialogue in that form answers one turn. A message's `name`, where it has one,
is written for its role (a play's speaker: `{"role": "user", "name": "ROMEO", ...}`).

A character model is not an assistant: it continues text in the style it was trained on, and a
template is only how to make a conversation look like that text. Standard library only.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

from charlm.errors import UsageError

ROLES = ("system", "developer", "user", "assistant")
DEFAULT = "{role}: {content}\n"


@dataclass(frozen=True)
class ChatTemplate:
    """One turn's template (`DEFAULT`): `{role}` at least once, `{content}` once, nothing else in
    braces (a literal brace is doubled, as in `str.format`)."""

    turn: str = DEFAULT

    def __post_init__(self) -> None:
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(self.turn) if name is not None]
        except ValueError as problem:
            raise UsageError(f"--chat-template {self.turn!r} is not a template: {problem}") from None
        if sorted(set(names)) != ["content", "role"] or names.count("content") != 1:
            raise UsageError(f"--chat-template must hold {{role}} and {{content}} once each and nothing else in "
                             f"braces, got {self.turn!r}")

    @property
    def before(self) -> str:
        """The turn's text before its content (with {role} in it)."""
        return self.turn.split("{content}")[0]

    def render(self, messages: Sequence[tuple[str, str]]) -> str:
        """The prefix of a reply to `messages` ((speaker, content) pairs, in order): their turns,
        then the start of the assistant's."""
        turns = "".join(self.turn.format(role=speaker, content=content) for speaker, content in messages)
        return turns + self.before.format(role="assistant")

    def stops(self, speakers: Sequence[str] = ()) -> tuple[str, ...]:
        """Where a reply ends: the end of its turn followed by the start of the next, for each role
        and each of `speakers` (the names the conversation used); at most four, the roles first."""
        after = self.turn.split("{content}")[1].format(role="")
        found: list[str] = []
        for speaker in ("user", "assistant", "system", *speakers):
            stop = after + self.before.format(role=speaker).rstrip()
            if stop and stop not in found:
                found.append(stop)
        return tuple(found[:4])

"""The three dataset formats TRL's `SFTTrainer` reads, how a corpus record becomes one, and a per-row check.

A corpus record is either plain text or a conversation (``messages``). Formats (`--format`):

- ``messages``: ``{"messages": [{"role", "content"}, …]}``, the conversation, which must end in an assistant turn
  (it is the turn SFT learns). A plain-text record has no roles, so it is refused unless ``--text-role assistant``
  says to make the text one assistant turn (continued-pretraining text in chat form); with ``--text-prompt STR``
  a user turn with that prompt goes first. ``--text-role user`` is refused: a user-only conversation has nothing to learn.
- ``prompt-completion``: TRL's conversational prompt-completion, ``{"prompt": [all turns but the last],
  "completion": [the last assistant turn]}``. The prompt must be non-empty and end in a user, tool or assistant turn
  (TRL's `apply_chat_template` rejects a prompt ending in a system turn). Plain-text records are refused unless
  ``--text-role assistant --text-prompt STR`` gives them a prompt.
- ``text``: ``{"text": …}``. Conversations are refused: rendering them needs the model's chat template, and a
  chat record trained as raw text loses its roles; use ``messages`` for them.

"Refused" means the whole run stops with exit 2 before anything is written (it is a choice of format, not a
property of one record). A conversation that cannot be formatted (no final assistant turn, say) is a property of
that record: it goes to ``removed.parquet`` with reason ``format:<why>``.

Messages keep only ``role`` and ``content`` (other keys, e.g. tool-call payloads, are dropped) so every shard
has one Arrow type.
"""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa

Format = Literal["messages", "prompt-completion", "text"]
FORMATS: tuple[str, ...] = ("messages", "prompt-completion", "text")
ROLES = frozenset({"system", "user", "assistant", "tool"})
PROMPT_END_ROLES = frozenset({"user", "tool", "assistant"})  # what TRL's apply_chat_template accepts last in a prompt

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES_TYPE = pa.list_(MESSAGE_TYPE)


class Unformattable(Exception):
    """This record cannot be a row of the chosen format (the message is the removal reason's detail)."""


class FormatRefused(Exception):
    """A kind of record the chosen format does not take at all (the run stops, exit 2)."""


def format_fields(fmt: Format) -> list[pa.Field]:
    """The Arrow fields of the format's own columns, first in every row."""
    if fmt == "messages":
        return [pa.field("messages", MESSAGES_TYPE)]
    if fmt == "prompt-completion":
        return [pa.field("prompt", MESSAGES_TYPE), pa.field("completion", MESSAGES_TYPE)]
    if fmt == "text":
        return [pa.field("text", pa.string())]
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _clean(messages: list[dict]) -> list[dict[str, str]]:
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def to_format(
    fmt: Format, *, text: str | None = None, messages: list[dict] | None = None,
    text_role: str | None = None, text_prompt: str | None = None,
) -> dict[str, Any]:
    """The format's columns for one record. Raises `FormatRefused` (stop the run) or `Unformattable` (drop it)."""
    if messages is None and text is None:
        raise Unformattable("empty_record")
    if fmt == "text":
        if messages is not None:
            raise FormatRefused("conversation records cannot be written as --format text (their roles would be lost); "
                                "use --format messages or prompt-completion")
        return {"text": text}
    if messages is None:
        messages = _text_as_messages(fmt, text, text_role, text_prompt)
    messages = _clean(messages)
    if not messages or messages[-1]["role"] != "assistant":
        raise Unformattable("no_final_assistant_turn")
    if fmt == "messages":
        return {"messages": messages}
    prompt, completion = messages[:-1], messages[-1:]
    if not prompt:
        raise Unformattable("empty_prompt")
    if prompt[-1]["role"] not in PROMPT_END_ROLES:
        raise Unformattable(f"prompt_ends_in_{prompt[-1]['role']}_turn")
    return {"prompt": prompt, "completion": completion}


def _text_as_messages(fmt: Format, text: str | None, text_role: str | None, text_prompt: str | None) -> list[dict]:
    if text_role is None:
        hint = "--text-role assistant" + (" --text-prompt STR" if fmt == "prompt-completion" else "")
        raise FormatRefused(f"plain-text records have no roles for --format {fmt}; pass {hint} to make each text "
                            "the assistant turn, or use --format text")
    if text_role != "assistant":
        raise FormatRefused(f"--text-role {text_role}: a conversation without an assistant turn has nothing to learn; "
                            "use --text-role assistant")
    if fmt == "prompt-completion" and not text_prompt:
        raise FormatRefused("plain-text records need --text-prompt STR for --format prompt-completion "
                            "(the completion needs a prompt)")
    turns = [{"role": "user", "content": text_prompt}] if text_prompt else []
    return turns + [{"role": "assistant", "content": text}]


def _message_problem(messages: object, key: str) -> str | None:
    if not isinstance(messages, list) or not messages:
        return f"'{key}' is not a non-empty list of messages"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"{key}[{i}] needs a role in {sorted(ROLES)} and string content"
    return None


def check_trl_format(row: dict[str, Any], fmt: Format) -> str | None:
    """None when `row` is a valid example of `fmt` as TRL's SFTTrainer reads it, else what is wrong.

    Stricter than TRL's own `is_conversational` (which looks at the first message only): every message is checked,
    a conversation must end in an assistant turn, a prompt must end where TRL can add a generation prompt."""
    if fmt == "text":
        value = row.get("text")
        return None if isinstance(value, str) and value.strip() else "'text' is not a non-empty string"
    if fmt == "messages":
        problem = _message_problem(row.get("messages"), "messages")
        if problem:
            return problem
        return None if row["messages"][-1]["role"] == "assistant" else "messages do not end in an assistant turn"
    if fmt == "prompt-completion":
        for key in ("prompt", "completion"):
            problem = _message_problem(row.get(key), key)
            if problem:
                return problem
        if row["prompt"][-1]["role"] not in PROMPT_END_ROLES:
            return f"prompt ends in a {row['prompt'][-1]['role']} turn"
        if any(m["role"] != "assistant" for m in row["completion"]):
            return "completion holds a non-assistant turn"
        return None
    return f"unknown format {fmt!r}"

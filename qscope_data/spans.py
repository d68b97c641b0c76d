"""Token ids of a record and which positions count for its document (the `--span` of a chat conversation).

Plain texts are tokenised as they are (the tokenizer's own special tokens included) and every position counts —
unless ``text_as="user"``: then a text is read as the user turn of a conversation, so a set of requests is encoded
the way a chat model reads them (and the way the conversations it is compared with are read). Conversations are rendered with the tokenizer's chat template; `span` picks what counts:

- ``all``: every token of the rendered conversation;
- ``prompt``: the tokens before the final assistant turn's content (its ``<|im_start|>assistant`` header included),
  i.e. what a model reads before it answers; a conversation without an assistant turn is all prompt;
- ``response``: the content of every assistant turn.

Assistant content is located with the template's ``{% generation %}`` markers (``return_assistant_tokens_mask``)
when it has them; otherwise by rendering prefixes of the conversation (the turn runs from the end of
``messages[:i]`` + generation prompt to the end of ``messages[:i + 1]``, so it then includes the end-of-turn tokens).
Truncation to ``max_tokens`` keeps the beginning. Position 0 (the attention-sink outlier) never counts unless
``keep_first``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from qscope_data.inputs import Record

Span = Literal["all", "prompt", "response"]
TextAs = Literal["text", "user"]
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass
class TokenizedDoc:
    input_ids: list[int]
    aggregate: np.ndarray  # bool [len(input_ids)]: positions whose features count for the document

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_positions(self) -> int:
        return int(self.aggregate.sum())


def reads_as_chat(record: Record, text_as: TextAs = "text") -> bool:
    """Whether a record goes through the chat template (a conversation, or a text read as a user turn)."""
    return record.messages is not None or text_as == "user"


def tokenize_records(
    tokenizer, records: list[Record], *, max_tokens: int, span: Span = "all", keep_first: bool = False,
    text_as: TextAs = "text",
) -> list[TokenizedDoc | str]:
    """One `TokenizedDoc` per record, or the reason (a string) it cannot be tokenised."""
    out: list[TokenizedDoc | str | None] = [None] * len(records)
    text_idx = [i for i, r in enumerate(records) if not reads_as_chat(r, text_as)]
    if text_idx:
        enc = tokenizer([records[i].text for i in text_idx], add_special_tokens=True, truncation=True,
                        max_length=max_tokens)
        for i, ids in zip(text_idx, enc["input_ids"]):
            out[i] = _finish(list(ids), np.ones(len(ids), dtype=bool), keep_first)
    for i, rec in enumerate(records):
        if not reads_as_chat(rec, text_as):
            continue
        messages = rec.messages if rec.messages is not None else [{"role": "user", "content": rec.text}]
        try:
            ids, prompt, response = chat_spans(tokenizer, messages)
        except Exception as exc:  # a template that rejects this conversation: the record is rejected, the run goes on
            out[i] = f"chat template failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            continue
        mask = {"all": np.ones(len(ids), dtype=bool), "prompt": prompt, "response": response}[span]
        out[i] = _finish(ids[:max_tokens], mask[:max_tokens].copy(), keep_first)
    return [o if o is not None else "not tokenised" for o in out]


def _finish(ids: list[int], mask: np.ndarray, keep_first: bool) -> TokenizedDoc | str:
    if not ids:
        return "the text tokenises to no tokens"
    if not keep_first:
        mask[0] = False
    return TokenizedDoc(ids, mask)


# For tokenizers without a chat template (BERT-family encoders such as the demo backbone): "role: content" lines,
# with `{% generation %}` around assistant text so response spans are exact.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ 'assistant: ' }}{% generation %}{{ message['content'] }}{% endgeneration %}"
    "{% else %}{{ message['role'] + ': ' + message['content'] }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def ensure_chat_template(tokenizer) -> bool:
    """Give a tokenizer without a chat template the plain one; True when it had to."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return True


def has_generation_markers(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and bool(_GENERATION_TAG.search(template))


def chat_spans(tokenizer, messages: list[dict]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(token ids of the rendered conversation, prompt mask, response mask)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template")
    asst = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if has_generation_markers(tokenizer):
        enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids = list(enc["input_ids"])
        response = np.asarray(enc["assistant_masks"], dtype=bool)
        if asst and response.any():
            # Start of the final assistant turn's content = start of the last run of ones.
            starts = np.flatnonzero(response & ~np.concatenate([[False], response[:-1]]))
            prompt_end = int(starts[-1])
        else:
            prompt_end = len(ids) if not asst else _render_len(tokenizer, messages[: asst[-1]], True)
    else:
        ids = _render(tokenizer, messages, False)
        response = np.zeros(len(ids), dtype=bool)
        for i in asst:
            start = _render_len(tokenizer, messages[:i], True) if i else 0
            end = _render_len(tokenizer, messages[: i + 1], False)
            response[start:end] = True
        prompt_end = _render_len(tokenizer, messages[: asst[-1]], True) if asst else len(ids)
    prompt = np.zeros(len(ids), dtype=bool)
    prompt[:prompt_end] = True
    return ids, prompt, response


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        add_generation_prompt=add_generation_prompt)
    return list(enc["input_ids"])


def _render_len(tokenizer, messages: list[dict], add_generation_prompt: bool) -> int:
    return len(_render(tokenizer, messages, add_generation_prompt))

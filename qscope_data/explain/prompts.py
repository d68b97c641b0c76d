"""What the explainer and the detection scorer are asked, and how their answers are read.

Explainer (EleutherAI delphi's recipe): the top and quantile contexts of a feature, the tokens where it fires
wrapped in << >>; the model answers with a short label and a one-sentence description. Scorer (detection): the
explanation and a numbered, shuffled list of held-out texts with no markers; it answers with one 0/1 per text
(1 = the feature fires somewhere in it). Answers that cannot be read count as failed requests, never as guesses.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from qscope_data.explain.contexts import Context

MAX_CONTEXT_CHARS = 400

EXPLAINER_SYSTEM = (
    "You are a meticulous interpretability researcher. You are shown text excerpts in which one feature of a "
    "language model's sparse autoencoder is active. Tokens where the feature fires are marked like <<this>>. "
    "Find what the marked tokens have in common, taking their surroundings into account, and name the concept "
    "the feature detects. Answer in exactly two lines:\n"
    "Label: <a short label of at most 6 words>\n"
    "Description: <one sentence saying when the feature fires>"
)
SCORER_SYSTEM = (
    "You check explanations of a language model's features. You get an explanation of a feature and numbered "
    "text excerpts. For each excerpt decide whether the feature, as explained, fires on some token of it. "
    "Answer with a JSON list of 0 and 1 only, one number per excerpt in order, e.g. [1, 0, 0, 1]."
)


@dataclass(frozen=True)
class Explanation:
    label: str
    description: str


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_CONTEXT_CHARS else text[: MAX_CONTEXT_CHARS - 1] + "…"


def marked_text(ctx: Context) -> str:
    """The context's text with each run of firing tokens wrapped in << >>."""
    out: list[str] = []
    inside = False
    for tok, act in zip(ctx.tokens, ctx.acts):
        if act > 0 and not inside:
            out.append("<<")
            inside = True
        elif act <= 0 and inside:
            out.append(">>")
            inside = False
        out.append(tok)
    if inside:
        out.append(">>")
    return "".join(out)


def explainer_messages(contexts: list[Context]) -> list[dict]:
    lines = [f"Excerpt {i}: {_clip(marked_text(c))}" for i, c in enumerate(contexts, start=1)]
    user = "Excerpts where the feature fires:\n\n" + "\n".join(lines) + "\n\nLabel and description?"
    return [{"role": "system", "content": EXPLAINER_SYSTEM}, {"role": "user", "content": user}]


_LABEL = re.compile(r"^\s*\**\s*label\s*\**\s*[:：]\s*(.+?)\s*$", re.I | re.M)
_DESC = re.compile(r"^\s*\**\s*description\s*\**\s*[:：]\s*(.+?)\s*$", re.I | re.M)


def parse_explanation(text: str) -> Explanation | None:
    """`Label: …` and `Description: …` lines (case, bold markers and order free); None when either is missing."""
    label, desc = _LABEL.search(text), _DESC.search(text)
    if not label or not desc:
        return None
    clean = [m.group(1).strip().strip("\"'*` ") for m in (label, desc)]
    return Explanation(*clean) if all(clean) else None


def scorer_messages(explanation: Explanation, contexts: list[Context]) -> list[dict]:
    lines = [f"Excerpt {i}: {_clip(c.text())}" for i, c in enumerate(contexts, start=1)]
    user = (f"Explanation: {explanation.label} — {explanation.description}\n\n" + "\n".join(lines)
            + f"\n\nAnswer with a JSON list of {len(contexts)} numbers (1 = fires, 0 = does not).")
    return [{"role": "system", "content": SCORER_SYSTEM}, {"role": "user", "content": user}]


def parse_detection(text: str, n: int) -> list[bool] | None:
    """The first JSON list in `text` if it holds exactly `n` values that are 0/1 (or booleans); else None."""
    for match in re.finditer(r"\[[^\[\]]*\]", text):
        try:
            values = json.loads(match.group(0))
        except ValueError:
            continue
        if isinstance(values, list) and len(values) == n and all(v in (0, 1) for v in values):
            return [bool(v) for v in values]
    return None

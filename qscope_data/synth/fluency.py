"""Degenerate-text rejection: a candidate that is token soup is not a sample, however hard it fires its feature.

Why: steering along a feature strongly enough writes strings like "Theperson342916578_LUPVINIINGLE…номерномер…"
that fire the feature when re-encoded — verification alone cannot tell a request from a feature-activating string.
Two measures, each cheap and model-agnostic:

- perplexity under the verifying model as loaded (never steered): exp(mean NLL) of the text's tokens after the
  tokenizer's own special prefix (Gemma's BOS; a tokenizer without one leaves the first token unscored). The bound
  is relative — `max_perplexity_ratio` × the median perplexity of the run's reference texts (the gaps' examples) —
  so it transfers between models: on the demo's Gemma the examples' median is ≈ 60, word soup is in the thousands.
- repetition: the share of the text's character n-grams (whitespace collapsed) that repeat an earlier one. A loop
  ("номерномерномер…", "Lightning Lightning Lightning…") is predictable, so its perplexity can be low; this
  catches it. Natural requests of a sentence or two score ≈ 0.

The targeted run and the random baseline are judged by the same check with the same bound.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from qscope_data.capture import LoadedModel


class FluencyOptions(BaseModel):
    """Bounds of degenerate-text rejection (`qscope synth --fluency-max-perplexity-ratio/--fluency-max-repetition`)."""

    model_config = ConfigDict(extra="forbid")

    max_perplexity_ratio: float | None = Field(
        20.0, gt=1.0, description="reject a candidate whose perplexity exceeds this × the reference texts' median "
                                  "(None: no perplexity bound)")
    max_repetition: float | None = Field(
        0.25, gt=0.0, le=1.0, description="reject a candidate whose share of repeated character n-grams exceeds this "
                                          "(None: no repetition bound)")
    ngram: int = Field(10, ge=2, description="n of the repetition measure's character n-grams")
    max_tokens: int = Field(256, ge=8, description="perplexity is measured on a text's first N tokens")


def repetition(text: str, n: int = 10) -> float:
    """Share of the character n-grams of `text` (runs of whitespace collapsed to one space) that occurred earlier
    in it: 0 for text that never repeats n characters, → 1 for a loop."""
    s = " ".join(text.split())
    total = len(s) - n + 1
    if total <= 1:
        return 0.0
    seen: set[str] = set()
    repeats = 0
    for i in range(total):
        gram = s[i:i + n]
        if gram in seen:
            repeats += 1
        else:
            seen.add(gram)
    return repeats / total


def scored_perplexity(lm: LoadedModel, ids: list[int], start: int) -> float | None:
    """exp(mean NLL) of the tokens `ids[start:]`, each given all tokens before it, under the model as loaded (the
    first token, having no context, is never scored); None when nothing is left to score."""
    start = max(start, 1)
    if start >= len(ids):
        return None
    x = torch.tensor([ids], device=lm.device)
    with torch.inference_mode():
        logits = lm.model(input_ids=x).logits[0, start - 1:-1].float()
    nll = torch.nn.functional.cross_entropy(logits, x[0, start:], reduction="mean")
    return float(math.exp(min(float(nll), 50.0)))


def perplexity(lm: LoadedModel, text: str, *, max_tokens: int = 256) -> float | None:
    """Perplexity of the whole text (the tokenizer's special prefix as context, not scored); None when fewer than
    one token can be scored."""
    ids = lm.tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_tokens)["input_ids"]
    return scored_perplexity(lm, ids, 1)


@dataclass(frozen=True)
class FluencyVerdict:
    perplexity: float | None
    repetition: float
    reason: str | None  # None: fluent

    @property
    def degenerate(self) -> bool:
        return self.reason is not None

    def detail(self) -> str:
        ppl = "–" if self.perplexity is None else f"{self.perplexity:.4g}"
        return f"{self.reason} (perplexity {ppl}, repetition {self.repetition:.2f})"


class FluencyCheck:
    """One run's degenerate-text check: the perplexity bound is fixed at construction from the reference texts."""

    def __init__(self, lm: LoadedModel | None, references: list[str], options: FluencyOptions | None = None):
        self.lm, self.options = lm, options or FluencyOptions()
        o = self.options
        self.reference_median: float | None = None
        self.max_perplexity: float | None = None
        if lm is not None and o.max_perplexity_ratio is not None and getattr(lm, "is_causal", False):
            ppl = [p for p in (perplexity(lm, t, max_tokens=o.max_tokens) for t in references) if p is not None]
            if ppl:
                self.reference_median = statistics.median(ppl)
                self.max_perplexity = o.max_perplexity_ratio * self.reference_median
        self._cache: dict[str, FluencyVerdict] = {}

    def check(self, text: str) -> FluencyVerdict:
        if text not in self._cache:
            o = self.options
            rep = repetition(text, o.ngram)
            ppl = perplexity(self.lm, text, max_tokens=o.max_tokens) if self.max_perplexity is not None else None
            reason = None
            if o.max_repetition is not None and rep > o.max_repetition:
                reason = f"repetition {rep:.2f} > {o.max_repetition:g}"
            elif ppl is not None and self.max_perplexity is not None and ppl > self.max_perplexity:
                reason = (f"perplexity {ppl:.4g} > {o.max_perplexity_ratio:g} × the references' median "
                          f"{self.reference_median:.4g}")
            self._cache[text] = FluencyVerdict(ppl, rep, reason)
        return self._cache[text]

    def describe(self) -> dict:
        return {**self.options.model_dump(), "reference_median_perplexity": self.reference_median,
                "max_perplexity": self.max_perplexity}

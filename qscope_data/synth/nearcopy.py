"""Near-copy rejection: a synthetic candidate that repeats a reference example is not new data.

Why: re-encoding a pasted window of a feature's top-activating text fires that feature by construction, so
verification alone cannot tell generation from copying. A candidate is a near-copy of an example when

- it is verbatim: equal after normalisation, or one contains the other and the contained text is at least
  `verbatim_min_words` words long;
- the word 3-gram Jaccard similarity of the two is ≥ `jaccard`; or
- it holds ≥ `containment` of the example's word 3-grams (a pasted window inside new words).

"Words" are whitespace tokens, lower-cased, punctuation stripped; Han, kana, Hangul and Thai characters are one word
each, so unspaced scripts are compared on character 3-grams. Novelty = 1 − max over examples of max(Jaccard,
containment): 1 shares no 3-gram with any example, 0 is a copy.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable

from pydantic import BaseModel, ConfigDict, Field

_UNSPACED = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\u0e00-\u0e7f])")
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


class NearCopyOptions(BaseModel):
    """Thresholds of near-copy rejection (`qscope synth --near-copy-jaccard/--near-copy-containment`)."""

    model_config = ConfigDict(extra="forbid")

    jaccard: float = Field(0.6, gt=0.0, le=1.0, description="word 3-gram Jaccard with an example at which a candidate is a near-copy")
    containment: float = Field(0.6, gt=0.0, le=1.0, description="share of an example's word 3-grams a candidate may hold")
    verbatim_min_words: int = Field(5, ge=1, description="a contained example (or candidate) this long is a verbatim copy")


def words(text: str) -> list[str]:
    """Normalised word tokens (unspaced-script characters are one word each)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _UNSPACED.sub(r" \1 ", _PUNCT.sub(" ", text))
    return text.split()


def trigrams(tokens: list[str]) -> set[tuple[str, ...]]:
    if len(tokens) < 3:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)}


@dataclass(frozen=True)
class _Example:
    index: int
    joined: str
    n_words: int
    grams: frozenset


@dataclass(frozen=True)
class CopyVerdict:
    kind: str | None  # "verbatim" | "jaccard" | "containment" | None (not a copy)
    example: int | None  # index of the example it copies (or is closest to)
    jaccard: float
    containment: float

    @property
    def is_copy(self) -> bool:
        return self.kind is not None

    @property
    def novelty(self) -> float:
        return round(1.0 - max(self.jaccard, self.containment), 6)

    def detail(self) -> str:
        return (f"{self.kind} copy of reference example {self.example} (3-gram Jaccard {self.jaccard:.2f}, "
                f"containment {self.containment:.2f})")


class NearCopyCheck:
    """Compares candidates against a fixed set of reference examples."""

    def __init__(self, examples: Iterable[str], options: NearCopyOptions | None = None):
        self.options = options or NearCopyOptions()
        self._examples = []
        for i, ex in enumerate(examples):
            toks = words(ex)
            if toks:
                self._examples.append(_Example(i, " ".join(toks), len(toks), frozenset(trigrams(toks))))

    def check(self, text: str) -> CopyVerdict:
        o = self.options
        toks = words(text)
        joined, grams = " ".join(toks), trigrams(toks)
        best = CopyVerdict(None, None, 0.0, 0.0)
        for ex in self._examples:
            if not joined:
                break
            shorter, n_short = (joined, len(toks)) if len(toks) <= ex.n_words else (ex.joined, ex.n_words)
            longer = ex.joined if shorter is joined else joined
            inter = len(grams & ex.grams)
            jac = inter / len(grams | ex.grams) if grams or ex.grams else 0.0
            cont = inter / len(ex.grams) if ex.grams else 0.0
            if joined == ex.joined or (n_short >= o.verbatim_min_words and f" {shorter} " in f" {longer} "):
                return CopyVerdict("verbatim", ex.index, round(jac, 6), round(cont, 6))
            kind = "jaccard" if jac >= o.jaccard else "containment" if cont >= o.containment else None
            if kind is not None:
                return CopyVerdict(kind, ex.index, round(jac, 6), round(cont, 6))
            if max(jac, cont) > max(best.jaccard, best.containment):
                best = CopyVerdict(None, ex.index, round(jac, 6), round(cont, 6))
        return best

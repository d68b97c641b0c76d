"""Exact and near-duplicate removal, keeping the first occurrence in the order given.

Why both: exact duplicates (the same text, whitespace aside) are cheap to find and always removed; near duplicates
(a lightly edited copy: a changed word, extra punctuation, a boilerplate line) over-weight one document in
fine-tuning just as much.

Definitions (the defaults are the documented contract; docs/curate.md):

- exact: the same content after Unicode NFC and whitespace collapsing; for conversations roles count too.
- near: Jaccard similarity ≥ ``threshold`` (default 0.8) of the documents' sets of word 5-grams. Words are
  lower-cased NFKC ``\\w`` runs; Chinese, Japanese and Korean characters are one word each (those scripts have no
  spaces). A document of fewer than 5 words is one shingle (all its words), so short texts match only when their
  words are identical. Candidates come from MinHash LSH (``num_perm`` = 128 permutations, seed 1; bands tuned for
  ``threshold`` − 0.1 with false negatives weighted 9:1, i.e. 20 bands of 6 rows at the default: a pair at
  Jaccard 0.8 is a candidate with probability 0.998, at 0.7 with 0.92); each candidate is then confirmed with the
  exact Jaccard of the two shingle sets, so LSH can only cost recall, never precision. The fixed seed and hashes
  (CRC-32 of each shingle, then datasketch's affine32 permutations) make results reproducible: the same documents
  in the same order give the same decisions. With word 5-grams one edited word changes up to 5 shingles: a single
  edit keeps a document of ~50+ words above 0.8, two edits need ~90+ words.

The caller orders the documents (input records first, then synthetic ones) so that "first" is the one to keep.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Literal

DEFAULT_THRESHOLD = 0.8
NGRAM = 5
NUM_PERM = 128
SEED = 1
LSH_MARGIN = 0.1
LSH_WEIGHTS = (0.1, 0.9)  # (false positive, false negative): candidates are confirmed exactly, so favour recall

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Duplicate:
    kind: Literal["duplicate", "near_duplicate"]
    of: str  # doc_id of the kept document
    similarity: float  # 1.0 for exact duplicates


@dataclass(frozen=True)
class DedupDoc:
    doc_id: str
    text: str | None = None
    messages: list[dict] | None = None


def _norm(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def exact_key(doc: DedupDoc) -> str:
    """Hash of the normalised content (roles included for conversations)."""
    if doc.messages is not None:
        payload = json.dumps([[m.get("role"), _norm(str(m.get("content", "")))] for m in doc.messages], ensure_ascii=False)
    else:
        payload = _norm(doc.text or "")
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def plain_text(doc: DedupDoc) -> str:
    if doc.messages is not None:
        return "\n".join(str(m.get("content", "")) for m in doc.messages)
    return doc.text or ""


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def shingle_hashes(text: str, ngram: int = NGRAM) -> frozenset[int]:
    """32-bit hashes of the word n-grams (one shingle of all words when there are fewer than n)."""
    toks = words(text)
    if not toks:
        return frozenset()
    grams = [" ".join(toks)] if len(toks) < ngram else [" ".join(toks[i:i + ngram]) for i in range(len(toks) - ngram + 1)]
    return frozenset(zlib.crc32(g.encode("utf-8")) for g in grams)


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def minhash_template(num_perm: int = NUM_PERM, seed: int = SEED):
    """The empty MinHash every signature starts from (its permutations are drawn once, from the seed)."""
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed, hashfunc=int, scheme="affine32")


def signature(template, shingles: frozenset[int]):
    """MinHash of a shingle set (fed in sorted order, so the result does not depend on set iteration order)."""
    mh = template.copy()
    mh.update_batch(sorted(shingles))
    return mh


def lsh_threshold(threshold: float) -> float:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"near-duplicate threshold {threshold} is not in (0, 1]")
    return max(threshold - LSH_MARGIN, 0.05)


def lsh_bands(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's MinHashLSH picks for this threshold (the Ray path bands the same)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=lsh_threshold(threshold), num_perm=num_perm, weights=LSH_WEIGHTS)
    return lsh.b, lsh.r


class NearDuplicateIndex:
    """MinHash LSH over the kept documents; candidates are confirmed by exact Jaccard, the earliest match wins."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, *, num_perm: int = NUM_PERM, seed: int = SEED):
        from datasketch import MinHashLSH

        self.threshold = threshold
        self._empty = minhash_template(num_perm, seed)
        self._lsh = MinHashLSH(threshold=lsh_threshold(threshold), num_perm=num_perm, weights=LSH_WEIGHTS)
        self._kept: list[tuple[str, frozenset[int]]] = []

    def match_or_add(self, doc_id: str, shingles: frozenset[int]) -> tuple[str, float] | None:
        """The earliest kept document at Jaccard ≥ threshold with the similarity; None when there is none, and then
        this document is kept (indexed) itself. One signature per document."""
        if not shingles:
            return None
        sig = signature(self._empty, shingles)
        best: tuple[int, float] | None = None
        for idx in self._lsh.query(sig):
            sim = jaccard(shingles, self._kept[idx][1])
            if sim >= self.threshold and (best is None or idx < best[0]):
                best = (idx, sim)
        if best is not None:
            return self._kept[best[0]][0], best[1]
        self._lsh.insert(len(self._kept), sig)
        self._kept.append((doc_id, shingles))
        return None


def find_duplicates(
    docs: Iterable[DedupDoc], *, near: bool = True, threshold: float = DEFAULT_THRESHOLD,
    ngram: int = NGRAM, num_perm: int = NUM_PERM, seed: int = SEED, on_doc: Callable[[], None] | None = None,
) -> dict[str, Duplicate]:
    """doc_id → Duplicate for every document that repeats an earlier one (exact first, then near)."""
    seen: dict[str, str] = {}
    index = NearDuplicateIndex(threshold, num_perm=num_perm, seed=seed) if near else None
    out: dict[str, Duplicate] = {}
    for doc in docs:
        if on_doc is not None:
            on_doc()
        key = exact_key(doc)
        if key in seen:
            out[doc.doc_id] = Duplicate("duplicate", seen[key], 1.0)
            continue
        seen[key] = doc.doc_id
        if index is None:
            continue
        hit = index.match_or_add(doc.doc_id, shingle_hashes(plain_text(doc), ngram))
        if hit is not None:
            out[doc.doc_id] = Duplicate("near_duplicate", hit[0], round(hit[1], 6))
    return out

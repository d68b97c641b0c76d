"""Dropping repeated candidates before they are verified: exact repeats and near duplicates of any earlier candidate
of the run (accepted or not: a retry that reproduces a failed prompt is not worth re-encoding).

Candidates are compared on their user prompt, not the whole conversation: responses are often near-identical
refusals, which would make every pair of samples look alike. Definitions and the near-duplicate index are the
curation stage's (`qscope_data.curate.dedup`: NFC/whitespace-normalised exact key; Jaccard of word 5-gram
shingles ≥ threshold, candidates from MinHash LSH, confirmed exactly), so "duplicate" means one thing everywhere.
"""

from __future__ import annotations

from qscope_data.curate.dedup import DEFAULT_THRESHOLD, DedupDoc, Duplicate, NearDuplicateIndex, exact_key, shingle_hashes


class CandidateDedup:
    """Feed candidates in a fixed order; `check` says whether one repeats an earlier one, and remembers it if not."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, *, near: bool = True):
        self._exact: dict[str, str] = {}
        self._near = NearDuplicateIndex(threshold) if near else None

    def check(self, candidate_id: str, prompt: str) -> Duplicate | None:
        key = exact_key(DedupDoc(candidate_id, text=prompt))
        if key in self._exact:
            return Duplicate("duplicate", self._exact[key], 1.0)
        self._exact[key] = candidate_id
        if self._near is None:
            return None
        hit = self._near.match_or_add(candidate_id, shingle_hashes(prompt))
        return None if hit is None else Duplicate("near_duplicate", hit[0], round(hit[1], 6))

"""The random baseline of targeted synthesis, run in the same `qscope synth` call (`--baseline random N`).

Why: "targeted synthesis covers the gaps" means something only beside what untargeted synthesis of the same kind
achieves. The baseline writes N samples with the same generator: each few-shot prompt draws its shots at random
from the whole harmful reference pool (no target feature, no description, never steered), responses as for the
targeted samples, the same exact/near-duplicate, near-copy (against the whole pool) and degenerate-text rejection
(the targeted run's check and bound) and the same verification encode. A sample is accepted when it is no copy, is
fluent and fires at least one gap feature above the threshold ("not_firing" otherwise); gap coverage is the share
of gap features that fire on ≥ 1 accepted sample — the measure the targeted run is reported with beside it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from qscope_data.errors import UsageError
from qscope_data.inputs import Record, iter_records
from qscope_data.synth.dedup import CandidateDedup
from qscope_data.synth.fewshot import user_text
from qscope_data.synth.fluency import FluencyCheck
from qscope_data.synth.nearcopy import NearCopyCheck, NearCopyOptions
from qscope_data.synth.requests import GapTarget, Slot, prompt_request, response_request, written_language
from qscope_data.synth.verify import Candidate, Verifier

RANDOM_FEATURE = -1  # a baseline slot's target: none


def load_pool(paths: list[str], *, field_name: str, benign: list[str]) -> list[str]:
    """The harmful reference texts: records of `paths` whose `field_name` is set and not a benign category."""
    benign_set = {b.lower() for b in benign}
    pool: list[str] = []
    for rec in iter_records(paths):
        if not isinstance(rec, Record):
            continue
        value = rec.fields.get(field_name)
        if value is None or str(value).lower() in benign_set:
            continue
        text = rec.text if rec.text is not None else " ".join(
            m.get("content", "") for m in rec.messages or [] if m.get("role") == "user")
        text = user_text(text or "")
        if text:
            pool.append(text)
    if not pool:
        raise UsageError(f"--baseline-pool {', '.join(paths)}: no record with a non-benign {field_name!r}")
    return list(dict.fromkeys(pool))


@dataclass
class BaselineResult:
    requested: int
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    covered: list[int] = field(default_factory=list)  # gap features firing on ≥ 1 accepted sample
    novelty: list[float] = field(default_factory=list)  # of every candidate that reached verification

    def summary(self, gap_ids: list[int], pool_source: str, pool_size: int) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for r in self.rejected:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        return {
            "requested": self.requested, "candidates": self.requested, "accepted": len(self.accepted),
            "rejected_by_reason": dict(sorted(reasons.items())),
            "gap_coverage": {"covered": len(self.covered), "total": len(gap_ids),
                             "fraction": round(len(self.covered) / len(gap_ids), 6) if gap_ids else None},
            "covered_features": sorted(self.covered), "pool": pool_source, "pool_size": pool_size,
            "novelty_accepted": [r["novelty"] for r in self.accepted],
        }


def fired_gaps(table, row: int, gap_ids: list[int], threshold: float) -> dict[int, float]:
    """Gap features whose activation on verification row `row` exceeds the threshold."""
    ids, acts = table.column("feature_ids")[row].as_py(), table.column("max_acts")[row].as_py()
    found = dict(zip(ids, acts))
    return {f: float(found[f]) for f in gap_ids if found.get(f, 0.0) > threshold}


def run_random_baseline(n: int, pool: list[str], languages: list[str], generate: Callable, verifier: Verifier,
                        gap_ids: list[int], *, threshold: float, shots: int, near_copy: NearCopyOptions,
                        fluency: FluencyCheck,
                        near_duplicate_threshold: float, seed: int = 0) -> BaselineResult:
    """N untargeted samples (see the module docstring). `generate(requests)` is the synthesis loop's generator call."""
    rng = random.Random(seed)
    check = NearCopyCheck(pool, near_copy)
    dedup = CandidateDedup(near_duplicate_threshold)
    slots = []
    for i in range(n):
        sample = tuple(rng.sample(pool, min(max(shots, 1), len(pool))))
        target = GapTarget(feature=RANDOM_FEATURE, category="any", label=None, description=None, examples=sample,
                           harmful=True)
        slots.append(Slot(f"random-{i:04d}", target, i, languages[i % len(languages)], "plain"))
    out = BaselineResult(requested=n)

    def reject(slot: Slot, reason: str, detail: str, prompt: str | None = None, **extra: Any) -> None:
        out.rejected.append({"id": slot.id, "lang": slot.lang, "reason": reason, "detail": detail, "prompt": prompt,
                             **extra})

    prompts: dict[str, str] = {}
    novelty: dict[str, float] = {}
    for slot, res in zip(slots, generate([prompt_request(s, 1) for s in slots])):
        if not res.ok:
            reject(slot, "generator_error", f"prompt: {res.error}")
            continue
        verdict = check.check(res.text)
        if verdict.is_copy:
            reject(slot, "near_copy", verdict.detail(), res.text, novelty=verdict.novelty)
            continue
        fluent = fluency.check(res.text)
        if fluent.degenerate:
            reject(slot, "degenerate", fluent.detail(), res.text, novelty=verdict.novelty)
            continue
        dup = dedup.check(slot.id, res.text)
        if dup is not None:
            reject(slot, dup.kind, f"prompt repeats candidate {dup.of} (similarity {dup.similarity:.3f})", res.text)
            continue
        prompts[slot.id], novelty[slot.id] = res.text, verdict.novelty
    answer = [s for s in slots if s.id in prompts]
    candidates: list[tuple[Slot, Candidate]] = []
    langs = {s.id: written_language(prompts[s.id], s.lang) for s in answer}
    for slot, res in zip(answer, generate([response_request(s, 1, prompts[s.id], langs[s.id]) for s in answer])):
        if not res.ok:
            reject(slot, "generator_error", f"response: {res.error}", prompts[slot.id])
            continue
        messages = [{"role": "user", "content": prompts[slot.id]}, {"role": "assistant", "content": res.text}]
        candidates.append((slot, Candidate(slot.id, messages, RANDOM_FEATURE)))
    out.novelty = [novelty[s.id] for s, _ in candidates]
    if not candidates:
        return out
    result = verifier.verify([c for _, c in candidates])
    covered: set[int] = set()
    for slot, cand in candidates:
        verdict = result.verdicts[cand.id]
        if verdict.error is not None:
            reject(slot, "not_encodable", verdict.error, prompts[slot.id])
            continue
        fired = fired_gaps(result.table, verdict.row, gap_ids, threshold)  # type: ignore[arg-type]
        if not fired:
            reject(slot, "not_firing", f"no gap feature exceeds {threshold:g}", prompts[slot.id],
                   novelty=novelty[slot.id])
            continue
        covered |= set(fired)
        out.accepted.append({"id": slot.id, "messages": cand.messages, "lang": langs[slot.id], "fired_gaps": fired,
                             "novelty": novelty[slot.id]})
    out.covered = sorted(covered)
    return out


def pool_source(paths: list[str] | None) -> str:
    return ", ".join(Path(p).name for p in paths) if paths else "the gap report's examples"

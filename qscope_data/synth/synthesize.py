"""The synthesis stage: fill measured safety-coverage gaps with samples that provably reach their target feature.

For each gap feature of a `gaps.json` (from `qscope gaps`), `per_feature` slots (one wanted sample each, spread over
the languages and the plain / role-play / hypothetical / obfuscation framings). Each attempt at a slot asks the
generator for a plain prompt, an adversarial rewrite (non-plain slots) and a response (a refusal for harmful
categories, a helpful answer for benign ones), drops exact and near-duplicate prompts, and re-encodes the candidate
with the verifying model + SAE through the encode stage. The candidate is kept only if the target feature fires
above `threshold` on what is verified (the prompt, or the whole conversation); otherwise the slot is retried with
feedback until `max_attempts`. All slots advance together, one attempt per round, so a round is three batched
generator calls and one batched encode.

Output folder (every file written atomically; summary.json last):

    accepted.jsonl / accepted.parquet   id, messages (ending in an assistant turn), target_feature, category, lang,
                                        generator, attempts, activation, verified, variant, label, threshold
    rejected.jsonl                      one line per slot that was not filled: reason, detail, attempt history
    store/                              the accepted samples as a feature store (the verification encode itself), so
                                        `qscope gaps --target TARGET --target DIR/store` can be rerun on them
    summary.json                        per feature: attempts, accepted, acceptance rate; coverage before → after
    report.html, synth.png              the same, for people

Coverage before → after is `qscope_data.coverage.gaps.compute_gaps` on the gap report's target stores, then on
those stores plus `store/` — the function `qscope gaps` runs, so the numbers match a rerun of it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field

from qscope_data import atomic
from qscope_data.synth import templates
from qscope_data.capture import LoadedModel, check_layers, load_model
from qscope_data.coverage.gaps import GapReport, compute_gaps, load_gaps
from qscope_data.coverage.inventory import Inventory, InventoryFeature, Provenance, load_inventory
from qscope_data.encode import check_compatible, code_version
from qscope_data.errors import DataError, QscopeError, UsageError
from qscope_data.progress import Bar
from qscope_data.result import Result
from qscope_data.sae import SparseAutoencoder, load_sae
from qscope_data.store import FeatureStore, SAEInfo, StoreManifest, write_store
from qscope_data.synth.baseline import fired_gaps, load_pool, pool_source, run_random_baseline
from qscope_data.synth.dedup import CandidateDedup
from qscope_data.synth.fewshot import user_text
from qscope_data.synth.fluency import FluencyCheck
from qscope_data.synth.keywords import firing_words
from qscope_data.synth.nearcopy import NearCopyCheck
from qscope_data.synth.options import SynthInputs, SynthOptions
from qscope_data.synth.output import (
    ACCEPTED_JSONL,
    ACCEPTED_PARQUET,
    ACCEPTED_SCHEMA,
    BASELINE_DIR,
    REJECTED_JSONL,
    STORE_DIR,
    SUMMARY_JSON,
)
from qscope_data.synth.generators import Generator, GenerationResult, build_generator
from qscope_data.synth.report import FIGURE, NOVELTY_FIGURE, REPORT, write_synth_report
from qscope_data.synth.requests import (
    GapTarget,
    GenerationRequest,
    Slot,
    candidate_id,
    feedback_text,
    plan_slots,
    prompt_request,
    response_request,
    rewrite_request,
    written_language,
)
from qscope_data.synth.verify import Candidate, Verifier, verify_options
from qscope_data.torch_dtypes import parse_dtype

STORE_PASSTHROUGH = ("messages", "target_feature", "category", "lang", "generator", "attempts", "activation")




# ------------------------------------------------------------------------------------------------------ run state


@dataclass
class SlotState:
    slot: Slot
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per failed attempt
    accepted: dict[str, Any] | None = None
    store_row: pa.Table | None = None  # its row of the verification encode
    best_activation: float = 0.0
    last_candidate: list[dict] | None = None
    novelty: float | None = None  # of the accepted prompt, against the target's reference examples
    fired: dict[int, float] = field(default_factory=dict)  # gap features the accepted sample fires
    response_source: str = "generated"  # or a template refusal when the generated answer to a harmful ask did not refuse
    lang: str = ""  # the language the last prompt was written in (requests.written_language), "" before one

    @property
    def attempts(self) -> int:
        return len(self.history) + (1 if self.accepted is not None else 0)

    @property
    def done(self) -> bool:
        return self.accepted is not None

    def fail(self, attempt: int, candidate_id: str, reason: str, detail: str, activation: float | None = None) -> None:
        entry: dict[str, Any] = {"attempt": attempt, "candidate": candidate_id, "reason": reason, "detail": detail}
        if activation is not None:
            entry["activation"] = round(activation, 6)
            self.best_activation = max(self.best_activation, activation)
        self.history.append(entry)

    def feedback(self, threshold: float) -> tuple[str | None, float | None]:
        if not self.history:
            return None, None
        last = self.history[-1]
        return feedback_text(last["reason"], last.get("activation"), threshold, self.slot.target.feature), last.get("activation")


class SynthSummary(BaseModel):
    out: str
    generator: dict[str, Any]
    model: dict[str, Any]
    sae: dict[str, Any]
    layer: int
    gaps_file: str
    threshold: float
    verify: str
    languages: list[str]
    variants: list[str]
    per_feature: int
    max_attempts: int
    features: list[dict[str, Any]]
    totals: dict[str, Any]
    coverage: dict[str, Any]
    baseline: dict[str, Any] | None = None  # the random baseline (same generator and verification), when asked
    comparison: dict[str, Any] = Field(default_factory=dict)  # targeted vs random, side by side
    near_copy: dict[str, Any] = Field(default_factory=dict)
    fluency: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    code_version: str = ""


# ------------------------------------------------------------------------------------------------------ the stage


class GenerationFailed(QscopeError):
    """Every generator request failed (bad key, wrong URL, server down): the run wrote no samples and exits 1."""


def _clear_previous(out: Path) -> None:
    """Remove an earlier run's outputs (`--overwrite`) before this run writes any: its summary.json first, so the
    folder never shows one run's summary beside another run's samples (a rerun whose every request failed used to
    leave the old summary claiming success). Only our own names are removed; nothing else in the folder."""
    for name in (SUMMARY_JSON, ACCEPTED_JSONL, ACCEPTED_PARQUET, REJECTED_JSONL, FIGURE, NOVELTY_FIGURE, REPORT):
        (out / name).unlink(missing_ok=True)
    for name in (STORE_DIR, BASELINE_DIR):
        shutil.rmtree(out / name, ignore_errors=True)


def run(options: SynthOptions, inputs: SynthInputs, out: str | Path, *,
        progress: bool | None = None) -> Result[SynthSummary]:
    """The synthesis stage (`qscope synth`, the pipeline's `synth`; see the module docstring), written into `out`.
    The model, SAE and generator come from `inputs` (already built ones there are used as they are). Everything is
    validated before anything is written. `progress`: None draws the bars only on a terminal."""
    start = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if (out / SUMMARY_JSON).exists() and not inputs.overwrite:
        raise UsageError(f"--out {out}: holds a finished synthesis (summary.json); pass --overwrite or choose another folder")
    report = load_gaps(inputs.gaps)
    layer = _resolve_layer(inputs, report)
    targets = _select_targets(options, inputs, report)
    inventory = load_inventory(inputs.inventory) if inputs.inventory else inventory_from_report(report)

    target_store = target_manifest(report)
    recorded = target_store.options if target_store else {}
    encode = verify_options(options.verify, recorded=recorded, max_tokens=inputs.max_tokens,
                            batch_size=inputs.batch_size, device=inputs.device, dtype=inputs.dtype)
    revision = inputs.revision or (target_store.model.get("revision") if target_store else None)
    lm: LoadedModel = inputs.loaded_model
    if lm is None:
        lm = load_model(inputs.model, device=inputs.device, dtype=parse_dtype(encode.dtype), revision=revision)
    check_layers(lm, [layer])
    sae: SparseAutoencoder = inputs.loaded_sae
    if sae is None:
        sae = load_sae(inputs.sae, layer, k=inputs.sae_k, device=inputs.device)
    if sae.layer is not None and sae.layer != layer:
        raise UsageError(f"SAE {inputs.sae} reads the output of block {sae.layer}, not layer {layer}")
    check_compatible(lm, {layer: sae})
    if not getattr(lm.tokenizer, "chat_template", None):
        raise UsageError(f"model {inputs.model}: its tokenizer has no chat template, and candidates are conversations "
                         "(verification renders them as the model reads a chat)")
    _check_sae_matches_report(report, sae, inputs.gaps)
    for t in targets:
        if t.feature >= sae.d_sae:
            raise UsageError(f"gap feature {t.feature} is out of range for the SAE (d_sae={sae.d_sae})")
    generator: Generator = inputs.built_generator
    if generator is None:
        generator = build_generator(options.generator, lm=lm, sae=sae, layer=layer, device=inputs.device,
                                    dtype=parse_dtype(encode.dtype))
    if options.keywords:
        targets = [replace(t, keywords=tuple(firing_words(lm, sae, layer, t.feature, [user_text(e) for e in t.examples],
                                                          encode, top=options.keywords))) for t in targets]
    slots = plan_slots(targets, options.per_feature, options.languages, tuple(options.variants))
    supported = getattr(generator, "languages", None)  # a generator that is limited to some languages says so
    if supported:
        unknown = list(dict.fromkeys(s.lang for s in slots if s.lang not in supported))
        if unknown:
            raise UsageError(f"--languages {','.join(unknown)}: the {generator.name} generator has templates for "
                             f"{', '.join(supported)} only")

    verifier = Verifier(lm, sae, layer, encode)
    states = {s.id: SlotState(s) for s in slots}
    dedup = CandidateDedup(inputs.near_duplicate_threshold)
    copies = {t.feature: NearCopyCheck(t.examples, options.near_copy) for t in targets}
    gap_ids = [t.feature for t in targets]
    examples = list(dict.fromkeys(e for g in report.gaps for e in g.examples if e.strip()))
    pool = (load_pool(inputs.baseline_pool, field_name=inputs.baseline_pool_field, benign=inputs.benign_categories)
            if options.baseline_random and inputs.baseline_pool else examples)
    if options.baseline_random and not pool:
        raise UsageError("--baseline random: no reference texts for its shots (the gap report has no examples; "
                         "pass --baseline-pool)")
    fluency = FluencyCheck(lm, examples, options.fluency)
    tally = {"prompt_candidates": 0, "near_copy_candidates": 0, "degenerate_candidates": 0}
    with Bar("synth slots", len(slots), enabled=progress, unit="slots") as bar:
        for attempt in range(1, options.max_attempts + 1):
            pending = [states[s.id] for s in slots if not states[s.id].done]
            if not pending:
                break
            bar.note(f"attempt {attempt}/{options.max_attempts}")
            _attempt_round(pending, attempt, generator, verifier, dedup, copies, fluency, gap_ids, options, bar, tally)
            bar.advance(sum(1 for st in pending if st.done or attempt == options.max_attempts))
        baseline = None
        if options.baseline_random:
            baseline = run_random_baseline(
                tally["prompt_candidates"] if options.baseline_random == "match" else options.baseline_random, pool,
                [s.lang for s in slots] or ["en"], lambda reqs: _generate(generator, reqs, bar), verifier,
                gap_ids, threshold=options.threshold, shots=inputs.baseline_shots, near_copy=options.near_copy,
                fluency=fluency, near_duplicate_threshold=inputs.near_duplicate_threshold, seed=options.seed)

    _clear_previous(out)
    failed = [st for st in states.values() if st.history and all(h["reason"] == "generator_error" for h in st.history)]
    if slots and len(failed) == len(slots):  # nothing was ever generated: a failure, not "0 accepted"
        atomic.write_text(out / REJECTED_JSONL, "".join(json.dumps(_rejected_row(st, generator.name), ensure_ascii=False)
                                                         + "\n" for st in failed))
        raise GenerationFailed(f"synthesis: every generator request failed ({len(failed)} slot(s); first: "
                               f"{failed[0].history[-1]['detail']}); details in {out / REJECTED_JSONL}")
    warnings: list[str] = []
    # The accepted samples first: the verification store records their hashes, so a consumer (curate) can tell
    # that the samples it mixes in are the ones this store verified.
    accepted = [states[s.id].accepted for s in slots if states[s.id].done]
    rejected = [_rejected_row(states[s.id], generator.name) for s in slots if not states[s.id].done]
    atomic.write_text(out / ACCEPTED_JSONL, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in accepted))
    atomic.write_parquet(out / ACCEPTED_PARQUET, pa.Table.from_pylist(accepted, schema=ACCEPTED_SCHEMA))
    atomic.write_text(out / REJECTED_JSONL, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected))
    store_table = _store_table(states, slots, report)
    manifest = StoreManifest(
        model=lm.describe(),
        saes=[SAEInfo(layer=layer, source=sae.source, format=sae.format, k=sae.k, d_sae=sae.d_sae, d_model=sae.d_model,
                      hook=sae.hook)],
        options=verifier.options.output_options(),
        inputs={"synth": str(out.resolve()), "gaps": str(Path(inputs.gaps).resolve()), "generator": generator.name,
                "accepted_sha256": {name: atomic.sha256_file(out / name) for name in (ACCEPTED_JSONL, ACCEPTED_PARQUET)}},
        code_version=code_version(),
    )
    store = write_store(out / STORE_DIR, {layer: store_table}, manifest)
    coverage = coverage_change(report, inventory, store, [t.feature for t in targets], layer, warnings)

    features = _feature_summaries(targets, states, slots, coverage)
    n_attempts = sum(st.attempts for st in states.values())
    covered_targeted = sorted({f for st in states.values() if st.done for f in st.fired})
    attempt_reasons = _count(h["reason"] for st in states.values() for h in st.history)
    comparison: dict[str, Any] = {"targeted": {
        "candidates": tally["prompt_candidates"], "near_copy_candidates": tally["near_copy_candidates"],
        "degenerate_candidates": tally["degenerate_candidates"],
        "attempts": n_attempts, "accepted": len(accepted), "rejected_attempts_by_reason": attempt_reasons,
        "gap_coverage": _subset(len(covered_targeted), len(gap_ids)), "covered_features": covered_targeted,
        "novelty_accepted": [st.novelty for s in slots if (st := states[s.id]).done],
    }}
    baseline_summary = None
    if baseline is not None:
        baseline_summary = baseline.summary(gap_ids, pool_source(inputs.baseline_pool), len(pool))
        comparison["random"] = baseline_summary
        bdir = out / BASELINE_DIR
        atomic.write_text(bdir / ACCEPTED_JSONL, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in baseline.accepted))
        atomic.write_text(bdir / REJECTED_JSONL, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in baseline.rejected))
    totals = {
        "features": len(targets), "requested": len(slots), "accepted": len(accepted), "rejected": len(rejected),
        "attempts": n_attempts, "acceptance_rate": _rate(len(accepted), n_attempts),
        "fill_rate": _rate(len(accepted), len(slots)),
        "features_filled": sum(1 for f in features if f["accepted"] > 0),
        "target_feature_coverage": _rate(sum(1 for f in features if f["accepted"] > 0), len(targets)),
        "rejected_by_reason": _count(r["reason"] for r in rejected),
        "rejected_attempts_by_reason": attempt_reasons,
    }
    summary = SynthSummary(
        out=str(out), generator=generator.describe(), model=lm.describe(), sae=sae.describe(), layer=layer,
        gaps_file=str(Path(inputs.gaps).resolve()), threshold=options.threshold, verify=options.verify,
        languages=options.languages, variants=list(options.variants), per_feature=options.per_feature,
        max_attempts=options.max_attempts, features=features, totals=totals, coverage=coverage,
        baseline=baseline_summary, comparison=comparison, near_copy=options.near_copy.model_dump(), fluency=fluency.describe(),
        warnings=[*report.warnings, *warnings], seconds=round(time.perf_counter() - start, 3), code_version=code_version(),
    )
    written = write_synth_report(summary.model_dump(mode="json"), out)
    atomic.write_json(out / SUMMARY_JSON, summary.model_dump(mode="json"))
    outputs = {"synth": out, ACCEPTED_JSONL: out / ACCEPTED_JSONL, ACCEPTED_PARQUET: out / ACCEPTED_PARQUET,
               REJECTED_JSONL: out / REJECTED_JSONL, STORE_DIR: out / STORE_DIR, SUMMARY_JSON: out / SUMMARY_JSON}
    if baseline is not None:
        outputs[BASELINE_DIR] = out / BASELINE_DIR
    return Result(summary, outputs | written, {"totals": totals, "seconds": summary.seconds})


def _attempt_round(pending: list[SlotState], attempt: int, generator: Generator, verifier: Verifier,
                   dedup: CandidateDedup, copies: dict[int, NearCopyCheck], fluency: FluencyCheck, gap_ids: list[int],
                   opts: SynthOptions, bar: Bar, tally: dict[str, int]) -> None:
    """One attempt for every pending slot: `candidates` prompts → rewrites → near-copy and degenerate-text checks →
    screening → dedup → response → verify → accept or record why not. A near-copy of one of the target's reference
    examples is dropped before anything else (it would fire the feature by construction, and it is not new data),
    and so is token soup (`qscope_data.synth.fluency`: it can fire a feature without being a request). With several
    candidates, each surviving prompt is encoded alone and the one whose prompt fires the target feature most goes
    on (screening picks; the verification of the finished sample decides)."""
    owners: list[SlotState] = []
    reqs = []
    for st in pending:
        feedback, previous = st.feedback(opts.threshold)
        for j in range(opts.candidates):
            reqs.append(prompt_request(st.slot, attempt, feedback, previous, candidate=j))
            owners.append(st)
    written: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    for st, res in zip(owners, _generate(generator, reqs, bar)):
        if res.ok:
            written.setdefault(st.slot.id, []).append(res.text)  # type: ignore[arg-type]
        else:
            errors.setdefault(st.slot.id, f"prompt: {res.error}")
    tally["prompt_candidates"] += len(reqs)

    rewrite = [(st, j) for st in pending if st.slot.variant != "plain" for j in range(len(written.get(st.slot.id, [])))]
    results = _generate(generator, [rewrite_request(st.slot, attempt, written[st.slot.id][j], candidate=j)
                                    for st, j in rewrite], bar)
    for (st, j), res in zip(rewrite, results):
        if not res.ok:
            errors.setdefault(st.slot.id, f"rewrite: {res.error}")
        written[st.slot.id][j] = res.text if res.ok else ""  # type: ignore[assignment]

    options: dict[str, list[tuple[str, float]]] = {}  # slot id → (prompt, novelty) that are no copy
    for st in pending:
        texts = [t for t in written.get(st.slot.id, []) if t]
        if not texts:
            st.fail(attempt, candidate_id(st.slot, attempt), "generator_error", errors.get(st.slot.id, "no candidate"))
            continue
        keep = []
        for text in texts:
            verdict = copies[st.slot.target.feature].check(text)
            if verdict.is_copy:
                tally["near_copy_candidates"] += 1
                last_bad = (text, "near_copy", verdict.detail())
            elif (fluent := fluency.check(text)).degenerate:
                tally["degenerate_candidates"] += 1
                last_bad = (text, "degenerate", fluent.detail())
            else:
                keep.append((text, verdict.novelty))
        if keep:
            options[st.slot.id] = keep
        else:
            st.last_candidate = [{"role": "user", "content": last_bad[0]}]
            st.fail(attempt, candidate_id(st.slot, attempt), last_bad[1], last_bad[2])

    if opts.candidates > 1:
        _screen(options, pending, verifier, attempt)
    prompts: dict[str, str] = {}
    novelty: dict[str, float] = {}
    for st in [st for st in pending if st.slot.id in options]:
        cid = candidate_id(st.slot, attempt)
        for text, nov in options[st.slot.id]:  # best screened first: the first that repeats no earlier candidate
            dup = dedup.check(cid, text)
            if dup is None:
                prompts[st.slot.id], novelty[st.slot.id] = text, nov
                break
        else:
            st.last_candidate = [{"role": "user", "content": options[st.slot.id][0][0]}]
            st.fail(attempt, cid, dup.kind, f"prompt repeats candidate {dup.of} (similarity {dup.similarity:.3f})")

    answer = [st for st in pending if st.slot.id in prompts]
    for st in answer:
        st.lang = written_language(prompts[st.slot.id], st.slot.lang)
    candidates: list[tuple[SlotState, Candidate]] = []
    requests = [response_request(st.slot, attempt, prompts[st.slot.id], st.lang) for st in answer]
    for st, res in zip(answer, _generate(generator, requests, bar)):
        cid = candidate_id(st.slot, attempt)
        if not res.ok:
            st.fail(attempt, cid, "generator_error", f"response: {res.error}")
            continue
        response, st.response_source = res.text, "generated"
        why = None
        if st.slot.target.harmful and not templates.is_refusal(response):
            why = "did not refuse"
        elif st.slot.target.harmful and written_language(response, st.lang) != st.lang:
            why = "was in another language"
        if why:
            response = templates.refusal(st.lang, st.slot.target.concept, attempt)
            st.response_source = f"template refusal (the generated answer {why})"
        messages = [{"role": "user", "content": prompts[st.slot.id]}, {"role": "assistant", "content": response}]
        st.last_candidate = messages
        candidates.append((st, Candidate(cid, messages, st.slot.target.feature)))

    if not candidates:
        return
    result = verifier.verify([c for _, c in candidates])
    for st, cand in candidates:
        verdict = result.verdicts[cand.id]
        if verdict.error is not None:
            st.fail(attempt, cand.id, "not_encodable", verdict.error)
        elif verdict.fires(opts.threshold):
            st.accepted = _accepted_row(st, cand, verdict.activation, attempt, generator.name, verifier.target, opts.threshold)
            st.store_row = result.table.slice(verdict.row, 1)
            st.novelty = novelty[st.slot.id]
            st.fired = fired_gaps(result.table, verdict.row, gap_ids, opts.threshold)  # type: ignore[arg-type]
        else:
            st.fail(attempt, cand.id, "below_threshold",
                    f"feature {cand.target_feature} reached {verdict.activation:.6g}, needs > {opts.threshold:g}",
                    verdict.activation)


def _screen(options: dict[str, list[tuple[str, float]]], pending: list[SlotState], verifier: Verifier,
             attempt: int) -> None:
    """Order each slot's candidate prompts by the target feature's activation on the prompt alone (best first)."""
    screened = [Candidate(candidate_id(st.slot, attempt, j), [{"role": "user", "content": text}], st.slot.target.feature)
                for st in pending for j, (text, _) in enumerate(options.get(st.slot.id, []))]
    if not screened:
        return
    verdicts = verifier.verify(screened).verdicts
    for st in pending:
        if st.slot.id in options:
            acts = [verdicts[candidate_id(st.slot, attempt, j)].activation for j in range(len(options[st.slot.id]))]
            order = sorted(range(len(acts)), key=lambda j: -acts[j])
            options[st.slot.id] = [options[st.slot.id][j] for j in order]


def _generate(generator: Generator, requests: list[GenerationRequest], bar: Bar) -> list[GenerationResult]:
    if not requests:
        return []
    done = [0]

    def on_done(n: int) -> None:
        done[0] += n
        bar.note(f"{done[0]}/{len(requests)} generator calls this round")

    results = generator.generate(requests, on_done=on_done)
    if len(results) != len(requests) or any(r.request_id != q.id for r, q in zip(results, requests)):
        raise RuntimeError(f"generator {generator.name} returned results out of step with its requests")
    return results


def _accepted_row(st: SlotState, cand: Candidate, activation: float, attempt: int, generator: str, verified: str,
                  threshold: float) -> dict[str, Any]:
    s = st.slot
    return {
        "id": s.id, "messages": cand.messages, "target_feature": s.target.feature, "category": s.target.category,
        "lang": st.lang or s.lang, "generator": generator, "attempts": attempt, "activation": round(float(activation), 6),
        "verified": verified, "variant": s.variant, "label": s.target.label, "threshold": threshold,
        "response": st.response_source,
    }


def _rejected_row(st: SlotState, generator: str) -> dict[str, Any]:
    s = st.slot
    last = st.history[-1] if st.history else {"reason": "not_attempted", "detail": ""}
    return {
        "id": s.id, "target_feature": s.target.feature, "category": s.target.category, "lang": s.lang,
        "variant": s.variant, "generator": generator, "attempts": st.attempts, "reason": last["reason"],
        "detail": last["detail"], "best_activation": round(st.best_activation, 6), "history": st.history,
        "messages": st.last_candidate,
    }


def _store_table(states: dict[str, SlotState], slots: list[Slot], report: GapReport) -> pa.Table:
    """The accepted samples' verification rows (doc_id = sample id) plus pass-through columns; fields the gap
    report broke coverage down by and the samples lack are null columns, so `qscope gaps --by` works on it."""
    from qscope_data.store import FEATURE_SCHEMA

    kept = [states[s.id] for s in slots if states[s.id].done]
    if kept:
        feats = pa.concat_tables([st.store_row for st in kept])  # type: ignore[misc]
        feats = feats.set_column(0, "doc_id", pa.array([st.slot.id for st in kept], pa.string()))
    else:
        feats = FEATURE_SCHEMA.empty_table()
    rows = [st.accepted for st in kept]
    types = {f.name: f.type for f in ACCEPTED_SCHEMA}
    for name in STORE_PASSTHROUGH:
        feats = feats.append_column(pa.field(name, types[name]), pa.array([r[name] for r in rows], types[name]))  # type: ignore[index]
    for name in report.by:
        if name not in feats.column_names:
            feats = feats.append_column(pa.field(name, pa.string()), pa.nulls(feats.num_rows, pa.string()))
    return feats


# ------------------------------------------------------------------------------------------------------ gaps input


def target_manifest(report: GapReport) -> StoreManifest | None:
    """The manifest of the store the gaps were measured on (the report's first target that is a store still on
    disk): verification encodes with its options and its model revision. None for frame targets or a moved store."""
    from qscope_data.store import is_feature_store

    for target in report.targets:
        if target.get("kind") == "store" and is_feature_store(target.get("path", "")):
            return FeatureStore(target["path"]).manifest
    return None


def _resolve_layer(inputs: SynthInputs, report: GapReport) -> int:
    recorded = report.layer if report.layer is not None else report.sae.get("layer")
    if inputs.layer is not None:
        if recorded is not None and int(recorded) != inputs.layer:
            raise UsageError(f"--layer {inputs.layer}: {inputs.gaps} was computed at layer {recorded}")
        return inputs.layer
    if recorded is None:
        raise UsageError(f"{inputs.gaps} does not say which SAE layer it reads; pass --layer")
    return int(recorded)


def _select_targets(options: SynthOptions, inputs: SynthInputs, report: GapReport) -> list[GapTarget]:
    gaps = list(report.gaps)
    if inputs.features is not None:
        by_id = {g.feature: g for g in gaps}
        missing = [f for f in inputs.features if f not in by_id]
        if missing:
            raise UsageError(f"--features: {', '.join(map(str, missing))} not among the gaps of {inputs.gaps}")
        gaps = [by_id[f] for f in dict.fromkeys(inputs.features)]
    if options.max_features is not None:
        gaps = gaps[: options.max_features]
    return [GapTarget.from_gap(g, tuple(inputs.benign_categories)) for g in gaps]


def _check_sae_matches_report(report: GapReport, sae: SparseAutoencoder, gaps_path: Path) -> None:
    d_sae = report.sae.get("d_sae")
    if d_sae is not None and int(d_sae) != sae.d_sae:
        raise UsageError(f"{gaps_path} was computed with an SAE of d_sae={d_sae}; --sae has d_sae={sae.d_sae}: "
                         "feature ids would mean different things")


def inventory_from_report(report: GapReport) -> Inventory:
    """The inventory a gap report was computed from, rebuilt from its per-feature rows (ids, categories, Δ, labels):
    all coverage needs. Pass the inventory YAML itself to keep descriptions and provenance."""
    features = [InventoryFeature(id=f.feature, category=f.category, delta=f.delta, safety_score=f.safety_score,
                                 label=f.label) for f in report.features]
    by_id = {g.feature: g for g in report.gaps}
    features = [f.model_copy(update={"description": by_id[f.id].description}) if f.id in by_id else f for f in features]
    return Inventory(provenance=Provenance(source="labels", layer=report.layer, sae=dict(report.sae)), features=features)


def coverage_change(report: GapReport, inventory: Inventory, accepted: FeatureStore, targeted: list[int], layer: int,
                    warnings: list[str]) -> dict[str, Any]:
    """Coverage of the inventory by the gap report's targets, then by targets + accepted samples (`compute_gaps`,
    the same call `qscope gaps --target T… --target DIR/store` makes), and of the gap set and the targeted features."""
    stores: list[FeatureStore] = []
    for info in report.targets:
        if info.get("kind") != "store":
            warnings.append("the gap report's target was a frame, not a store: coverage after cannot be recomputed")
            return {"before": report.coverage, "after": None}
        try:
            store = FeatureStore(info["path"])
        except DataError as exc:
            warnings.append(f"target store {info['path']} is unavailable ({exc}); coverage after not computed")
            return {"before": report.coverage, "after": None}
        if store.manifest_hash() != info.get("manifest"):
            warnings.append(f"target store {info['path']} changed since the gap report (manifest hash)")
        stores.append(store)
    kwargs = dict(by=list(report.by), min_docs=report.min_docs, layer=layer, n_examples=0, use_recorded_reference=False)
    before = compute_gaps(inventory, stores, **kwargs)
    after = compute_gaps(inventory, [*stores, accepted], **kwargs)
    if before.coverage != report.coverage:
        warnings.append("coverage of the targets recomputed now differs from the gap report's")
    gap_ids = [g.feature for g in report.gaps]
    covered_before = {f.feature for f in before.features if f.covered}
    covered_after = {f.feature for f in after.features if f.covered}

    def subset(ids: list[int], covered: set[int]) -> dict[str, Any]:
        return _subset(sum(1 for i in ids if i in covered), len(ids))

    return {
        "before": before.coverage,
        "after": after.coverage,
        "gap_set": {"before": subset(gap_ids, covered_before), "after": subset(gap_ids, covered_after)},
        "targeted": {"before": subset(targeted, covered_before), "after": subset(targeted, covered_after)},
        "gaps_after": [g.feature for g in after.gaps],
        "documents": {"before": before.documents, "after": after.documents},
        "targets": [s.root.resolve().as_posix() for s in stores],
        "store": accepted.root.resolve().as_posix(),
        "min_docs": report.min_docs,
        "by": list(report.by),
    }


# ------------------------------------------------------------------------------------------------------ summary


def _rate(n: int, d: int) -> float | None:
    return round(n / d, 6) if d else None


def _subset(n: int, total: int) -> dict[str, Any]:
    return {"covered": n, "total": total, "fraction": _rate(n, total)}


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items()))


def _feature_summaries(targets: list[GapTarget], states: dict[str, SlotState], slots: list[Slot],
                       coverage: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for t in targets:
        mine = [states[s.id] for s in slots if s.target.feature == t.feature]
        acts = [st.accepted["activation"] for st in mine if st.accepted is not None]
        attempts = sum(st.attempts for st in mine)
        reasons = _count(h["reason"] for st in mine for h in st.history)
        out.append({
            "feature": t.feature, "category": t.category, "label": t.label, "harmful": t.harmful,
            "keywords": list(t.keywords),
            "requested": len(mine), "accepted": len(acts), "rejected": len(mine) - len(acts), "attempts": attempts,
            "acceptance_rate": _rate(len(acts), attempts), "fill_rate": _rate(len(acts), len(mine)),
            "failed_attempts": reasons,
            "mean_activation": round(sum(acts) / len(acts), 6) if acts else None,
            "max_activation": max(acts) if acts else None,
            "best_rejected_activation": max((st.best_activation for st in mine if not st.done), default=None),
            "covered_after": None if coverage.get("after") is None else t.feature not in coverage["gaps_after"],
        })
    return out

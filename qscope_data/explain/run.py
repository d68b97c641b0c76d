"""The explain stage: feature dashboards from a token-level store, and (with an explainer) scored explanations.

    qscope features explain --features STORE (--ids 1,2,3 | --inventory INV) --out DIR [--explainer SPEC]

Output folder (every file written atomically except the append-only answer cache; summary.json last):

    index.html, feature-{id}.html   the dashboard (`dashboard.py`)
    features.json, features.parquet the same numbers for programs (`labels.py`)
    labels.jsonl                    the label file `features select --labels` reads
    llm_cache.jsonl                 answers of the explainer / scorer (resume: a rerun asks only what is missing)
    summary.json                    options, counts, token usage and cost, timings

The model and SAE default to what `encode` recorded for the store (`FeatureStore.job()`); the model's tokenizer
turns token ids into text, its unembedding gives the logit lens (causal LMs), the SAE's decoder gives the logit lens
and the hard negatives (features with similar decoder directions).
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from qscope_data import atomic
from qscope_data.errors import UsageError
from qscope_data.explain import contexts as ctx_mod
from qscope_data.explain.contexts import collect_feature_data, require_token_table, token_decoder
from qscope_data.explain.dashboard import write_dashboard
from qscope_data.explain.detection import batches, detection_score, detection_set
from qscope_data.explain.labels import LABELS_FILE, FeatureResult, write_labels, write_table
from qscope_data.explain.llm import CACHE_FILE, AnswerCache, CachedLLM, ExplainRequest, Usage
from qscope_data.explain.options import ExplainOptions
from qscope_data.explain.prompts import explainer_messages, parse_detection, parse_explanation, scorer_messages
from qscope_data.store import FeatureStore

SUMMARY_JSON = "summary.json"


class ExplainSummary(BaseModel):
    out: str
    features: int
    explained: int = 0
    scored: int = 0
    mean_score: float | None = None
    notes: list[str] = Field(default_factory=list)
    explainer: str | None = None
    scorer: str | None = None
    usage: dict = Field(default_factory=dict)  # per role: sent, cache_hits, failed, tries, tokens, cost_usd
    seconds: float = 0.0


def resolve_ids(opts: ExplainOptions, d_sae: int) -> list[int]:
    if (opts.ids is None) == (opts.inventory is None):
        raise UsageError("features explain: give --ids or --inventory (one of them)")
    if opts.inventory is not None:
        from qscope_data.coverage.inventory import load_inventory

        inventory = load_inventory(opts.inventory)
        if inventory.d_sae is not None and inventory.d_sae != d_sae:
            raise UsageError(f"inventory {opts.inventory}: its SAE has {inventory.d_sae} features, the store's {d_sae}")
        ids = inventory.ids()
        where = f"inventory {opts.inventory}"
    else:
        ids = list(opts.ids or [])
        where = "--ids"
    if not ids:
        raise UsageError(f"{where}: no feature to explain")
    bad = [i for i in ids if not 0 <= i < d_sae]
    if bad:
        raise UsageError(f"{where}: feature {bad[0]} is outside the SAE's 0..{d_sae - 1}")
    return list(dict.fromkeys(ids))


def _inventory_layer(opts: ExplainOptions) -> int | None:
    """The SAE layer an inventory was selected at (the default layer when explaining it)."""
    if opts.inventory is None:
        return None
    from qscope_data.coverage.inventory import load_inventory

    return load_inventory(opts.inventory).provenance.layer


def _recorded(store: FeatureStore) -> tuple[str | None, str | None, int | None]:
    job = store.job() or {}
    model = (job.get("model") or {}).get("id") or store.manifest.model.get("id")
    sae = job.get("sae") or {}
    return model, sae.get("spec"), sae.get("k")


def _load_tokenizer_and_lm(model: str, opts: ExplainOptions):
    """The LoadedModel when the logit lens is on (it needs the unembedding), else only the tokenizer."""
    if opts.logit_lens or opts.explainer and opts.explainer.startswith("hf:"):
        from qscope_data.capture import load_model
        from qscope_data.torch_dtypes import parse_dtype

        lm = load_model(model, device=opts.device, dtype=parse_dtype(opts.dtype), causal=None)
        return lm.tokenizer, lm
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model), None
    except (OSError, ValueError) as exc:
        raise UsageError(f"model {model}: cannot load its tokenizer ({str(exc).splitlines()[0]})") from exc


def _build_llm(spec: str, lm, cache: AnswerCache, opts: ExplainOptions) -> CachedLLM:
    from qscope_data.synth.generators import build_generator, parse_generator_spec

    parsed = parse_generator_spec(spec)
    if parsed.kind in ("offline", "templates", "lm"):
        raise UsageError(f"--explainer {spec}: the {parsed.kind} generator writes synthetic prompts and cannot explain; "
                         "give hf:<model> or openai:<base_url>?model=<name>")
    if parsed.kind == "hf" and float(parsed.params.get("steer_alpha", 0) or 0) != 0:
        raise UsageError("--explainer hf: steer_alpha is for synthesis; an explainer must not be steered")
    gen = build_generator(parsed, lm=lm if lm is not None and lm.is_causal else None, device=opts.device)
    return CachedLLM(gen, cache, Usage(price_in=opts.price_in, price_out=opts.price_out))


def explain_features(results: list[FeatureResult], llm: CachedLLM) -> None:
    """Ask the explainer for a label and description of every feature that has contexts."""
    reqs = [ExplainRequest(f"explain-f{r.data.feature}", "explain", explainer_messages(r.data.of("top", "quantile")))
            for r in results if r.data.of("top")]
    answers = llm.ask(reqs)
    for r in results:
        a = answers.get(f"explain-f{r.data.feature}")
        if a is None:
            r.explain_error = "the feature fires nowhere in this store: nothing to explain"
            continue
        if a.text is None:
            r.explain_error = a.error or "no answer"
            continue
        r.explanation = parse_explanation(a.text)
        if r.explanation is None:
            r.explain_error = f"unreadable answer (no 'Label:' and 'Description:' lines): {' '.join(a.text.split())[:120]}"


def score_features(results: list[FeatureResult], llm: CachedLLM, batch_size: int, seed: int) -> None:
    """Detection: the scorer says which held-out / negative excerpts fire; the project scores its answers."""
    plan: list[tuple[FeatureResult, int, list]] = []
    reqs = []
    for r in results:
        if r.explanation is None:
            continue
        items = detection_set(r.data, seed)
        if not items:
            r.score_error = "no held-out or negative contexts to score on"
            continue
        for b, chunk in enumerate(batches(items, batch_size)):
            plan.append((r, b, chunk))
            reqs.append(ExplainRequest(f"detect-f{r.data.feature}-b{b}", "detect", scorer_messages(r.explanation, chunk)))
    answers = llm.ask(reqs)
    per_feature: dict[int, tuple[list[bool], list[bool | None]]] = {}
    errors: dict[int, str] = {}
    for r, b, chunk in plan:
        a = answers[f"detect-f{r.data.feature}-b{b}"]
        said = parse_detection(a.text, len(chunk)) if a.text is not None else None
        if said is None:
            errors[r.data.feature] = a.error or f"unreadable answer to batch {b}: {' '.join((a.text or '').split())[:120]}"
        truth, given = per_feature.setdefault(r.data.feature, ([], []))
        for i, c in enumerate(chunk):
            truth.append(c.fires)
            given.append(None if said is None else said[i])
            r.answers.append({"doc_id": c.doc_id, "peak": c.peak, "kind": c.kind, "fires": c.fires,
                              "said": None if said is None else said[i]})
    for r in results:
        if r.data.feature in per_feature:
            truth, given = per_feature[r.data.feature]
            r.score = detection_score(truth, given)
            if r.score.balanced_accuracy is None:
                r.score_error = errors.get(r.data.feature) or "needs answered positives and negatives"
            elif r.data.feature in errors:
                r.score_error = errors[r.data.feature]


def run_explain(opts: ExplainOptions) -> ExplainSummary:
    """Dashboards (+ explanations and detection scores with an explainer) for the chosen features of a store."""
    start = time.perf_counter()
    if opts.scorer and not opts.explainer:
        raise UsageError("--scorer needs --explainer (there is nothing to score without an explanation)")
    from qscope_data.synth.generators import parse_generator_spec

    for spec in (opts.explainer, opts.scorer):  # a bad spec fails before any model is loaded
        if spec:
            parse_generator_spec(spec)
    store = FeatureStore(opts.features)
    layer = store.resolve_layer(opts.layer if opts.layer is not None else _inventory_layer(opts))
    require_token_table(store, layer)
    info = store.manifest.sae(layer)
    ids = resolve_ids(opts, info.d_sae)
    rec_model, rec_sae, rec_k = _recorded(store)
    model = opts.model or rec_model
    if not model:
        raise UsageError(f"{store.root}: the store does not record its model; pass --model (its tokenizer decodes tokens)")
    sae_spec = opts.sae or rec_sae
    notes: list[str] = []
    tokenizer, lm = _load_tokenizer_and_lm(model, opts)
    decode = token_decoder(tokenizer)
    W_dec = None
    if sae_spec:
        from qscope_data.sae import load_sae

        sae = load_sae(sae_spec, layer, k=rec_k if opts.sae is None else None)
        if sae.d_sae != info.d_sae or sae.d_model != info.d_model:
            raise UsageError(f"SAE {sae_spec}: shape {sae.d_model}×{sae.d_sae} is not the store's {info.d_model}×{info.d_sae}")
        W_dec = sae.W_dec.detach().float().cpu()
    else:
        notes.append("no SAE known for the store (pass --sae): no logit lens, no hard negatives")
    from qscope_data.explain.logit_lens import decoder_neighbours, logit_lens

    neighbours = decoder_neighbours(W_dec, ids, opts.neighbours) if W_dec is not None and opts.hard_negatives else None
    by = ctx_mod.breakdown_fields(store, layer, opts.by)
    data = collect_feature_data(store, layer, ids, opts.sampling(), by=by, neighbours=neighbours, decode=decode)
    results = [FeatureResult(data[f]) for f in ids]
    lens_note = None
    if not opts.logit_lens:
        lens_note = "logit lens turned off (--no-logit-lens)"
    elif lm is not None and not lm.is_causal:
        lens_note = f"{model} is not a causal LM: no unembedding, no logit lens"
    elif W_dec is None:
        lens_note = "no SAE decoder known (pass --sae): no logit lens"
    else:
        lens = logit_lens(lm, W_dec, ids, opts.lens_tokens)
        for r in results:
            r.lens = lens[r.data.feature]
    if lens_note:
        notes.append(lens_note)

    explainer_name = scorer_name = None
    usage: dict = {}
    if opts.explainer:
        cache = AnswerCache(opts.out / CACHE_FILE)
        explainer = _build_llm(opts.explainer, lm, cache, opts)
        scorer = explainer if not opts.scorer or opts.scorer == opts.explainer else _build_llm(opts.scorer, lm, cache, opts)
        explainer_name, scorer_name = explainer.generator.name, scorer.generator.name
        explain_features(results, explainer)
        score_features(results, scorer, opts.detection_batch, opts.seed)
        usage = {"explainer": explainer.usage.to_json()}
        if scorer is not explainer:
            usage["scorer"] = scorer.usage.to_json()

    meta = {"store": str(store.root.resolve()), "store_manifest": store.manifest_hash(), "layer": layer,
            "sae": info.source or sae_spec or "", "model": model, "explainer": explainer_name, "scorer": scorer_name,
            "fields": by, "options": opts.model_dump(mode="json", exclude={"features", "out"})}
    write_dashboard(results, opts.out, meta, lens_note)
    write_table(results, opts.out, {k: v for k, v in meta.items() if k != "features"})
    write_labels(results, opts.out / LABELS_FILE, explainer=explainer_name, scorer=scorer_name, layer=layer)
    scores = [r.score.balanced_accuracy for r in results if r.score and r.score.balanced_accuracy is not None]
    summary = ExplainSummary(
        out=str(opts.out), features=len(results), explained=sum(1 for r in results if r.explanation),
        scored=len(scores), mean_score=round(sum(scores) / len(scores), 6) if scores else None, notes=notes,
        explainer=explainer_name, scorer=scorer_name, usage=usage, seconds=round(time.perf_counter() - start, 3),
    )
    atomic.write_json(opts.out / SUMMARY_JSON, {**summary.model_dump(mode="json"), "meta": meta})
    return summary

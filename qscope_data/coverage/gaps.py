"""Coverage of a safety inventory by a target corpus, and its gaps.

Coverage is binary per feature, as in the Qwen-Scope report: feature f is covered when it fires (is in a
document's `feature_ids`) on at least `min_docs` target documents. The gaps — inventory features below that — are
what targeted synthesis must fill, so the report carries for each gap the reference-store texts that fire it most.

The target may be several stores and/or polars frames of documents (e.g. a corpus plus synthesis' accepted samples):
`compute_gaps` pools their documents, so "target + accepted samples" coverage is one call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from qscope_data import atomic
from qscope_data.coverage.inventory import Inventory, InventoryFeature
from qscope_data.errors import DataError, UsageError
from qscope_data.result import Result, status
from qscope_data.store import FeatureStore

MISSING_VALUE = "(none)"  # bucket of documents whose --by field is null
TARGET_COLUMNS = ("doc_id", "feature_ids", "max_acts")

Target = FeatureStore | pl.DataFrame


class Coverage(BaseModel):
    covered: int
    total: int
    fraction: float | None  # None when total is 0

    @classmethod
    def of(cls, covered: int, total: int) -> "Coverage":
        return cls(covered=covered, total=total, fraction=round(covered / total, 6) if total else None)


class FeatureCoverage(BaseModel):
    feature: int
    category: str
    delta: float | None = None
    safety_score: float | None = None
    label: str | None = None
    target_docs: int  # target documents where the feature fires
    activation_mass: float  # sum over those documents of the feature's max activation
    covered: bool
    target_examples: list[str] = Field(default_factory=list)  # target doc_ids, top by activation
    by: dict[str, dict[str, int]] = Field(default_factory=dict)  # field -> value -> firing documents


class Gap(BaseModel):
    feature: int
    category: str
    delta: float | None = None
    safety_score: float | None = None
    target_docs: int
    activation_mass: float
    label: str | None = None
    description: str | None = None
    purity: float | None = None  # share of its top reference documents that carry its category (the inventory's)
    languages: dict[str, int] = Field(default_factory=dict)  # reference documents of its category it fires on
    examples: list[str] = Field(default_factory=list)  # reference-store texts that fire it, top by activation
    example_ids: list[str] = Field(default_factory=list)
    example_activations: list[float] = Field(default_factory=list)


class GapReport(BaseModel):
    """Everything `gaps.json` holds; `to_json()` is that file's content."""

    gaps: list[Gap]
    coverage: dict[str, Any]  # overall, by_category, by_<field>, by_category_x_<field>
    features: list[FeatureCoverage]
    documents: dict[str, Any]  # total, by_<field>
    inventory: str  # Inventory.digest()
    target: str | list[str]  # manifest hash (one target) or the list of them
    targets: list[dict[str, Any]]
    reference: dict[str, Any] | None = None
    sae: dict[str, Any] = Field(default_factory=dict)
    min_docs: int = 1
    by: list[str] = Field(default_factory=list)
    layer: int | None = None
    warnings: list[str] = Field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def categories(self) -> list[str]:
        return list(self.coverage["by_category"])

    def field_values(self, field: str) -> list[str]:
        return list(self.coverage.get(f"by_{field}", {}))


def gap_rank_key(feat: InventoryFeature) -> tuple:
    """Gaps come biggest-concept-first: |Δ| desc, then safety score desc, then feature id."""
    return (-abs(feat.delta or 0.0), -(feat.safety_score if feat.safety_score is not None else float("-inf")), feat.id)


class GapsOptions(BaseModel):
    """The gaps stage's options (`qscope gaps` and the pipeline's `gaps:` section): the only place their defaults
    live (`compute_gaps`' keywords default to these)."""

    model_config = ConfigDict(extra="forbid")

    by: list[str] | None = None  # None: lang when the target has it
    min_docs: int = Field(1, ge=1)
    examples: int = Field(8, ge=0, description="reference texts kept per gap, top by activation: few-shot synthesis "
                                              "draws its shots (4 by default) from them, and a retry sees others")


_DEFAULT = GapsOptions()


def compute_gaps(
    inventory: Inventory,
    targets: Target | Sequence[Target],
    *,
    reference: FeatureStore | None = None,
    by: Sequence[str] | None = _DEFAULT.by,
    min_docs: int = _DEFAULT.min_docs,
    layer: int | None = None,
    n_examples: int = _DEFAULT.examples,
    max_example_chars: int = 2000,
    use_recorded_reference: bool = True,
) -> GapReport:
    """Coverage of `inventory` by the pooled documents of `targets`, and the ranked gaps.

    targets: one `FeatureStore`, one polars frame of documents, or a sequence mixing both. A frame needs the store's
    document columns `doc_id`, `feature_ids` (list of int), `max_acts` (list of float), plus every `by` field.
    reference: store whose texts illustrate each gap; None → the store recorded in the inventory, when it exists
    (`use_recorded_reference=False` turns that off). by: pass-through fields to break coverage down by (None → `lang`
    when every target has it). layer: the SAE layer to read (None → the inventory's layer, else each store's first)."""
    if min_docs < 1:
        raise UsageError(f"--min-docs must be ≥ 1 (got {min_docs})")
    target_list: list[Target] = [targets] if isinstance(targets, (FeatureStore, pl.DataFrame)) else list(targets)
    if not target_list:
        raise UsageError("gaps: no target store given")
    layer = layer if layer is not None else inventory.provenance.layer
    warnings: list[str] = []
    columns = [_target_columns(t, layer) for t in target_list]
    if by is None:
        by = ["lang"] if all("lang" in c for c in columns) else []
    by = [b for b in dict.fromkeys(by)]
    for field in by:
        if field in TARGET_COLUMNS:
            raise UsageError(f"--by {field}: that is a feature column, not a document field")
        for target, cols in zip(target_list, columns):
            if field not in cols:
                raise DataError(f"{_target_name(target)}: no column {field!r} to break coverage down by (--by)")
    target_infos = [_check_target(inventory, t, layer) for t in target_list]
    sae = dict(inventory.provenance.sae) or target_infos[0].get("sae", {})

    docs = pl.concat([_target_frame(t, layer, by) for t in target_list], how="vertical")
    ids = inventory.ids()
    pairs = (
        docs.explode(["feature_ids", "max_acts"])
        .rename({"feature_ids": "feature"})
        .filter(pl.col("feature").is_in(ids))
    )
    per_feature = (
        pairs.group_by("feature")
        .agg(
            pl.len().alias("n"),
            pl.col("max_acts").cast(pl.Float64).sum().alias("mass"),
            pl.col("doc_id").sort_by(["max_acts", "doc_id"], descending=[True, False]).head(5).alias("examples"),
        )
        .collect()
    )
    stats = {int(r["feature"]): r for r in per_feature.iter_rows(named=True)}
    per_value: dict[str, dict[int, dict[str, int]]] = {}
    doc_counts: dict[str, dict[str, int]] = {}
    for field in by:
        counts = pairs.group_by("feature", field).agg(pl.len().alias("n")).collect()
        table: dict[int, dict[str, int]] = {}
        for r in counts.iter_rows(named=True):
            table.setdefault(int(r["feature"]), {})[r[field]] = int(r["n"])
        per_value[field] = table
        totals = docs.group_by(field).agg(pl.len().alias("n")).collect().sort(field)
        doc_counts[field] = {r[field]: int(r["n"]) for r in totals.iter_rows(named=True)}
    n_docs = int(docs.select(pl.len()).collect().item())

    features: list[FeatureCoverage] = []
    for feat in inventory.features:
        row = stats.get(feat.id)
        n = int(row["n"]) if row else 0
        features.append(FeatureCoverage(
            feature=feat.id, category=feat.category, delta=feat.delta, safety_score=feat.safety_score, label=feat.label,
            target_docs=n, activation_mass=round(float(row["mass"]), 6) if row else 0.0, covered=n >= min_docs,
            target_examples=list(row["examples"]) if row else [],
            by={field: {v: per_value[field].get(feat.id, {}).get(v, 0) for v in doc_counts[field]} for field in by},
        ))

    coverage = _coverage_tables(inventory, features, by, doc_counts, min_docs)
    gap_feats = sorted((f for f in inventory.features if stats.get(f.id) is None or stats[f.id]["n"] < min_docs), key=gap_rank_key)
    ref_store, ref_info = _resolve_reference(inventory, reference, use_recorded_reference, layer, warnings)
    if ref_store is not None:
        warnings += rendering_mismatch(ref_store, [t for t in target_list if isinstance(t, FeatureStore)])
    examples = _reference_examples(ref_store, [f.id for f in gap_feats], layer, n_examples, max_example_chars, warnings) if ref_store else {}
    cov_by_id = {f.feature: f for f in features}
    gaps = [
        Gap(
            feature=f.id, category=f.category, delta=f.delta, safety_score=f.safety_score,
            target_docs=cov_by_id[f.id].target_docs, activation_mass=cov_by_id[f.id].activation_mass, label=f.label,
            description=f.description, purity=f.purity, languages=dict(f.languages),
            examples=[e[2] for e in examples.get(f.id, [])],
            example_ids=[e[0] for e in examples.get(f.id, [])], example_activations=[e[1] for e in examples.get(f.id, [])],
        )
        for f in gap_feats
    ]
    hashes = [info["manifest"] for info in target_infos]
    documents: dict[str, Any] = {"total": n_docs, **{f"by_{field}": doc_counts[field] for field in by}}
    return GapReport(
        gaps=gaps, coverage=coverage, features=features, documents=documents, inventory=inventory.digest(),
        target=hashes[0] if len(hashes) == 1 else hashes, targets=target_infos, reference=ref_info, sae=sae,
        min_docs=min_docs, by=list(by), layer=layer, warnings=warnings,
    )


def _coverage_tables(
    inventory: Inventory, features: list[FeatureCoverage], by: Sequence[str], doc_counts: dict[str, dict[str, int]], min_docs: int,
) -> dict[str, Any]:
    categories = inventory.categories()
    in_cat = {c: [f for f in features if f.category == c] for c in categories}
    out: dict[str, Any] = {
        "overall": Coverage.of(sum(f.covered for f in features), len(features)).model_dump(),
        "by_category": {c: Coverage.of(sum(f.covered for f in fs), len(fs)).model_dump() for c, fs in in_cat.items()},
    }
    for field in by:
        values = list(doc_counts[field])
        out[f"by_{field}"] = {
            v: Coverage.of(sum(f.by[field][v] >= min_docs for f in features), len(features)).model_dump() for v in values
        }
        out[f"by_category_x_{field}"] = {
            c: {v: Coverage.of(sum(f.by[field][v] >= min_docs for f in fs), len(fs)).model_dump() for v in values}
            for c, fs in in_cat.items()
        }
    return out


# ---------------------------------------------------------------------------------------------------------- targets


def _target_name(target: Target) -> str:
    return str(target.root) if isinstance(target, FeatureStore) else f"<frame of {target.height} documents>"


def _target_columns(target: Target, layer: int | None) -> list[str]:
    if isinstance(target, FeatureStore):
        return target.columns(target.resolve_layer(layer))
    missing = [c for c in TARGET_COLUMNS if c not in target.columns]
    if missing:
        raise DataError(f"{_target_name(target)}: lacks column(s) {', '.join(missing)}")
    return list(target.columns)


def _check_target(inventory: Inventory, target: Target, layer: int | None) -> dict[str, Any]:
    """Refuse a target read through another SAE than the inventory's: feature ids would mean different things."""
    d_inv = inventory.d_sae
    if isinstance(target, FeatureStore):
        layer_here = target.resolve_layer(layer)
        sae = target.manifest.sae(layer_here)
        if d_inv is not None and sae.d_sae != d_inv:
            raise DataError(
                f"{target.root}: layer {layer_here} SAE has d_sae={sae.d_sae}, the inventory's SAE has d_sae={d_inv}; "
                "feature ids are not comparable"
            )
        inv_layer = inventory.provenance.sae.get("layer")
        if inv_layer is not None and layer is None and layer_here != inv_layer:
            raise DataError(f"{target.root}: read at layer {layer_here}, the inventory was selected at layer {inv_layer}")
        too_big = [i for i in inventory.ids() if i >= sae.d_sae]
        if too_big:
            raise DataError(f"{target.root}: inventory feature {too_big[0]} is out of range for d_sae={sae.d_sae}")
        return {"kind": "store", "path": str(target.root.resolve()), "manifest": target.manifest_hash(), "layer": layer_here,
                "sae": sae.model_dump()}
    ids = target["doc_id"].cast(pl.String).sort().to_list()
    digest = atomic.sha256_bytes(json.dumps(ids).encode("utf-8"))
    return {"kind": "frame", "documents": target.height, "manifest": f"frame:{digest}"}


def _target_frame(target: Target, layer: int | None, by: Sequence[str]) -> pl.LazyFrame:
    lf = target.scan(target.resolve_layer(layer), [*TARGET_COLUMNS, *by]) if isinstance(target, FeatureStore) else target.lazy()
    return lf.select(
        pl.col("doc_id").cast(pl.String),
        pl.col("feature_ids").cast(pl.List(pl.Int32)),
        pl.col("max_acts").cast(pl.List(pl.Float32)),
        *[pl.col(field).cast(pl.String).fill_null(MISSING_VALUE) for field in by],
    )


# -------------------------------------------------------------------------------------------------------- reference


def rendering(store: FeatureStore) -> str | None:
    """How a store read its records: `chat` (through the chat template: conversations, or texts encoded with
    `text_as: user`), `text`, or `mixed`; None for a store that did not record it (written before `n_chat`)."""
    n, chat = store.manifest.stats.get("n_records"), store.manifest.stats.get("n_chat")
    if not n or chat is None:
        return None
    return "chat" if chat == n else "text" if chat == 0 else "mixed"


def rendering_mismatch(reference: FeatureStore, targets: list[FeatureStore]) -> list[str]:
    """Why: a feature selected on plain texts may hardly fire once the same words sit in a chat template, so it
    would be a gap of the target only because the two were read differently — not because the target lacks the
    concept. One warning per target whose rendering differs from the reference's."""
    ref = rendering(reference)
    out = []
    for target in targets:
        mine = rendering(target)
        if ref is not None and mine is not None and mine != ref:
            out.append(f"reference store {reference.root} read its records as {ref}, target {target.root} as {mine}: "
                       "a feature can be a gap only because of the rendering (encode plain-text requests with "
                       "--text-as user, or corpora.<name>.text_as: user)")
    return out


def _resolve_reference(
    inventory: Inventory, reference: FeatureStore | None, use_recorded: bool, layer: int | None, warnings: list[str],
) -> tuple[FeatureStore | None, dict[str, Any] | None]:
    store = reference
    recorded = inventory.provenance.store
    if store is None and use_recorded and recorded:
        try:
            store = FeatureStore(recorded)
        except DataError as exc:
            warnings.append(f"reference store recorded in the inventory is unavailable ({exc}); gaps have no examples")
            return None, None
    if store is None:
        if use_recorded:
            warnings.append("no reference store (give --reference): gaps have no example texts")
        return None, None
    manifest = store.manifest_hash()
    if inventory.provenance.store_manifest and manifest != inventory.provenance.store_manifest:
        warnings.append(f"reference store {store.root} differs from the one the inventory was selected on (manifest hash)")
    if inventory.d_sae is not None and store.manifest.sae(store.resolve_layer(layer)).d_sae != inventory.d_sae:
        raise DataError(f"{store.root}: reference store's SAE d_sae differs from the inventory's ({inventory.d_sae})")
    return store, {"path": str(store.root.resolve()), "manifest": manifest}


def render_document(text: Any, messages: Any) -> str | None:
    """A document's text for a report: the text column, else the conversation as `role: content` lines."""
    if isinstance(text, str):
        return text
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            return messages
    if isinstance(messages, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in messages if isinstance(m, dict))
    return None


def _reference_examples(
    store: FeatureStore, feature_ids: list[int], layer: int | None, n: int, max_chars: int, warnings: list[str],
) -> dict[int, list[tuple[str, float, str]]]:
    """Per feature, up to `n` (doc_id, activation, text) from the reference store, top by max activation."""
    if not feature_ids or n < 1:
        return {}
    layer = store.resolve_layer(layer)
    cols = store.columns(layer)
    text_cols = [c for c in ("text", "messages") if c in cols]
    if not text_cols:
        warnings.append(f"reference store {store.root} has no text or messages column (encoded with --drop-text?)")
        return {}
    top = (
        store.scan(layer, ["doc_id", "feature_ids", "max_acts"])
        .explode(["feature_ids", "max_acts"])
        .filter(pl.col("feature_ids").is_in(feature_ids))
        .group_by("feature_ids")
        .agg(
            pl.col("doc_id").sort_by(["max_acts", "doc_id"], descending=[True, False]).head(n),
            pl.col("max_acts").sort(descending=True).head(n),
        )
        .collect()
    )
    wanted = sorted({d for ids in top["doc_id"].to_list() for d in ids})
    texts_df = store.scan(layer, ["doc_id", *text_cols]).filter(pl.col("doc_id").is_in(wanted)).collect()
    texts: dict[str, str] = {}
    for r in texts_df.iter_rows(named=True):
        rendered = render_document(r.get("text"), r.get("messages"))
        if r["doc_id"] not in texts and rendered is not None:
            texts[r["doc_id"]] = rendered if len(rendered) <= max_chars else rendered[: max_chars - 1] + "…"
    out: dict[int, list[tuple[str, float, str]]] = {}
    for r in top.iter_rows(named=True):
        out[int(r["feature_ids"])] = [
            (d, round(float(a), 6), texts[d]) for d, a in zip(r["doc_id"], r["max_acts"]) if d in texts
        ]
    return out


def load_gaps(path: str | Path) -> GapReport:
    """Read a `gaps.json` back (synthesis' input)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"gap report {path}: no such file")
    try:
        return GapReport.model_validate_json(path.read_text(encoding="utf-8"))
    except Exception as exc:
        raise UsageError(f"gap report {path}: not a qscope gaps.json: {str(exc).splitlines()[0]}") from exc


# ------------------------------------------------------------------------------------------------------ the stage


@dataclass(frozen=True)
class GapsInputs:
    """What the gaps stage reads: the inventory YAML and the target store(s), pooled; optionally the store that gap
    examples come from (default: the inventory's reference), the SAE layer (default: the inventory's) and a
    `features explain` folder that each gap links to."""

    inventory: Path
    targets: list[Path]
    reference: Path | None = None
    layer: int | None = None
    dashboard: Path | None = None


def run(options: GapsOptions, inputs: GapsInputs, out: str | Path, *, progress: bool | None = None) -> Result[GapReport]:
    """The gaps stage (`qscope gaps`, the pipeline's `gaps`): coverage and ranked gaps, written into `out` as
    gaps.json (`load_gaps`) + report.md/html and plots. `progress`: a status line on stderr while it computes."""
    from qscope_data.coverage.inventory import load_inventory
    from qscope_data.coverage.report import write_gap_report

    inventory = load_inventory(inputs.inventory)
    stores = [FeatureStore(t) for t in inputs.targets]
    reference = FeatureStore(inputs.reference) if inputs.reference is not None else None
    with status(progress, f"coverage of {len(inventory.features)} features over {len(stores)} target store(s)…"):
        report = compute_gaps(inventory, stores, reference=reference, by=options.by, min_docs=options.min_docs,
                              layer=inputs.layer, n_examples=options.examples)
        paths = write_gap_report(report, out, dashboard=inputs.dashboard)
    overall = report.coverage["overall"]
    return Result(report, {"gaps": Path(out), **paths},
                  {"coverage": overall, "gaps": len(report.gaps), "warnings": report.warnings})

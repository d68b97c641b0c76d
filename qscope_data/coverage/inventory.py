"""The safety-feature inventory: which SAE features stand for which safety concept.

Coverage is only meaningful against a fixed list of concepts. The list comes from a labelled reference store
(per category, the features whose firing rate most exceeds the negative class's: Δ_f = P(f fires | category) −
P(f fires | negative), "fires" = active at any aggregated position of the document), from a label file produced
elsewhere (auto-interpretation: id, label, description, safety score), or both merged. It is written as YAML so a
person can read and edit it, with the provenance (store manifest hash, SAE) that lets `gaps` refuse a mismatch.

Each feature belongs to exactly one category (the one where its Δ is largest), so per-category counts add up to
the inventory's total.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qscope_data import atomic
from qscope_data.errors import DataError, UsageError, invalid
from qscope_data.result import Result, status
from qscope_data.store import FeatureStore

INVENTORY_VERSION = 1
UNLABELLED = "unlabelled"

# Accepted spellings of the label file's columns, after lower-casing and turning spaces / dashes into underscores.
_LABEL_COLUMN_ALIASES = {
    "id": ("id", "feature", "feature_id", "index"),
    "label": ("label", "name", "concept"),
    "description": ("description", "explanation", "desc"),
    "safety_score": ("safety_score", "score", "safety", "explanation_score"),
}


class InventoryFeature(BaseModel):
    id: int = Field(ge=0)
    category: str
    delta: float | None = None  # firing-rate gap vs the negative class (None for label-file-only features)
    support: int | None = None  # category documents where the feature fires
    rate: float | None = None  # P(fires | category)
    rate_negative: float | None = None  # P(fires | negative)
    examples: list[str] = Field(default_factory=list)  # reference-store doc_ids, top by activation
    purity: float | None = None  # share of its top-activating reference documents that carry its category
    languages: dict[str, int] = Field(default_factory=dict)  # documents of its category it fires on, per language
    label: str | None = None
    description: str | None = None
    safety_score: float | None = None


class Provenance(BaseModel):
    source: Literal["store", "labels", "store+labels"]
    store: str | None = None  # absolute path of the reference store (gaps reads examples from it)
    store_manifest: str | None = None  # sha256 of its manifest.json
    label_field: str | None = None
    negative: str | None = None
    layer: int | None = None
    sae: dict[str, Any] = Field(default_factory=dict)  # source, format, layer, d_sae, k, d_model of the store's SAE
    documents: dict[str, int] = Field(default_factory=dict)  # reference documents per category
    top: int | None = None
    min_support: int | None = None
    min_purity: float | None = None
    purity_top: int | None = None
    candidates: int | None = None  # features that passed Δ and support, before the purity threshold
    labels_file: str | None = None
    labels_sha256: str | None = None
    min_safety_score: float | None = None


class Inventory(BaseModel):
    version: int = INVENTORY_VERSION
    provenance: Provenance
    features: list[InventoryFeature]

    def categories(self) -> list[str]:
        return sorted({f.category for f in self.features})

    def ids(self) -> list[int]:
        return [f.id for f in self.features]

    def digest(self) -> str:
        """Content hash (canonical JSON), stable across YAML formatting: what gap reports cite."""
        return atomic.sha256_bytes(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode("utf-8"))

    @property
    def d_sae(self) -> int | None:
        value = self.provenance.sae.get("d_sae")
        return int(value) if value is not None else None


# ---------------------------------------------------------------------------------------------- selection from a store


# Documents read at once: a batch's (document, feature) pairs are what selection holds besides its per-feature state
# (a document fires tens to thousands of features, so a batch is ~10⁵–10⁷ pairs).
BATCH_DOCS = 2048


class InventoryOptions(BaseModel):
    """The inventory stage's options (`qscope features select` and the pipeline's `inventory:` section): the only
    place their defaults live (`select_features`' keywords default to these)."""

    model_config = ConfigDict(extra="forbid")

    label_field: str = "category"
    negative: str = "benign"
    top: int = Field(20, ge=1)
    min_support: int = Field(1, ge=1)
    contrast: Literal["negative", "rest"] = "negative"
    min_purity: float = Field(0.6, ge=0, le=1)
    purity_top: int = Field(10, ge=1)
    examples: int = Field(5, ge=0)


_DEFAULT = InventoryOptions()


def select_features(
    store: FeatureStore,
    *,
    label_field: str = _DEFAULT.label_field,
    negative: str = _DEFAULT.negative,
    top: int = _DEFAULT.top,
    min_support: int = _DEFAULT.min_support,
    layer: int | None = None,
    n_examples: int = _DEFAULT.examples,
    contrast: str = _DEFAULT.contrast,
    min_purity: float = _DEFAULT.min_purity,
    purity_top: int = _DEFAULT.purity_top,
    lang_field: str | None = "lang",
) -> Inventory:
    """Rank features per non-negative category by Δ against the negative class; keep the top `top` per category.

    `contrast="rest"` measures Δ against every document outside the category (the negative class and the other
    categories): it prefers features specific to one category over ones shared by all harmful text (e.g. "a request").

    A feature qualifies for a category when Δ > 0 and it fires on at least `min_support` of that category's documents;
    it is then assigned to the single category where its Δ is largest (ties: category name), and the `top` best per
    category (Δ desc, support desc, id asc) are kept. Documents whose label is null are ignored.

    Specificity: a feature's *purity* is the share of its `purity_top` top-activating reference documents (by peak
    activation, over every labelled document, negative class included) that carry its category. Δ alone admits
    features that fire a little more often on harmful text but mostly stand for something else (a language, "a
    request"); a feature is kept only when its purity reaches `min_purity`.

    Memory: the store is read `BATCH_DOCS` documents at a time, twice (support and top documents; then the chosen
    features' examples and languages). Besides one batch's (document, feature) pairs it keeps the support of every
    (category, feature) and each feature's `purity_top` top documents — bounded by the dictionary, not the corpus."""
    if top < 1:
        raise UsageError(f"--top must be ≥ 1 (got {top})")
    if min_support < 1:
        raise UsageError(f"--min-support must be ≥ 1 (got {min_support})")
    if not 0.0 <= min_purity <= 1.0:
        raise UsageError(f"--min-purity must be between 0 and 1 (got {min_purity})")
    if purity_top < 1:
        raise UsageError(f"--purity-top must be ≥ 1 (got {purity_top})")
    if contrast not in ("negative", "rest"):
        raise UsageError(f"--contrast must be 'negative' or 'rest' (got {contrast!r})")
    layer = store.resolve_layer(layer)
    columns = store.columns(layer)
    if label_field not in columns:
        extra = ", ".join(store.passthrough_columns(layer)) or "none"
        raise DataError(f"{store.root}: no column {label_field!r} to label documents by (pass-through columns: {extra})")
    lang = lang_field if lang_field and lang_field in columns and lang_field != label_field else None
    read = ["doc_id", label_field, "feature_ids", "max_acts", *([lang] if lang else [])]
    try:
        sizes = (store.scan(layer, [label_field]).select(pl.col(label_field).cast(pl.String).alias("_cat"))
                 .filter(pl.col("_cat").is_not_null()).group_by("_cat").agg(pl.len().alias("n")).collect())
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{store.root}: column {label_field!r} cannot be read as a category: {str(exc).splitlines()[0]}") from exc
    n_docs = {row["_cat"]: int(row["n"]) for row in sizes.iter_rows(named=True)}
    if negative not in n_docs:
        raise DataError(f"{store.root}: no document has {label_field} == {negative!r} (values: {', '.join(sorted(n_docs)) or 'none'})")
    if len(n_docs) < 2:
        raise DataError(f"{store.root}: {label_field} has only the negative class {negative!r}; nothing to contrast")

    def pairs() -> Iterator[pl.DataFrame]:
        """(doc_id, _cat, _lang, feature, max_acts) of every labelled document, a bounded batch of documents at a
        time: memory is a batch, never the store."""
        lang_col = pl.col(lang).cast(pl.String).fill_null("?") if lang else pl.lit("?")
        for batch in store.batches(layer, read, batch_rows=BATCH_DOCS):
            yield (batch.select("doc_id", pl.col(label_field).cast(pl.String).alias("_cat"), lang_col.alias("_lang"),
                                "feature_ids", "max_acts")
                   .filter(pl.col("_cat").is_not_null())
                   .explode(["feature_ids", "max_acts"]).drop_nulls("feature_ids").rename({"feature_ids": "feature"}))

    def highest(frame: pl.DataFrame, by: list[str], n: int) -> pl.DataFrame:
        """The `n` highest-activating rows per `by` group (ties: doc_id); top-n of a union is the top-n of the tops."""
        return (frame.sort([*by, "max_acts", "doc_id"], descending=[False] * len(by) + [True, False])
                .group_by(by, maintain_order=True).head(n))

    # Pass 1: support per (category, feature), and every feature's `purity_top` top documents (state: features ×
    # categories counts plus features × purity_top rows, whatever the store's size).
    counts = pl.DataFrame(schema={"_cat": pl.String, "feature": pl.Int32, "support": pl.UInt32})
    tops = pl.DataFrame(schema={"feature": pl.Int32, "doc_id": pl.String, "_cat": pl.String, "max_acts": pl.Float32})
    for batch in pairs():
        counts = (pl.concat([counts, batch.group_by("_cat", "feature").agg(pl.len().alias("support").cast(pl.UInt32))])
                  .group_by("_cat", "feature").agg(pl.col("support").sum()))
        tops = highest(pl.concat([tops, batch.select(tops.columns).cast(tops.schema)]), ["feature"], purity_top)
    sizes_df = pl.DataFrame({"_cat": list(n_docs), "n": list(n_docs.values())}, schema={"_cat": pl.String, "n": pl.Int64})
    if contrast == "negative":
        neg = (
            counts.filter(pl.col("_cat") == negative)
            .select("feature", (pl.col("support") / n_docs[negative]).alias("rate_negative"))
        )
        rate_negative = pl.col("rate_negative").fill_null(0.0)
    else:  # everything outside the category: (all firing documents − the category's) / (all documents − the category's)
        neg = counts.group_by("feature").agg(pl.col("support").sum().alias("_total"))
        rate_negative = (pl.col("_total") - pl.col("support")) / (sum(n_docs.values()) - pl.col("n"))
    scored = (
        counts.filter(pl.col("_cat") != negative)
        .join(sizes_df, on="_cat")
        .join(neg, on="feature", how="left")
        .with_columns(rate_negative.alias("rate_negative"), (pl.col("support") / pl.col("n")).alias("rate"))
        .with_columns((pl.col("rate") - pl.col("rate_negative")).alias("delta"))
        .filter((pl.col("delta") > 0) & (pl.col("support") >= min_support))
    )
    # one category per feature: the largest Δ wins
    best = (
        scored.sort(["feature", "delta", "_cat"], descending=[False, True, False])
        .group_by("feature", maintain_order=True)
        .first()
    )
    purity = (
        tops.join(best.select("feature", pl.col("_cat").alias("_assigned")), on="feature")
        .group_by("feature")
        .agg((pl.col("_cat") == pl.col("_assigned")).mean().alias("purity"))
    )
    best = best.join(purity, on="feature", how="left")
    candidates = best.height
    chosen = (
        best.filter(pl.col("purity") >= min_purity)
        .sort(["_cat", "delta", "support", "feature"], descending=[False, True, True, False])
        .group_by("_cat", maintain_order=True)
        .head(top)
    )
    # Pass 2, over the chosen (category, feature) pairs only: their example documents and languages.
    keys = chosen.select("_cat", pl.col("feature").cast(pl.Int32))
    examples = pl.DataFrame(schema={"_cat": pl.String, "feature": pl.Int32, "doc_id": pl.String, "max_acts": pl.Float32})
    langs = pl.DataFrame(schema={"feature": pl.Int32, "_lang": pl.String, "n": pl.UInt32})
    for batch in pairs() if keys.height else ():
        hits = batch.with_columns(pl.col("feature").cast(pl.Int32)).join(keys, on=["_cat", "feature"])
        examples = highest(pl.concat([examples, hits.select(examples.columns).cast(examples.schema)]), ["_cat", "feature"],
                       n_examples)
        langs = (pl.concat([langs, hits.group_by("feature", "_lang").agg(pl.len().alias("n").cast(pl.UInt32))])
                 .group_by("feature", "_lang").agg(pl.col("n").sum()))
    ex_map = {(r["_cat"], r["feature"]): r["examples"]
              for r in examples.group_by("_cat", "feature", maintain_order=True).agg(pl.col("doc_id").alias("examples"))
              .iter_rows(named=True)}
    lang_map: dict[int, dict[str, int]] = {}
    for r in langs.sort(["feature", "n", "_lang"], descending=[False, True, False]).iter_rows(named=True):
        if lang:
            lang_map.setdefault(int(r["feature"]), {})[r["_lang"]] = int(r["n"])
    features = [
        InventoryFeature(
            id=int(r["feature"]), category=r["_cat"], delta=round(float(r["delta"]), 6), support=int(r["support"]),
            rate=round(float(r["rate"]), 6), rate_negative=round(float(r["rate_negative"]), 6),
            examples=list(ex_map.get((r["_cat"], r["feature"]), [])), purity=round(float(r["purity"]), 4),
            languages=lang_map.get(int(r["feature"]), {}),
        )
        for r in chosen.iter_rows(named=True)
    ]
    sae = store.manifest.sae(layer)
    provenance = Provenance(
        source="store", store=str(store.root.resolve()), store_manifest=store.manifest_hash(), label_field=label_field,
        negative=negative, layer=layer, sae=sae.model_dump(), documents=dict(sorted(n_docs.items())), top=top,
        min_support=min_support, min_purity=min_purity, purity_top=purity_top, candidates=candidates,
    )
    return Inventory(provenance=provenance, features=features)


# ------------------------------------------------------------------------------------------------------- label files


def load_labels(path: str | Path) -> pl.DataFrame:
    """Read a label file (CSV, JSONL or Parquet) into columns id, label, description, safety_score (missing → null)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"label file {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            raw = pl.read_csv(path, infer_schema_length=None)
        elif suffix in (".jsonl", ".ndjson"):
            raw = pl.read_ndjson(path)
        elif suffix == ".parquet":
            raw = pl.read_parquet(path)
        else:
            raise UsageError(f"label file {path}: unknown format {suffix!r} (use .csv, .jsonl or .parquet)")
    except pl.exceptions.PolarsError as exc:
        raise UsageError(f"label file {path}: cannot be read: {str(exc).splitlines()[0]}") from exc
    normal = {c: c.strip().lower().replace(" ", "_").replace("-", "_") for c in raw.columns}
    picked: dict[str, str] = {}
    for canonical, aliases in _LABEL_COLUMN_ALIASES.items():
        for original, norm in normal.items():
            if norm in aliases and canonical not in picked:
                picked[canonical] = original
    if "id" not in picked:
        raise UsageError(f"label file {path}: no id column (columns: {', '.join(raw.columns)})")
    if len(picked) == 1:
        raise UsageError(f"label file {path}: needs a label, description or safety score column besides id")
    out: dict[str, pl.Series] = {}
    for canonical, dtype in (("id", pl.Int64), ("label", pl.String), ("description", pl.String), ("safety_score", pl.Float64)):
        if canonical not in picked:
            out[canonical] = pl.Series(canonical, [None] * raw.height, dtype=dtype)
            continue
        column = raw[picked[canonical]]
        try:
            out[canonical] = column.cast(dtype, strict=True).alias(canonical)
        except pl.exceptions.PolarsError:
            bad = next((i for i, v in enumerate(column.cast(dtype, strict=False).to_list()) if v is None and column[i] is not None), 0)
            raise UsageError(f"label file {path}: row {bad + 1}: {picked[canonical]}={column[bad]!r} is not a {dtype}") from None
    labels = pl.DataFrame(out)
    if labels["id"].null_count():
        row = labels["id"].is_null().arg_true()[0]
        raise UsageError(f"label file {path}: row {row + 1}: empty id")
    if (labels["id"] < 0).any():
        row = (labels["id"] < 0).arg_true()[0]
        raise UsageError(f"label file {path}: row {row + 1}: negative feature id {labels['id'][row]}")
    dup = labels["id"].is_duplicated()
    if dup.any():
        row = dup.arg_true()[1] if dup.sum() > 1 else dup.arg_true()[0]
        raise UsageError(f"label file {path}: row {row + 1}: feature id {labels['id'][row]} appears more than once")
    return labels


def merge_labels(inventory: Inventory, labels: pl.DataFrame, *, path: str | Path, min_safety_score: float | None = None) -> Inventory:
    """Attach label / description / safety score to the inventory's features; with `min_safety_score`, keep only
    features whose score reaches it (a feature absent from the label file has no score and is dropped)."""
    by_id = {int(r["id"]): r for r in labels.iter_rows(named=True)}
    features = []
    for feat in inventory.features:
        row = by_id.get(feat.id)
        if row is not None:
            feat = feat.model_copy(update={k: row[k] for k in ("label", "description", "safety_score") if row[k] is not None})
        if min_safety_score is not None and (feat.safety_score is None or feat.safety_score < min_safety_score):
            continue
        features.append(feat)
    provenance = inventory.provenance.model_copy(update={
        "source": "store+labels", "labels_file": str(Path(path).resolve()), "labels_sha256": atomic.sha256_file(path),
        "min_safety_score": min_safety_score,
    })
    return Inventory(provenance=provenance, features=features)


def inventory_from_labels(
    labels: pl.DataFrame, *, path: str | Path, min_safety_score: float | None = None, layer: int | None = None,
    sae: dict[str, Any] | None = None,
) -> Inventory:
    """An inventory from a label file alone: the features scoring ≥ `min_safety_score` (all rows when None);
    a feature's category is its label (`unlabelled` when empty)."""
    rows = labels
    if min_safety_score is not None:
        rows = rows.filter(pl.col("safety_score").is_not_null() & (pl.col("safety_score") >= min_safety_score))
    rows = rows.sort(["safety_score", "id"], descending=[True, False], nulls_last=True)
    features = [
        InventoryFeature(
            id=int(r["id"]), category=(r["label"] or UNLABELLED), label=r["label"], description=r["description"],
            safety_score=r["safety_score"],
        )
        for r in rows.iter_rows(named=True)
    ]
    info = dict(sae or {})
    if layer is not None:
        info.setdefault("layer", layer)
    provenance = Provenance(
        source="labels", layer=layer, sae=info, labels_file=str(Path(path).resolve()),
        labels_sha256=atomic.sha256_file(path), min_safety_score=min_safety_score,
    )
    return Inventory(provenance=provenance, features=features)


# ------------------------------------------------------------------------------------------------------------ files


def save_inventory(inventory: Inventory, path: str | Path) -> None:
    data = inventory.model_dump(mode="json")
    data["features"] = [{k: v for k, v in f.items() if v not in (None, {})} for f in data["features"]]
    atomic.write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120))


def load_inventory(path: str | Path) -> Inventory:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"inventory {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UsageError(f"inventory {path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict) or "features" not in data:
        raise UsageError(f"inventory {path}: expected a mapping with a 'features' list")
    data.setdefault("provenance", {"source": "labels"})
    try:
        inventory = Inventory.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc, f"inventory {path}") from None
    if inventory.version > INVENTORY_VERSION:
        raise UsageError(f"inventory {path}: version {inventory.version} is newer than this qscope ({INVENTORY_VERSION})")
    seen: set[int] = set()
    for i, feat in enumerate(inventory.features):
        if feat.id in seen:
            raise UsageError(f"inventory {path}: features[{i}]: feature {feat.id} is listed twice")
        if feat.delta is not None and not math.isfinite(feat.delta):
            raise UsageError(f"inventory {path}: features[{i}]: delta is not finite")
        seen.add(feat.id)
    return inventory


# ------------------------------------------------------------------------------------------------------ the stage


@dataclass(frozen=True)
class SelectInputs:
    """What the inventory stage reads: a labelled reference store, a label file (id, label, description, safety
    score) merged in — only its features scoring at least `min_safety_score` kept — or the label file alone; `layer`:
    the store's SAE layer (default: its first)."""

    store: Path | None = None
    layer: int | None = None
    labels: Path | None = None
    min_safety_score: float | None = None


def run(options: InventoryOptions, inputs: SelectInputs, out: str | Path, *,
        progress: bool | None = None) -> Result[Inventory]:
    """The inventory stage (`qscope features select`, the pipeline's `select`): per category, the features that fire
    most above the negative class, written to `out` (YAML, `load_inventory`)."""
    if inputs.store is None and inputs.labels is None:
        raise UsageError("features select: give --features REF_STORE, --labels FILE, or both")
    labels = load_labels(inputs.labels) if inputs.labels is not None else None
    if inputs.store is not None:
        with status(progress, f"selecting features from {inputs.store}…"):
            inventory = select_features(
                FeatureStore(inputs.store), label_field=options.label_field, negative=options.negative,
                top=options.top, min_support=options.min_support, layer=inputs.layer, n_examples=options.examples,
                contrast=options.contrast, min_purity=options.min_purity, purity_top=options.purity_top)
        if labels is not None:
            inventory = merge_labels(inventory, labels, path=inputs.labels, min_safety_score=inputs.min_safety_score)
    else:
        inventory = inventory_from_labels(labels, path=inputs.labels, min_safety_score=inputs.min_safety_score,
                                          layer=inputs.layer)
    save_inventory(inventory, out)
    counts = {cat: sum(1 for f in inventory.features if f.category == cat) for cat in inventory.categories()}
    return Result(inventory, {"inventory": Path(out)}, {"features": len(inventory.features), "by_category": counts})

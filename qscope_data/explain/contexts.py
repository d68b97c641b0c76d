"""Dashboard data from a token-level feature store: per feature, the contexts it fires on and where it fires.

A *context* is a window of at most `window` aggregated positions of one document around a peak of the feature.
Candidates are cut per document into chunks of `window` positions; a chunk's activation is the feature's maximum in
it, and its context is the window around that maximum (¾ before it, ¼ after, clamped to the document). Per feature:

- **top**: the `n_top` candidates with the largest activation;
- **quantile**: the other candidates, split into `n_quantiles` equal-count bins by activation, `per_quantile` drawn
  from each (what the explanation sees besides the top);
- **held-out**: `heldout_per_quantile` more per bin, never shown to the explainer: the activating half of detection;
- **negatives** (detection): windows of documents where the feature never fires — at a random position (random
  negatives), or at the peak of a feature with a similar decoder direction (hard negatives).

Only aggregated positions are in the token table (position 0 unless ``keep_first``, chat prompts with
``span=response`` are not), so a context shows those positions only. Sampling is seeded per feature: a rerun picks
the same contexts.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl

from qscope_data.errors import DataError
from qscope_data.store import FeatureStore

ContextKind = Literal["top", "quantile", "heldout", "random_negative", "hard_negative"]
NO_TOKEN_TABLE = ("{root}: the store has no token-level table (layer{layer}/tokens/), which dashboards read; "
                  "encode it again with `qscope encode --token-level …` (the document table alone cannot say where "
                  "in a text a feature fires)")


@dataclass
class Context:
    """One window of one document; `acts[i]` is the feature's activation at `positions[i]` (0 where inactive)."""

    kind: ContextKind
    doc_id: str
    peak: int  # the position the window is built around
    max_act: float  # the feature's activation at the peak (0 for negatives)
    quantile: int | None = None  # 1 = weakest bin … n_quantiles = strongest (quantile / held-out contexts)
    positions: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    acts: list[float] = field(default_factory=list)
    source_feature: int | None = None  # hard negatives: the similar feature whose peak this is

    @property
    def fires(self) -> bool:
        return any(a > 0 for a in self.acts)

    def text(self) -> str:
        return "".join(self.tokens)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FeatureData:
    """Everything a dashboard page shows about one feature, before any LLM is asked."""

    feature: int
    n_docs: int  # documents of the store
    docs_firing: int
    positions_firing: int
    n_positions: int  # aggregated positions of the store
    max_act: float
    mean_act: float  # over firing positions
    histogram: dict[str, list[float]]  # edges (n+1), counts (n) of the nonzero activations
    rates: dict[str, dict[str, dict[str, float]]]  # field -> value -> {docs, firing, rate}
    contexts: list[Context] = field(default_factory=list)
    neighbours: list[dict[str, float]] = field(default_factory=list)  # similar decoder directions: feature, cosine

    def of(self, *kinds: ContextKind) -> list[Context]:
        return [c for c in self.contexts if c.kind in kinds]

    @property
    def firing_rate(self) -> float:
        return self.docs_firing / self.n_docs if self.n_docs else 0.0


@dataclass(frozen=True)
class SamplingOptions:
    window: int = 32
    n_top: int = 10
    n_quantiles: int = 5
    per_quantile: int = 2
    heldout_per_quantile: int = 2
    n_random_negatives: int = 5
    n_hard_negatives: int = 5
    bins: int = 24
    seed: int = 0


def require_token_table(store: FeatureStore, layer: int) -> pl.LazyFrame:
    lf = store.scan_tokens(layer)
    if lf is None:
        raise DataError(NO_TOKEN_TABLE.format(root=store.root, layer=layer))
    return lf


def feature_activations(store: FeatureStore, layer: int, features: Iterable[int]) -> pl.DataFrame:
    """(doc_id, position, feature, value) for every position where one of `features` is in the top-k."""
    wanted = sorted({int(f) for f in features})
    return (
        require_token_table(store, layer)
        .select("doc_id", "position", "feature_ids", "values")
        .filter(pl.col("feature_ids").list.eval(pl.element().is_in(wanted)).list.any())  # before the explode: cheap
        .explode(["feature_ids", "values"])
        .filter(pl.col("feature_ids").is_in(wanted))
        .select("doc_id", "position", pl.col("feature_ids").alias("feature"), pl.col("values").alias("value"))
        .collect(engine="streaming")
    )


def chunk_candidates(acts: pl.DataFrame, window: int) -> pl.DataFrame:
    """Per (feature, document, chunk of `window` positions): the peak position and its activation, strongest first."""
    return (
        acts.filter(pl.col("value") > 0)
        .with_columns((pl.col("position") // window).alias("chunk"))
        .sort(["value", "position"], descending=[True, False])
        .group_by("feature", "doc_id", "chunk", maintain_order=True)
        .agg(pl.col("position").first().alias("peak"), pl.col("value").first().alias("max_act"))
        .sort(["feature", "max_act", "doc_id", "peak"], descending=[False, True, False, False])
    )


def _rng(seed: int, feature: int, what: str) -> random.Random:
    return random.Random(f"{seed}:{feature}:{what}")


def pick_activating(cands: list[dict], opts: SamplingOptions, feature: int) -> list[Context]:
    """Top, quantile and held-out contexts from a feature's candidates (sorted strongest first); disjoint sets."""
    top = [Context("top", c["doc_id"], c["peak"], c["max_act"]) for c in cands[: opts.n_top]]
    rest = cands[opts.n_top:]
    out = list(top)
    if not rest:
        return out
    rng = _rng(opts.seed, feature, "quantiles")
    n_bins = min(opts.n_quantiles, len(rest))
    ascending = rest[::-1]
    for b, chunk in enumerate(np.array_split(np.arange(len(ascending)), n_bins), start=1):
        members = [ascending[i] for i in chunk]
        rng.shuffle(members)
        take = members[: opts.per_quantile + opts.heldout_per_quantile]
        for j, c in enumerate(take):
            kind: ContextKind = "quantile" if j < opts.per_quantile else "heldout"
            out.append(Context(kind, c["doc_id"], c["peak"], c["max_act"], quantile=b))
    return out


def firing_rates(store: FeatureStore, layer: int, features: list[int], by: list[str]) -> dict[int, dict]:
    """feature -> field -> value -> {docs, firing, rate}: the share of a field value's documents the feature fires on."""
    out: dict[int, dict] = {f: {} for f in features}
    if not by:
        return out
    docs = store.scan(layer, ["doc_id", "feature_ids", *by])
    for fld in by:
        sizes = docs.group_by(pl.col(fld).cast(pl.String).fill_null("(none)").alias("v")).agg(pl.len().alias("n")).collect()
        n_by = {r["v"]: int(r["n"]) for r in sizes.iter_rows(named=True)}
        fired = (
            docs.select(pl.col(fld).cast(pl.String).fill_null("(none)").alias("v"), "feature_ids")
            .explode("feature_ids").filter(pl.col("feature_ids").is_in(features))
            .group_by("feature_ids", "v").agg(pl.len().alias("k")).collect(engine="streaming")
        )
        hits = {(int(r["feature_ids"]), r["v"]): int(r["k"]) for r in fired.iter_rows(named=True)}
        for f in features:
            out[f][fld] = {v: {"docs": n, "firing": hits.get((f, v), 0), "rate": round(hits.get((f, v), 0) / n, 6)}
                           for v, n in sorted(n_by.items())}
    return out


def breakdown_fields(store: FeatureStore, layer: int, by: list[str] | None, max_values: int = 30) -> list[str]:
    """Fields to break firing rates down by: `by` as given (each must exist), else `lang` plus every pass-through
    string column with at most `max_values` distinct values (labels, sources, categories; never the text field)."""
    columns = store.passthrough_columns(layer)
    if by is not None:
        missing = [b for b in by if b not in columns]
        if missing:
            raise DataError(f"{store.root}: no column {', '.join(map(repr, missing))} to break firing rates down by "
                            f"(pass-through columns: {', '.join(columns) or 'none'})")
        return list(by)
    schema = store.scan(layer).collect_schema()
    text = {store.manifest.options.get("text_field", "text"), "text", "messages"}
    picked = []
    for name in columns:
        if name in text or schema[name] not in (pl.String, pl.Categorical, pl.Boolean, pl.Int64, pl.Int32):
            continue
        n = store.scan(layer, [name]).select(pl.col(name).n_unique()).collect().item()
        if 1 < n <= max_values or name == "lang":
            picked.append(name)
    return sorted(picked, key=lambda c: (c != "lang", c))


def fill_tokens(store: FeatureStore, layer: int, contexts: list[tuple[int, Context]], acts: pl.DataFrame,
                window: int, decode, seed: int = 0) -> None:
    """Give each (feature, context) its window: positions, token ids and text, and the feature's activations."""
    if not contexts:
        return
    doc_ids = sorted({c.doc_id for _, c in contexts})
    rows = (
        require_token_table(store, layer).select("doc_id", "position", "token_id")
        .filter(pl.col("doc_id").is_in(doc_ids)).collect().sort("doc_id", "position")
    )
    by_doc: dict[str, tuple[list[int], list[int]]] = {}
    for part in rows.partition_by("doc_id", maintain_order=True):
        by_doc[part["doc_id"][0]] = (part["position"].to_list(), part["token_id"].to_list())
    wanted = sorted({(f, c.doc_id) for f, c in contexts})
    keys = pl.DataFrame({"feature": [f for f, _ in wanted], "doc_id": [d for _, d in wanted]},
                        schema={"feature": acts.schema["feature"], "doc_id": pl.String})
    act_rows = acts.join(keys, on=["feature", "doc_id"], how="semi")
    act_map: dict[tuple[int, str, int], float] = {
        (int(r["feature"]), r["doc_id"], int(r["position"])): float(r["value"]) for r in act_rows.iter_rows(named=True)
    }
    before, after = (window * 3) // 4, window - (window * 3) // 4 - 1
    for f, ctx in contexts:
        positions, token_ids = by_doc.get(ctx.doc_id, ([], []))
        if not positions:
            continue
        if ctx.peak < 0:  # random negative: its position is drawn once the document's positions are known
            ctx.peak = positions[_rng(seed, f, ctx.doc_id).randrange(len(positions))]
        i = int(np.searchsorted(positions, ctx.peak))
        lo, hi = max(0, i - before), min(len(positions), i + after + 1)
        lo = max(0, min(lo, hi - window))
        ctx.positions = positions[lo:hi]
        ctx.token_ids = token_ids[lo:hi]
        ctx.tokens = decode(ctx.token_ids)
        ctx.acts = [act_map.get((f, ctx.doc_id, p), 0.0) for p in ctx.positions]


def histogram(values: np.ndarray, bins: int) -> dict[str, list[float]]:
    if values.size == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(values, bins=bins, range=(0.0, float(values.max()) or 1.0))
    return {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]}


def collect_feature_data(
    store: FeatureStore,
    layer: int,
    features: list[int],
    opts: SamplingOptions,
    *,
    by: list[str],
    neighbours: dict[int, list[tuple[int, float]]] | None = None,
    decode,
) -> dict[int, FeatureData]:
    """FeatureData of every feature in `features` (order kept), contexts filled with tokens and activations."""
    neighbours = neighbours or {}
    scanned = set(features) | {n for ns in neighbours.values() for n, _ in ns}
    acts = feature_activations(store, layer, scanned)
    cands = chunk_candidates(acts, opts.window)
    by_feature = {int(part["feature"][0]): part.to_dicts() for part in cands.partition_by("feature", maintain_order=True)}
    docs = store.read(layer, ["doc_id", "n_positions"])
    all_docs = docs["doc_id"].to_list()
    n_positions = int(docs["n_positions"].sum() or 0)
    firing_docs = {int(p["feature"][0]): set(p["doc_id"].unique().to_list())
                   for p in acts.filter(pl.col("value") > 0).partition_by("feature")}
    rates = firing_rates(store, layer, features, by)
    out: dict[int, FeatureData] = {}
    to_fill: list[tuple[int, Context]] = []
    values_of = {int(k[0]): p["value"].to_numpy() for k, p in acts.filter(pl.col("value") > 0)
                 .partition_by("feature", as_dict=True).items()}
    for f in features:
        values = values_of.get(f, np.zeros(0, dtype=np.float32))
        contexts = pick_activating(by_feature.get(f, []), opts, f)
        fired = firing_docs.get(f, set())
        rng = _rng(opts.seed, f, "negatives")
        for d in sample_quiet(all_docs, fired, opts.n_random_negatives, rng):
            contexts.append(Context("random_negative", d, -1, 0.0))
        hard: list[dict] = []
        for n, _cos in neighbours.get(f, []):
            hard += [dict(c, source=n) for c in by_feature.get(n, []) if c["doc_id"] not in fired]
        seen: set[str] = set()
        hard_unique = [c for c in hard if not (c["doc_id"] in seen or seen.add(c["doc_id"]))]
        for c in rng.sample(hard_unique, min(opts.n_hard_negatives, len(hard_unique))):
            contexts.append(Context("hard_negative", c["doc_id"], c["peak"], 0.0, source_feature=int(c["source"])))
        to_fill += [(f, c) for c in contexts]
        out[f] = FeatureData(
            feature=f, n_docs=len(all_docs), docs_firing=len(fired), positions_firing=int(values.size),
            n_positions=n_positions, max_act=float(values.max()) if values.size else 0.0,
            mean_act=float(values.mean()) if values.size else 0.0, histogram=histogram(values, opts.bins),
            rates=rates.get(f, {}), contexts=contexts,
            neighbours=[{"feature": n, "cosine": round(c, 4)} for n, c in neighbours.get(f, [])],
        )
    fill_tokens(store, layer, to_fill, acts, opts.window, decode, opts.seed)
    for data in out.values():
        data.contexts = [c for c in data.contexts if c.positions]
    return out


def sample_quiet(docs: list[str], fired: set[str], n: int, rng: random.Random) -> list[str]:
    """`n` distinct documents outside `fired`, uniformly (rejection sampling while most documents qualify, so a
    large store is not copied once per feature)."""
    quiet_total = len(docs) - len(fired)
    n = min(n, quiet_total)
    if n <= 0:
        return []
    if quiet_total < len(docs) // 2:
        return rng.sample([d for d in docs if d not in fired], n)
    picked: list[str] = []
    seen: set[int] = set()
    while len(picked) < n:
        i = rng.randrange(len(docs))
        if i not in seen and docs[i] not in fired:
            picked.append(docs[i])
        seen.add(i)
    return picked


def token_decoder(tokenizer):
    """ids -> one display text per token, whose concatenation is the decoded window: each token shows what it adds
    to the decoded text so far (so WordPiece ``##`` pieces and byte-level spaces come out as in the text). A
    character split over several byte-level tokens is given whole to the token that completes it (the ones before
    show as empty), so no token shows a replacement character that the text does not have."""

    def text(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def decode(ids: list[int]) -> list[str]:
        out: list[str] = []
        shown = ""
        for i in range(len(ids)):
            cur = text(ids[: i + 1])
            if cur.endswith("\ufffd") and i + 1 < len(ids):
                out.append("")  # an incomplete character: wait for the token that completes it
                continue
            if cur.startswith(shown):
                out.append(cur[len(shown):])
                shown = cur
            else:  # the decoder rewrote earlier text (rare): show this token on its own
                out.append(text(ids[i:i + 1]))
                shown = cur
        return out

    return decode

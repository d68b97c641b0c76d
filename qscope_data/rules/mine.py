"""Mine readable OR-rules from labelled documents: the Qwen-Scope report's toxicity recipe, as reviewable YAML.

Per group (each value of `--by`, and pooled):

1. rank features by Δ_f = P(f fires | positive) − P(f fires | negative) on the *discovery* split ("fires" = active
   at any aggregated position, i.e. present in the document's feature_ids);
2. keep the top K with Δ > 0 and choose, by F1 on the *validation* split, one threshold ε and how many of them
   (1..K) to OR together: the rule is ``fires(f_1, ε) or … or fires(f_k, ε)`` (``any_fires(…)`` when ε = 0);
3. write each rule with its features' Δ, support and top-activating example doc_ids (as metadata and comments).

The *held-out* split is never looked at; its seed and fraction go into the file so `rules eval` scores there.
With several layers in a store, `select_layer` applies the report's "top1-diff" proxy: the layer whose single best
feature has the largest Δ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import yaml
from pydantic import BaseModel, Field

from qscope_data import atomic
from qscope_data.errors import UsageError
from qscope_data.result import Result, status
from qscope_data.rules import split as splits
from qscope_data.rules.compile import compile_rules, feature_matrix
from qscope_data.rules.rulefile import IDENT, LoadedRuleFile, load_rule_file
from qscope_data.store import FeatureStore

EPS_QUANTILES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
POOLED = "all"


class MineOptions(BaseModel):
    """Everything that decides a mining run (recorded in the rule file, so `rules eval` can re-mine for its curves)."""

    label_field: str = "label"
    positive: str = "1"
    by: str | None = None
    top: int = Field(default=10, ge=1, le=200)
    fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = 0
    heldout_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    validation_fraction: float = Field(default=0.25, gt=0.0, lt=1.0)
    name: str = "mined"
    action: Literal["drop", "flag", "keep"] = "flag"
    examples: int = Field(default=3, ge=0, le=20)
    criterion: Literal["balanced_accuracy", "f1"] = "balanced_accuracy"  # what (k, ε) are chosen by


@dataclass
class MinedFeature:
    id: int
    delta: float
    p_pos: float
    p_neg: float
    support_pos: int
    support_neg: int
    examples: list[str] = field(default_factory=list)
    used: bool = False


@dataclass
class MinedRule:
    name: str
    group: str | None  # the --by value, or None for the pooled / ungrouped rule
    features: list[MinedFeature]  # ranked candidates; the first k are used
    k: int
    eps: float
    n_pos: int
    n_neg: int
    selection: dict[str, Any]  # split used to choose ε and k, with its P/R/F1

    @property
    def used(self) -> list[MinedFeature]:
        return self.features[: self.k]

    def expression(self) -> str:
        ids = [f"f{f.id}" for f in self.used]
        if self.eps == 0.0:
            return f"any_fires({', '.join(ids)})"
        eps = format_eps(self.eps)
        return "\n or ".join(f"fires({i}, {eps})" for i in ids) if len(ids) > 3 else " or ".join(
            f"fires({i}, {eps})" for i in ids
        )


def format_eps(eps: float) -> str:
    return repr(float(eps))


def round_sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def safe_suffix(value: str) -> str:
    """A --by value as part of a rule name (rule names are identifiers)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", value).strip("_") or "x"


# --- data --------------------------------------------------------------------------------------------------------


def positives(label: pl.Series, positive: str) -> pl.Series:
    """label == positive, compared as text (so --positive 1 works for int, string and bool labels)."""
    if label.dtype == pl.Boolean:
        want = positive.strip().lower() in ("1", "true", "yes")
        return label == want
    if label.dtype.is_float():
        try:
            return label == float(positive)
        except ValueError:
            pass
    return label.cast(pl.String) == positive


def load_labelled(store: FeatureStore, layer: int, cfg: MineOptions) -> pl.DataFrame:
    """doc_id, y (bool), group, split, feature_ids, max_acts for the labelled documents of a layer."""
    lf = store.scan(layer)
    columns = lf.collect_schema().names()
    for opt, col in (("--label-field", cfg.label_field), ("--by", cfg.by)):
        if col is not None and col not in columns:
            raise UsageError(f"{opt} {col!r} is not a column of {store.root} (columns: {', '.join(columns)})")
    wanted = ["doc_id", cfg.label_field, "feature_ids", "max_acts"] + ([cfg.by] if cfg.by and cfg.by != cfg.label_field else [])
    df = lf.select(wanted).filter(pl.col(cfg.label_field).is_not_null()).collect()
    y = positives(df[cfg.label_field], cfg.positive).fill_null(False)
    group = df[cfg.by].cast(pl.String).fill_null("(none)") if cfg.by else pl.Series([None] * df.height, dtype=pl.String)
    out = df.select("doc_id", "feature_ids", "max_acts").with_columns(
        y.alias("y"), group.alias("group"), splits.assign(df["doc_id"], cfg.seed, cfg.heldout_fraction, cfg.validation_fraction)
    )
    n_pos = int(out["y"].sum())
    if n_pos == 0 or n_pos == out.height:
        seen = ", ".join(map(str, df[cfg.label_field].cast(pl.String).unique().head(8).to_list()))
        side = "positive" if n_pos == 0 else "negative"
        raise UsageError(
            f"{store.root}: no {side} documents for {cfg.label_field} == {cfg.positive!r} (values seen: {seen}); "
            "pass --positive"
        )
    return out


def rank_features(df: pl.DataFrame) -> pl.DataFrame:
    """Features by Δ = P(fires | pos) − P(fires | neg), descending (ties: lower id first)."""
    n_pos = int(df["y"].sum())
    n_neg = df.height - n_pos
    if n_pos == 0 or n_neg == 0:
        return pl.DataFrame(schema={"feature": pl.Int64, "pos": pl.Int64, "neg": pl.Int64, "p_pos": pl.Float64,
                                    "p_neg": pl.Float64, "delta": pl.Float64})
    counts = (
        df.select("y", pl.col("feature_ids").list.unique().alias("feature"))
        .explode("feature")
        .drop_nulls("feature")
        .group_by("feature")
        .agg(pl.col("y").sum().cast(pl.Int64).alias("pos"), pl.len().cast(pl.Int64).alias("n"))
    )
    return (
        counts.with_columns(pl.col("feature").cast(pl.Int64), (pl.col("n") - pl.col("pos")).alias("neg"))
        .with_columns((pl.col("pos") / n_pos).alias("p_pos"), (pl.col("neg") / n_neg).alias("p_neg"))
        .with_columns((pl.col("p_pos") - pl.col("p_neg")).alias("delta"))
        .select("feature", "pos", "neg", "p_pos", "p_neg", "delta")
        .sort(["delta", "feature"], descending=[True, False])
    )


def prf(pred: np.ndarray, y: np.ndarray) -> dict[str, float | int]:
    """Precision, recall, F1, balanced accuracy, the share flagged, the flag-everything F1 floor, confusion counts.

    F1 flatters a rule that flags everything (on a set that is 70% positive, flagging all scores F1 0.82), so every
    report carries balanced accuracy ((TPR + TNR) / 2: 0.5 for any constant rule) and the share of documents
    flagged beside it, and `f1_flag_all` — the F1 of flagging everything on the same documents — as the floor.
    """
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    tn = int(np.sum(~pred & ~y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    pos, neg = tp + fn, fp + tn
    tnr = tn / neg if neg else 0.0
    balanced = (recall + tnr) / 2 if pos and neg else (recall if pos else tnr)
    n = int(pred.size)
    return {"precision": precision, "recall": recall, "f1": f1, "balanced_accuracy": balanced,
            "flagged": (tp + fp) / n if n else 0.0, "f1_flag_all": 2 * pos / (2 * pos + neg) if pos else 0.0,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn, "n": n}


def eps_grid(acts_pos: np.ndarray) -> list[float]:
    """0 plus quantiles of the candidates' non-zero activations on positive discovery documents (4 significant digits)."""
    nz = acts_pos[acts_pos > 0]
    grid = {0.0}
    if nz.size:
        grid |= {round_sig(float(q)) for q in np.quantile(nz, EPS_QUANTILES)}
    return sorted(g for g in grid if g >= 0)


def choose_k_eps(acts: np.ndarray, y: np.ndarray, grid: list[float],
                 criterion: str = "balanced_accuracy") -> tuple[int, float, dict[str, Any]]:
    """The (k, ε) of `any of the first k candidates > ε` with the best `criterion` (balanced accuracy by default:
    F1 prefers rules that flag nearly everything on a mostly-positive set); ties → fewer features, then smaller ε."""
    best: tuple[float, int, float] | None = None
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    for eps in grid:
        fires = acts > eps
        pred_k = np.logical_or.accumulate(fires, axis=1)  # column k-1: OR of the first k candidates
        tp = (pred_k & y[:, None]).sum(0)
        fp = (pred_k & ~y[:, None]).sum(0)
        fn = (~pred_k & y[:, None]).sum(0)
        if criterion == "f1":
            denom = 2 * tp + fp + fn
            score = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
        else:
            score = (tp / max(n_pos, 1) + (n_neg - fp) / max(n_neg, 1)) / 2
        for k in range(1, acts.shape[1] + 1):
            key = (float(score[k - 1]), -k, -eps)
            if best is None or key > (best[0], -best[1], -best[2]):
                best = (float(score[k - 1]), k, eps)
    assert best is not None
    _, k, eps = best
    pred = np.any(acts[:, :k] > eps, axis=1)
    return k, eps, prf(pred, y)


def mine_group(df: pl.DataFrame, name: str, group: str | None, cfg: MineOptions) -> MinedRule | None:
    """One OR-rule from the discovery (rank) and validation (choose) parts of `df`; None when it cannot be mined."""
    disc = df.filter(pl.col("split") == splits.DISCOVERY)
    val = df.filter(pl.col("split") == splits.VALIDATION)
    ranked = rank_features(disc).filter(pl.col("delta") > 0).head(cfg.top)
    if ranked.height == 0:
        return None
    ids_ranked = ranked["feature"].to_list()
    ids_sorted = sorted(ids_ranked)
    order = [ids_sorted.index(i) for i in ids_ranked]  # columns of the sorted matrix in rank order

    def ranked_acts(part: pl.DataFrame) -> np.ndarray:
        return feature_matrix(part, ids_sorted)[:, order]

    y_disc = disc["y"].to_numpy().astype(bool)
    disc_acts = ranked_acts(disc)
    grid = eps_grid(disc_acts[y_disc])
    y_val = val["y"].to_numpy().astype(bool)
    if val.height and y_val.any() and (~y_val).any():
        k, eps, metrics = choose_k_eps(ranked_acts(val), y_val, grid, cfg.criterion)
        selection = {"split": splits.VALIDATION, **metrics}
    else:  # too little data for a separate validation part: choose on discovery and say so
        k, eps, metrics = choose_k_eps(disc_acts, y_disc, grid, cfg.criterion)
        selection = {"split": splits.DISCOVERY, **metrics}

    mining = pl.concat([disc, val]) if val.height else disc
    mining_acts = ranked_acts(mining)
    doc_ids = mining["doc_id"].to_list()
    features = []
    for j, row in enumerate(ranked.iter_rows(named=True)):
        col = mining_acts[:, j]
        top = [doc_ids[i] for i in np.argsort(-col, kind="stable")[: cfg.examples] if col[i] > 0]
        features.append(MinedFeature(
            id=int(row["feature"]), delta=float(row["delta"]), p_pos=float(row["p_pos"]), p_neg=float(row["p_neg"]),
            support_pos=int(row["pos"]), support_neg=int(row["neg"]), examples=top, used=j < k,
        ))
    n_pos = int(y_disc.sum())
    return MinedRule(name, group, features, k, eps, n_pos, int(disc.height - n_pos), selection)


def mine_frame(df: pl.DataFrame, cfg: MineOptions) -> tuple[list[MinedRule], list[str]]:
    """Rules per group (+ pooled) from a labelled frame (see `load_labelled`); notes say what was skipped and why."""
    mining = df.filter(pl.col("split") != splits.HELDOUT)
    if cfg.fraction < 1.0:
        mining = mining.filter(pl.Series(splits.in_fraction(mining["doc_id"], cfg.seed, cfg.fraction)))
    rules: list[MinedRule] = []
    notes: list[str] = []
    if cfg.by:
        for value in sorted(mining["group"].unique().to_list()):
            part = mining.filter(pl.col("group") == value)
            disc = part.filter(pl.col("split") == splits.DISCOVERY)
            n_pos = int(disc["y"].sum())
            if n_pos == 0 or n_pos == disc.height:
                notes.append(f"{cfg.by}={value}: discovery part has only {'negative' if n_pos == 0 else 'positive'} documents; no rule")
                continue
            rule = mine_group(part, f"{cfg.name}_{safe_suffix(value)}", value, cfg)
            if rule is None:
                notes.append(f"{cfg.by}={value}: no feature fires more often on positives; no rule")
            else:
                rules.append(rule)
    pooled_name = f"{cfg.name}_{POOLED}" if cfg.by else cfg.name
    pooled = mine_group(mining, pooled_name, None, cfg)
    if pooled is None:
        notes.append("pooled: no feature fires more often on positives; no rule")
    else:
        rules.append(pooled)
    return rules, notes


# --- layer selection (top1-diff) ---------------------------------------------------------------------------------


def select_layer(store: FeatureStore, cfg: MineOptions) -> dict[str, Any]:
    """Per layer, the best feature's Δ on the discovery split (pooled and per group); the layer with the largest wins."""
    layers: dict[int, Any] = {}
    for layer in store.layers:
        df = load_labelled(store, layer, cfg)
        disc = df.filter(pl.col("split") == splits.DISCOVERY)
        entry: dict[str, Any] = {}
        ranked = rank_features(disc)
        if ranked.height:
            entry["pooled"] = {"feature": int(ranked["feature"][0]), "delta": float(ranked["delta"][0])}
        if cfg.by:
            entry["by_group"] = {}
            for value in sorted(disc["group"].unique().to_list()):
                r = rank_features(disc.filter(pl.col("group") == value))
                if r.height:
                    entry["by_group"][value] = {"feature": int(r["feature"][0]), "delta": float(r["delta"][0])}
        layers[layer] = entry
    scored = [(v["pooled"]["delta"], -layer) for layer, v in layers.items() if "pooled" in v]
    if not scored:
        raise UsageError(f"{store.root}: no layer has a feature that separates the labels")
    best = -max(scored)[1]
    return {"method": "top1-diff: the layer whose best single feature has the largest Δ (pooled)", "layers": layers,
            "chosen": best}


# --- writing -----------------------------------------------------------------------------------------------------


class _Literal(str):
    """A string YAML writes as a `|` block (multi-line rule expressions stay readable)."""


class _Flow(dict):
    """A mapping YAML writes on one line (one feature per line in the metadata)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", str(v), style="|"))
_Dumper.add_representer(_Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", dict(v), flow_style=True))


def _dump(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=200, default_flow_style=False)


def _rule_comment(rule: MinedRule) -> list[str]:
    sel = rule.selection
    lines = [
        f"# {rule.name}: {rule.k} of {len(rule.features)} ranked features, eps = {format_eps(rule.eps)}; "
        f"{sel['split']} balanced accuracy {sel['balanced_accuracy']:.3f}, F1 {sel['f1']:.3f} (P {sel['precision']:.3f}, "
        f"R {sel['recall']:.3f}, flagged {sel['flagged']:.0%}, n = {sel['n']})",
    ]
    for f in rule.features:
        mark = "*" if f.used else " "
        ex = ", ".join(f.examples) if f.examples else "-"
        lines.append(
            f"#  {mark} f{f.id:<6} Δ={f.delta:+.3f}  P(pos)={f.p_pos:.3f} P(neg)={f.p_neg:.3f}  "
            f"fires on {f.support_pos} pos / {f.support_neg} neg  e.g. {ex}"
        )
    return lines


def render_rule_file(rules: list[MinedRule], header: dict[str, Any], metadata: dict[str, Any], cfg: MineOptions) -> str:
    """The mined rules as a commented, reviewable YAML rule file."""
    by_note = f"per {cfg.by} value + pooled" if cfg.by else "pooled"
    out = [
        f"# Mined by `qscope rules mine`: {cfg.label_field} == {cfg.positive!r}, {by_note}.",
        "# Δ = P(fires | positive) − P(fires | negative) on the discovery split; ε and the number of features were chosen",
        "# by F1 on the validation split. The held-out split (metadata.split) was not used: `qscope rules eval` scores there.",
        "# Feature lines: * = used in the rule; support = documents it fires on; e.g. = top-activating doc_ids.",
        _dump({"sae": header}).rstrip(),
        _dump({"metadata": metadata}).rstrip(),
        "rules:",
    ]
    for rule in rules:
        expr = rule.expression()
        entry: dict[str, Any] = {
            "name": rule.name,
            "when": _Literal(expr + "\n") if "\n" in expr else expr,
            "action": cfg.action,
        }
        if rule.group is not None and cfg.by == "lang":
            entry["languages"] = [rule.group]
        entry["description"] = (
            f"{cfg.label_field} == {cfg.positive!r}" + (f" on {cfg.by} = {rule.group}" if rule.group is not None else "")
        )
        entry["metadata"] = {
            "mined_on": {"field": cfg.by, "value": rule.group} if rule.group is not None else {"field": None, "value": None},
            "eps": rule.eps,
            "k": rule.k,
            "discovery": {"positive": rule.n_pos, "negative": rule.n_neg},
            "selection": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rule.selection.items()},
            "features": [
                _Flow({"id": f.id, "used": f.used, "delta": round(f.delta, 4), "p_pos": round(f.p_pos, 4),
                 "p_neg": round(f.p_neg, 4), "support_pos": f.support_pos, "support_neg": f.support_neg,
                 "examples": f.examples})
                for f in rule.features
            ],
        }
        out.append("")
        out += ["  " + line for line in _rule_comment(rule)]
        body = _dump([entry]).rstrip().splitlines()
        out += ["  " + line for line in body]
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class MineInputs:
    """What mining reads: a labelled store and its SAE layer — a number, "auto" (top1-diff, `select_layer`), or
    None (the store's only layer; top1-diff when it holds several)."""

    store: Path
    layer: int | Literal["auto"] | None = None


def run(options: MineOptions, inputs: MineInputs, out: str | Path, *,
        progress: bool | None = None) -> Result[LoadedRuleFile]:
    """The mining stage (`qscope rules mine`, the pipeline's `mine`): rules mined from the store, written to `out`
    (atomically, after checking they compile against the store) and returned as `load_rule_file` reads them.
    Stats: the layer, per rule its name, group, k, ε, used features, best Δ and selection metrics, the notes, and
    the top1-diff report when the layer was chosen that way. `progress`: a status line on stderr while it mines."""
    cfg, layer = options, inputs.layer
    store = FeatureStore(inputs.store)
    if cfg.name and not IDENT.match(cfg.name):
        raise UsageError(f"--name {cfg.name!r} must be an identifier")
    with status(progress, f"mining rules from {inputs.store}…"):
        layer_report = None
        if layer == "auto" or (layer is None and len(store.layers) > 1):
            layer_report = select_layer(store, cfg)
            chosen = int(layer_report["chosen"])
        else:
            chosen = store.resolve_layer(int(layer) if layer is not None else None)
        df = load_labelled(store, chosen, cfg)
        rules, notes = mine_frame(df, cfg)
    if not rules:
        raise UsageError(f"{store.root}: nothing to mine: " + "; ".join(notes))
    sae = store.manifest.sae(chosen)
    header = {"id": sae.source or str(store.manifest.model.get("id", "")), "layer": chosen, "d_sae": sae.d_sae}
    counts = df.group_by("split").len().sort("split")
    metadata: dict[str, Any] = {
        "kind": "qscope-mined-rules",
        "store": str(Path(inputs.store)),
        "store_manifest_sha256": store.manifest_hash(),
        "model": store.manifest.model.get("id", ""),
        "config": cfg.model_dump(),
        "split": {"method": splits.METHOD, "seed": cfg.seed, "heldout_fraction": cfg.heldout_fraction,
                  "validation_fraction": cfg.validation_fraction,
                  "documents": {k: int(v) for k, v in counts.iter_rows()}},
        "notes": notes,
    }
    if layer_report is not None:
        metadata["layer_selection"] = layer_report
    text = render_rule_file(rules, header, metadata, cfg)
    out = Path(out)
    with atomic.atomic_path(out) as tmp:  # the file only appears once it is known to compile against the store
        tmp.write_text(text, encoding="utf-8")
        try:
            compile_rules([load_rule_file(tmp)], store.scan(chosen).collect_schema(), store_d_sae=sae.d_sae)
        except UsageError as exc:  # pragma: no cover - a bug in the writer, not in the user's input
            raise RuntimeError(f"mined rule file does not compile: {exc}") from exc
    stats = {
        "layer": chosen, "rules": [
            {"name": r.name, "group": r.group, "k": r.k, "eps": r.eps, "features": [f.id for f in r.used],
             "top_delta": r.features[0].delta, "selection": r.selection} for r in rules
        ], "notes": notes, "layer_selection": layer_report,
    }
    return Result(load_rule_file(out), {"rules": out}, stats)

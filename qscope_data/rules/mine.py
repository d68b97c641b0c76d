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

Memory: mining keeps per document its doc_id, label, group and split (`Labelled`), and reads the feature lists in
batches of `BATCH_DOCS` documents — once to count firings (d_sae counters per group), once to gather the chosen
candidates' activations (documents × candidates) — so it never holds the store's feature lists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

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

BATCH_DOCS = 8192  # documents whose feature lists mining holds at once (the store is read in batches, twice)


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


@dataclass
class Labelled:
    """The labelled documents of one layer, as mining keeps them: per document its doc_id, label, group and split
    (≈ the doc_id's bytes + 70 bytes), never its feature lists — those are re-read from the store `BATCH_DOCS`
    documents at a time, once to count firings and once to gather the chosen candidates' activations."""

    store: FeatureStore
    layer: int
    label_field: str
    doc_ids: list[str]
    y: np.ndarray  # bool
    group: np.ndarray  # str (object); None everywhere without --by
    split: np.ndarray  # str (object): heldout / validation / discovery

    def mask(self, split: str | None = None, group: str | None = None, base: np.ndarray | None = None) -> np.ndarray:
        m = np.ones(len(self.doc_ids), dtype=bool) if base is None else base.copy()
        if split is not None:
            m &= self.split == split
        if group is not None:
            m &= self.group == group
        return m

    def batches(self, columns: list[str]) -> Iterator[tuple[int, pl.DataFrame]]:
        """(index of the first document, its labelled rows' `columns`), in store order, a bounded batch at a time."""
        start = 0
        for batch in self.store.batches(self.layer, [self.label_field, *columns], batch_rows=BATCH_DOCS):
            rows = batch.filter(pl.col(self.label_field).is_not_null()).select(columns)
            yield start, rows
            start += rows.height

    def firing_counts(self, masks: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per mask, (documents among the positives, documents) each feature fires in — one pass over the store."""
        d_sae = self.store.manifest.sae(self.layer).d_sae
        out = [(np.zeros(d_sae, dtype=np.int64), np.zeros(d_sae, dtype=np.int64)) for _ in masks]
        for start, rows in self.batches(["feature_ids"]):
            fired = rows["feature_ids"].list.unique()
            doc = start + np.repeat(np.arange(rows.height), fired.list.len().fill_null(0).to_numpy())
            feature = fired.explode().drop_nulls().to_numpy().astype(np.int64)
            for (pos, total), m in zip(out, masks):
                sel = m[doc]
                total += np.bincount(feature[sel], minlength=d_sae)[:d_sae]
                pos += np.bincount(feature[sel & self.y[doc]], minlength=d_sae)[:d_sae]
        return out

    def activations(self, ids_sorted: list[int], mask: np.ndarray) -> np.ndarray:
        """max_acts [documents in `mask`, ids] (float64, 0 where absent), in store order — one pass over the store."""
        parts = [np.zeros((0, len(ids_sorted)))]
        for start, rows in self.batches(["feature_ids", "max_acts"]):
            sel = mask[start:start + rows.height]
            if sel.any():
                parts.append(feature_matrix(rows.filter(pl.Series(sel)), ids_sorted))
        return np.vstack(parts)

    def frame(self, mask: np.ndarray) -> pl.DataFrame:
        """doc_id, feature_ids, max_acts, y, group of the documents in `mask` (for compiling rules over them)."""
        parts = [rows.filter(pl.Series(mask[start:start + rows.height]))
                 for start, rows in self.batches(["doc_id", "feature_ids", "max_acts"])]
        return pl.concat(parts).with_columns(pl.Series("y", self.y[mask]),
                                             pl.Series("group", self.group[mask].tolist(), dtype=pl.String))


def load_labelled(store: FeatureStore, layer: int, cfg: MineOptions) -> Labelled:
    """The labelled documents of a layer: doc_id, y, group and split, read without their feature lists."""
    lf = store.scan(layer)
    columns = lf.collect_schema().names()
    for opt, col in (("--label-field", cfg.label_field), ("--by", cfg.by)):
        if col is not None and col not in columns:
            raise UsageError(f"{opt} {col!r} is not a column of {store.root} (columns: {', '.join(columns)})")
    wanted = ["doc_id", cfg.label_field] + ([cfg.by] if cfg.by and cfg.by != cfg.label_field else [])
    df = lf.select(wanted).filter(pl.col(cfg.label_field).is_not_null()).collect()
    y = positives(df[cfg.label_field], cfg.positive).fill_null(False).to_numpy().astype(bool)
    group = (df[cfg.by].cast(pl.String).fill_null("(none)").to_numpy().astype(object) if cfg.by
             else np.full(df.height, None, dtype=object))
    split = splits.assign(df["doc_id"], cfg.seed, cfg.heldout_fraction, cfg.validation_fraction)
    split = split.to_numpy().astype(object)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == df.height:
        seen = ", ".join(map(str, df[cfg.label_field].cast(pl.String).unique().head(8).to_list()))
        side = "positive" if n_pos == 0 else "negative"
        raise UsageError(
            f"{store.root}: no {side} documents for {cfg.label_field} == {cfg.positive!r} (values seen: {seen}); "
            "pass --positive"
        )
    return Labelled(store, layer, cfg.label_field, df["doc_id"].to_list(), y, group, split)


def rank_features(pos: np.ndarray, total: np.ndarray, n_pos: int, n_neg: int) -> pl.DataFrame:
    """Features by Δ = P(fires | pos) − P(fires | neg), descending (ties: lower id first), from firing counts."""
    if n_pos == 0 or n_neg == 0:
        return pl.DataFrame(schema={"feature": pl.Int64, "pos": pl.Int64, "neg": pl.Int64, "p_pos": pl.Float64,
                                    "p_neg": pl.Float64, "delta": pl.Float64})
    fired = np.flatnonzero(total)
    counts = pl.DataFrame({"feature": fired.astype(np.int64), "pos": pos[fired], "n": total[fired]})
    return (
        counts.with_columns((pl.col("n") - pl.col("pos")).alias("neg"))
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


@dataclass
class _Target:
    """One rule to mine: its name and group, and the discovery / validation documents it is mined on."""

    name: str
    group: str | None
    disc: np.ndarray
    val: np.ndarray


def _ranked(lab: Labelled, mask: np.ndarray, counts: tuple[np.ndarray, np.ndarray]) -> pl.DataFrame:
    n_pos = int(lab.y[mask].sum())
    return rank_features(*counts, n_pos, int(mask.sum()) - n_pos)


def mine_group(lab: Labelled, target: _Target, ranked: pl.DataFrame, acts: np.ndarray, row_of: np.ndarray,
               col_of: dict[int, int], cfg: MineOptions) -> MinedRule | None:
    """One OR-rule from its candidates (`ranked`: the top features with Δ > 0 on the discovery part), (k, ε)
    chosen on the validation part; None without candidates. `acts[row_of[doc], col_of[feature]]` is a candidate's
    activation."""
    if ranked.height == 0:
        return None
    cols = [col_of[int(i)] for i in ranked["feature"].to_list()]

    def ranked_acts(docs: np.ndarray) -> np.ndarray:  # [docs, candidates in rank order]
        return acts[row_of[docs]][:, cols]

    disc, val = np.flatnonzero(target.disc), np.flatnonzero(target.val)
    y_disc, y_val = lab.y[disc], lab.y[val]
    disc_acts = ranked_acts(disc)
    grid = eps_grid(disc_acts[y_disc])
    if val.size and y_val.any() and (~y_val).any():
        k, eps, metrics = choose_k_eps(ranked_acts(val), y_val, grid, cfg.criterion)
        selection = {"split": splits.VALIDATION, **metrics}
    else:  # too little data for a separate validation part: choose on discovery and say so
        k, eps, metrics = choose_k_eps(disc_acts, y_disc, grid, cfg.criterion)
        selection = {"split": splits.DISCOVERY, **metrics}

    mining = np.concatenate([disc, val])
    mining_acts = ranked_acts(mining)
    features = []
    for j, row in enumerate(ranked.iter_rows(named=True)):
        col = mining_acts[:, j]
        top = [lab.doc_ids[mining[i]] for i in np.argsort(-col, kind="stable")[: cfg.examples] if col[i] > 0]
        features.append(MinedFeature(
            id=int(row["feature"]), delta=float(row["delta"]), p_pos=float(row["p_pos"]), p_neg=float(row["p_neg"]),
            support_pos=int(row["pos"]), support_neg=int(row["neg"]), examples=top, used=j < k,
        ))
    n_pos = int(y_disc.sum())
    return MinedRule(target.name, target.group, features, k, eps, n_pos, int(disc.size - n_pos), selection)


def mine_rules(lab: Labelled, cfg: MineOptions) -> tuple[list[MinedRule], list[str]]:
    """Rules per group (+ pooled) from the labelled documents; notes say what was skipped and why. Two passes over
    the store: firing counts for every group at once, then the activations of every group's candidates."""
    mining = lab.split != splits.HELDOUT
    if cfg.fraction < 1.0:
        mining &= splits.in_fraction(lab.doc_ids, cfg.seed, cfg.fraction)
    disc_all, val_all = lab.mask(splits.DISCOVERY, base=mining), lab.mask(splits.VALIDATION, base=mining)
    plan: list[_Target | str] = []
    if cfg.by:
        for value in sorted(set(lab.group[mining].tolist())):
            disc = lab.mask(group=value, base=disc_all)
            n_pos = int(lab.y[disc].sum())
            if n_pos == 0 or n_pos == int(disc.sum()):
                plan.append(f"{cfg.by}={value}: discovery part has only {'negative' if n_pos == 0 else 'positive'} "
                            "documents; no rule")
            else:
                val = lab.mask(group=value, base=val_all)
                plan.append(_Target(f"{cfg.name}_{safe_suffix(value)}", value, disc, val))
    plan.append(_Target(f"{cfg.name}_{POOLED}" if cfg.by else cfg.name, None, disc_all, val_all))
    targets = [t for t in plan if isinstance(t, _Target)]
    candidates = [_ranked(lab, t.disc, c).filter(pl.col("delta") > 0).head(cfg.top)
                  for t, c in zip(targets, lab.firing_counts([t.disc for t in targets]))]
    ids = sorted({int(f) for r in candidates for f in r["feature"]})
    used = disc_all | val_all
    acts = lab.activations(ids, used) if ids else np.zeros((int(used.sum()), 0))
    row_of = np.full(len(lab.doc_ids), -1, dtype=np.int64)
    row_of[np.flatnonzero(used)] = np.arange(int(used.sum()))
    col_of = {f: j for j, f in enumerate(ids)}
    rules: list[MinedRule] = []
    notes: list[str] = []
    per_target = iter(candidates)  # in plan order
    for item in plan:
        if isinstance(item, str):
            notes.append(item)
        elif (rule := mine_group(lab, item, next(per_target), acts, row_of, col_of, cfg)) is not None:
            rules.append(rule)
        else:
            where = f"{cfg.by}={item.group}" if item.group is not None else "pooled"
            notes.append(f"{where}: no feature fires more often on positives; no rule")
    return rules, notes


# --- layer selection (top1-diff) ---------------------------------------------------------------------------------


def select_layer(store: FeatureStore, cfg: MineOptions) -> dict[str, Any]:
    """Per layer, the best feature's Δ on the discovery split (pooled and per group); the layer with the largest wins."""
    layers: dict[int, Any] = {}
    for layer in store.layers:
        lab = load_labelled(store, layer, cfg)
        disc = lab.mask(splits.DISCOVERY)
        groups = sorted(set(lab.group[disc].tolist())) if cfg.by else []
        masks = [disc] + [lab.mask(group=value, base=disc) for value in groups]
        ranked = [_ranked(lab, m, c) for m, c in zip(masks, lab.firing_counts(masks))]
        entry: dict[str, Any] = {}
        if ranked[0].height:
            entry["pooled"] = {"feature": int(ranked[0]["feature"][0]), "delta": float(ranked[0]["delta"][0])}
        if cfg.by:
            entry["by_group"] = {value: {"feature": int(r["feature"][0]), "delta": float(r["delta"][0])}
                                 for value, r in zip(groups, ranked[1:]) if r.height}
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
        lab = load_labelled(store, chosen, cfg)
        rules, notes = mine_rules(lab, cfg)
    if not rules:
        raise UsageError(f"{store.root}: nothing to mine: " + "; ".join(notes))
    sae = store.manifest.sae(chosen)
    header = {"id": sae.source or str(store.manifest.model.get("id", "")), "layer": chosen, "d_sae": sae.d_sae}
    split_names, split_sizes = np.unique(lab.split.astype(str), return_counts=True)
    metadata: dict[str, Any] = {
        "kind": "qscope-mined-rules",
        "store": str(Path(inputs.store)),
        "store_manifest_sha256": store.manifest_hash(),
        "model": store.manifest.model.get("id", ""),
        "config": cfg.model_dump(),
        "split": {"method": splits.METHOD, "seed": cfg.seed, "heldout_fraction": cfg.heldout_fraction,
                  "validation_fraction": cfg.validation_fraction,
                  "documents": {str(k): int(v) for k, v in zip(split_names, split_sizes)}},
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

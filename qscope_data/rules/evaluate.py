"""Evaluate rules against labels: per-rule and per-language P/R/F1, a cross-lingual transfer matrix, a
data-efficiency curve — numbers in report.json, plots beside it (see `report.py`).

A rule is judged on its *scope*: the languages it lists, else the group it was mined on (metadata.mined_on), else
every document. The transfer matrix applies each group-mined rule's condition, scope ignored, to every other
group's documents. The curve re-mines with the rule file's recorded settings on 10 % … 100 % of the mining split
and scores each result on the held-out split — the one the rule file's seed says mining never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from qscope_data import atomic
from qscope_data.errors import UsageError
from qscope_data.rules import split as splits
from qscope_data.rules.compile import Needs, Scope, attach_features, compile_expression, field_kinds
from qscope_data.rules.mine import MineOptions, load_labelled, mine_rules, positives, prf
from qscope_data.rules.parser import parse
from qscope_data.rules.rulefile import LoadedRuleFile
from qscope_data.rules.score import evaluate_store, prepare
from qscope_data.store import FeatureStore

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class SplitSpec:
    seed: int
    heldout_fraction: float
    validation_fraction: float


def split_spec(files: list[LoadedRuleFile]) -> SplitSpec | None:
    """The mining split recorded in the rule files (they must agree when several carry one)."""
    specs = []
    for f in files:
        s = f.model.metadata.get("split")
        if isinstance(s, dict) and "seed" in s and "heldout_fraction" in s:
            specs.append(SplitSpec(int(s["seed"]), float(s["heldout_fraction"]), float(s.get("validation_fraction", 0.25))))
    if not specs:
        return None
    if any(s != specs[0] for s in specs[1:]):
        raise UsageError("the rule files were mined with different splits; evaluate them separately")
    return specs[0]


def mining_config(files: list[LoadedRuleFile]) -> MineOptions | None:
    for f in files:
        cfg = f.model.metadata.get("config")
        if isinstance(cfg, dict):
            try:
                return MineOptions.model_validate(cfg)
            except Exception:
                return None
    return None


def rule_scope(rule_model) -> tuple[str, list[str]] | None:
    """(field, values) a rule is judged on, or None for every document."""
    if rule_model.languages:
        return "lang", list(rule_model.languages)
    mined = rule_model.metadata.get("mined_on") if isinstance(rule_model.metadata, dict) else None
    if isinstance(mined, dict) and mined.get("field") and mined.get("value") is not None:
        return str(mined["field"]), [str(mined["value"])]
    return None


def _metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    m = prf(pred, y)
    m["positives"] = int(y.sum())
    return m


def predict_expression(text: str, frame: pl.DataFrame, d_sae: int | None) -> np.ndarray:
    """Evaluate one condition over a frame of store rows through the same compiler `score` uses."""
    fields, unusable = field_kinds(frame.schema)
    needs = Needs()
    kind, expr = compile_expression(parse(text), Scope({}, fields, unusable, d_sae), needs)
    if kind != "bool":
        raise UsageError(f"not a condition: {text}")
    rows = attach_features(frame, needs)
    return rows.select(expr.fill_null(False)).to_series().to_numpy().astype(bool)


def data_efficiency(
    store: FeatureStore, layer: int, cfg: MineOptions, fractions: tuple[float, ...], d_sae: int | None
) -> dict[str, Any]:
    """Re-mine on growing fractions of the mining split; F1 of each rule on its group's held-out documents."""
    lab = load_labelled(store, layer, cfg)
    held_out = lab.split == splits.HELDOUT
    held = lab.frame(held_out)  # the documents the curve scores on, with their feature lists
    curves: dict[str, list[dict[str, Any]]] = {}
    n_mining = int((~held_out).sum())
    for fraction in fractions:
        rules, _ = mine_rules(lab, cfg.model_copy(update={"fraction": fraction}))
        for rule in rules:
            part = held if rule.group is None else held.filter(pl.col("group") == rule.group)
            y = part["y"].to_numpy().astype(bool)
            pred = predict_expression(rule.expression(), part, d_sae) if part.height else np.zeros(0, dtype=bool)
            key = rule.group if rule.group is not None else "pooled"
            curves.setdefault(key, []).append({
                "fraction": fraction, "mining_documents": int(round(n_mining * fraction)), "k": rule.k, "eps": rule.eps,
                "features": [f.id for f in rule.used], **_metrics(pred, y),
            })
    out: dict[str, Any] = {"fractions": list(fractions), "curves": curves}
    for key, points in curves.items():
        full = next((p["f1"] for p in points if p["fraction"] == 1.0), None)
        if full:
            out.setdefault("relative_to_full", {})[key] = {str(p["fraction"]): p["f1"] / full for p in points}
    return out


def evaluate_rules(
    rule_paths: list[str | Path], store_path: str | Path, out: str | Path, *, label_field: str | None = None,
    positive: str | None = None, by: str | None = None, split: str = "auto", layer: int | None = None,
    curve: bool = True, fractions: tuple[float, ...] = FRACTIONS, progress: bool = True,
) -> dict[str, Any]:
    """Score the rules over labelled documents and write report.json (+ PNG plots and report.html beside it)."""
    from qscope_data.rules.report import write_report

    store = FeatureStore(store_path)
    files, layer, program = prepare(store, rule_paths, layer)
    cfg = mining_config(files)
    label_field = label_field or (cfg.label_field if cfg else "label")
    positive = positive if positive is not None else (cfg.positive if cfg else "1")
    columns = store.scan(layer).collect_schema().names()
    if by is None and cfg is not None and cfg.by:
        by = cfg.by
    for opt, col in (("--label-field", label_field), ("--by", by)):
        if col is not None and col not in columns:
            raise UsageError(f"{opt} {col!r} is not a column of {store.root} (columns: {', '.join(columns)})")
    spec = split_spec(files)
    if split not in ("auto", "heldout", "all"):
        raise UsageError(f"--split {split!r}: choose heldout, all or auto")
    if split == "heldout" and spec is None:
        raise UsageError("--split heldout needs a mined rule file (metadata.split records the held-out part); use --split all")
    use_heldout = spec is not None and split in ("auto", "heldout")

    scopes = {r.name: rule_scope(r.rule.model) for r in program.rules}
    extra = [c for c in dict.fromkeys([label_field, by, *(s[0] for s in scopes.values() if s)]) if c and c in columns]
    raw = evaluate_store(store, program, layer, progress=progress, apply_languages=False, extra_columns=extra)
    raw = raw.filter(pl.col(label_field).is_not_null())
    if use_heldout:
        assert spec is not None
        raw = raw.filter(splits.assign(raw["doc_id"], spec.seed, spec.heldout_fraction, spec.validation_fraction) == splits.HELDOUT)
    if raw.height == 0:
        raise UsageError("no labelled documents to evaluate on" + (" in the held-out split" if use_heldout else ""))
    y_all = positives(raw[label_field], positive).fill_null(False).to_numpy().astype(bool)
    groups = raw[by].cast(pl.String).fill_null("(none)").to_numpy() if by else None

    rules_report: dict[str, Any] = {}
    for r in program.rules:
        pred_all = raw[r.name].to_numpy().astype(bool)
        scope = scopes[r.name]
        mask = np.ones(raw.height, dtype=bool)
        if scope is not None:
            field_values = raw[scope[0]].cast(pl.String).to_numpy() if scope[0] in raw.columns else None
            mask = np.isin(field_values, scope[1]) if field_values is not None else mask
        entry: dict[str, Any] = {
            "action": r.action, "scope": {"field": scope[0], "values": scope[1]} if scope else None,
            "overall": _metrics(pred_all[mask], y_all[mask]),
        }
        if groups is not None:
            entry["by_group"] = {
                g: _metrics(pred_all[mask & (groups == g)], y_all[mask & (groups == g)])
                for g in sorted(set(groups[mask].tolist()))
            }
        rules_report[r.name] = entry

    transfer = None
    mined = [(r, s) for r in program.rules if (s := scopes[r.name]) is not None and len(s[1]) == 1]
    if groups is not None and mined:
        targets = sorted(set(groups.tolist()))
        matrix = {}
        for r, (field, values) in mined:
            pred_all = raw[r.name].to_numpy().astype(bool)
            cells = {g: _metrics(pred_all[groups == g], y_all[groups == g]) for g in targets}
            matrix[values[0]] = {"rule": r.name, **{key: {g: c[key] for g, c in cells.items()}
                                                     for key in ("f1", "balanced_accuracy", "flagged")}}
        transfer = {"sources": list(matrix), "targets": targets, "matrix": matrix,
                    "note": "the rule mined on the row's group, applied (scope ignored) to the column's documents: "
                            "F1, balanced accuracy and the share flagged"}

    efficiency = None
    if curve and cfg is not None and spec is not None:
        cfg_eval = cfg.model_copy(update={"label_field": label_field, "positive": positive})
        efficiency = data_efficiency(store, layer, cfg_eval, fractions, store.manifest.sae(layer).d_sae)

    report: dict[str, Any] = {
        "kind": "qscope-rules-eval",
        "store": str(Path(store_path)),
        "store_manifest_sha256": store.manifest_hash(),
        "model": store.manifest.model.get("id", ""),
        "layer": layer,
        "rule_files": [{"path": str(f.path), "sha256": f.sha256} for f in files],
        "label_field": label_field,
        "positive": positive,
        "by": by,
        "split": "heldout" if use_heldout else "all",
        "n_documents": raw.height,
        "n_positive": int(y_all.sum()),
        "rules": rules_report,
        "transfer": transfer,
        "data_efficiency": efficiency,
    }
    report["artifacts"] = write_report(report, Path(out))
    atomic.write_json(out, report)
    return report

"""The files `explain` writes for programs: the label file, and the per-feature table (Parquet + JSON).

`labels.jsonl` is the label file `qscope features select --labels` reads (`coverage/inventory.py:load_labels`):
one line per feature with ``id``, ``label``, ``description``, ``score`` (detection balanced accuracy, read as the
safety score by ``--min-safety-score``) and the evidence behind it (precision, recall, specificity, excerpts
scored, who explained and who scored). Without an explainer, label, description and score are null — the file says
they are empty; nothing is invented. The table (`features.parquet`, `features.json`) holds every number of the
dashboard: firing statistics, the histogram, firing rates per field, logit-lens tokens and the contexts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from qscope_data import atomic
from qscope_data.explain.contexts import FeatureData
from qscope_data.explain.detection import DetectionScore
from qscope_data.explain.prompts import Explanation

LABELS_FILE = "labels.jsonl"
TABLE_PARQUET = "features.parquet"
TABLE_JSON = "features.json"


@dataclass
class FeatureResult:
    """One feature's dashboard data plus what the LLMs said (None without an explainer)."""

    data: FeatureData
    lens: dict[str, Any] | None = None
    explanation: Explanation | None = None
    explain_error: str | None = None
    score: DetectionScore | None = None
    score_error: str | None = None
    answers: list[dict[str, Any]] = field(default_factory=list)  # per scored excerpt: doc_id, kind, fires, said

    def label_row(self, explainer: str | None, scorer: str | None, layer: int) -> dict[str, Any]:
        s = self.score
        return {
            "id": self.data.feature, "label": self.explanation.label if self.explanation else None,
            "description": self.explanation.description if self.explanation else None,
            "score": s.balanced_accuracy if s else None, "precision": s.precision if s else None,
            "recall": s.recall if s else None, "specificity": s.specificity if s else None,
            "n_scored": s.n if s else 0, "explainer": explainer, "scorer": scorer, "layer": layer,
        }

    def to_json(self) -> dict[str, Any]:
        d = self.data
        return {
            "feature": d.feature, "docs_firing": d.docs_firing, "n_docs": d.n_docs, "firing_rate": round(d.firing_rate, 6),
            "positions_firing": d.positions_firing, "n_positions": d.n_positions, "max_act": d.max_act,
            "mean_act": d.mean_act, "histogram": d.histogram, "rates": d.rates, "neighbours": d.neighbours,
            "logit_lens": self.lens,
            "label": self.explanation.label if self.explanation else None,
            "description": self.explanation.description if self.explanation else None,
            "explain_error": self.explain_error,
            "detection": self.score.to_json() if self.score else None, "score_error": self.score_error,
            "answers": self.answers,
            "contexts": [c.to_json() for c in d.contexts],
        }


def write_labels(results: list[FeatureResult], path: str | Path, *, explainer: str | None, scorer: str | None,
                 layer: int) -> Path:
    lines = [json.dumps(r.label_row(explainer, scorer, layer), ensure_ascii=False) for r in results]
    atomic.write_text(path, "".join(line + "\n" for line in lines))
    return Path(path)


def write_table(results: list[FeatureResult], out: str | Path, meta: dict[str, Any]) -> dict[str, Path]:
    """features.json (everything, with the run's meta) and features.parquet (one row per feature, nested as JSON)."""
    out = Path(out)
    rows = [r.to_json() for r in results]
    atomic.write_json(out / TABLE_JSON, {"meta": meta, "features": rows})
    flat = []
    for r, row in zip(results, rows):
        lens = row["logit_lens"] or {}
        flat.append({
            "feature": row["feature"], "label": row["label"], "description": row["description"],
            "score": r.score.balanced_accuracy if r.score else None, "precision": r.score.precision if r.score else None,
            "recall": r.score.recall if r.score else None, "docs_firing": row["docs_firing"], "n_docs": row["n_docs"],
            "firing_rate": row["firing_rate"], "positions_firing": row["positions_firing"], "max_act": row["max_act"],
            "mean_act": row["mean_act"],
            "promoted": [t["token"] for t in lens.get("promoted", [])],
            "suppressed": [t["token"] for t in lens.get("suppressed", [])],
            "rates_json": json.dumps(row["rates"], ensure_ascii=False),
            "contexts_json": json.dumps(row["contexts"], ensure_ascii=False),
        })
    schema = {"feature": pl.Int64, "label": pl.String, "description": pl.String, "score": pl.Float64,
              "precision": pl.Float64, "recall": pl.Float64, "docs_firing": pl.Int64, "n_docs": pl.Int64,
              "firing_rate": pl.Float64, "positions_firing": pl.Int64, "max_act": pl.Float64, "mean_act": pl.Float64,
              "promoted": pl.List(pl.String), "suppressed": pl.List(pl.String), "rates_json": pl.String,
              "contexts_json": pl.String}
    atomic.write_parquet(out / TABLE_PARQUET, pl.DataFrame(flat, schema=schema).to_arrow())
    return {TABLE_JSON: out / TABLE_JSON, TABLE_PARQUET: out / TABLE_PARQUET}

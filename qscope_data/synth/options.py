"""The synthesis stage's options: what `qscope synth` and the pipeline's `synth:` section both parse into.

The only place these knobs have defaults; `SynthInputs` holds what one run reads and its verifying encoder (the
`qscope synth` flags take their defaults from the two). A light module: the CLI imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.dataclasses import dataclass

from qscope_data.synth.fluency import FluencyOptions
from qscope_data.synth.nearcopy import NearCopyOptions
from qscope_data.synth.requests import BENIGN_CATEGORIES, VARIANTS, Variant


class SynthOptions(BaseModel):
    """How targeted synthesis generates and verifies samples (independent of which files it reads or writes)."""

    model_config = ConfigDict(extra="forbid")

    generator: str = Field("lm", description="lm (the verifying model, few-shot) | lm:<model> | hf:<model> | "
                                             "openai:<url>?model=… | templates (tests only)")
    per_feature: int = Field(4, ge=1)
    candidates: int = Field(1, ge=1, description="prompts written per slot and attempt; the one whose prompt fires "
                                                 "the target feature most is answered and verified")
    threshold: float = Field(0.0, ge=0.0, description="kept only if the target feature's activation exceeds this")
    keywords: int = Field(4, ge=0, description="words each gap feature fires on in its own examples, named to the "
                                               "generator (synth.keywords; 0: none)")
    max_attempts: int = Field(3, ge=1)
    languages: list[str] = Field(default_factory=lambda: ["en"])
    verify: Literal["prompt", "conversation"] = "prompt"
    max_features: int | None = Field(None, ge=1, description="only the first N gaps (they come biggest-first)")
    variants: list[Variant] = Field(default_factory=lambda: list(VARIANTS))
    near_copy: NearCopyOptions = Field(default_factory=NearCopyOptions)
    fluency: FluencyOptions = Field(default_factory=FluencyOptions)
    baseline_random: int | Literal["match"] | None = Field(
        None, description="also write N untargeted samples (the random baseline); match: as many as the targeted run "
                          "wrote prompt candidates (the same generation budget)")
    seed: int = 0

    @field_validator("languages")
    @classmethod
    def _languages(cls, value: list[str]) -> list[str]:
        value = list(dict.fromkeys(v.strip() for v in value if v.strip()))
        if not value:
            raise ValueError("at least one language")
        return value

    @field_validator("baseline_random")
    @classmethod
    def _baseline(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 1:
            raise ValueError("the random baseline needs N ≥ 1 samples (or match)")
        return value

    @field_validator("variants")
    @classmethod
    def _variants(cls, value: list[Variant]) -> list[Variant]:
        if not value:
            raise ValueError("at least one variant")
        return list(dict.fromkeys(value))


@dataclass(frozen=True, config=ConfigDict(extra="forbid", arbitrary_types_allowed=True))
class SynthInputs:
    """What one synthesis run reads and which verifying encoder it uses: the gap report (and its inventory), the
    model and SAE that verify (and, for a local generator, write), the random baseline's pool, and this run's own
    settings that the pipeline's `synth:` section does not carry (so that section and its cache key stay as they
    are). Defaults declared here are the `qscope synth` flags' defaults (cli/params.option reads them)."""

    gaps: Path
    model: str
    sae: str
    layer: int | None = Field(None, description="SAE layer (default: the gap report's)")
    features: list[int] | None = Field(None, description="only these gap features")
    inventory: Path | None = Field(None, description="inventory YAML of the gap report (else rebuilt from gaps.json)")
    benign_categories: list[str] = Field(default_factory=lambda: list(BENIGN_CATEGORIES))
    near_duplicate_threshold: float = Field(0.8, gt=0.0, le=1.0)
    baseline_pool: list[str] | None = Field(None, description="harmful reference texts for the baseline's shots "
                                                               "(default: every gap's examples)")
    baseline_pool_field: str = Field("category", description="the pool's category field (benign categories dropped)")
    baseline_shots: int = Field(4, ge=1)
    max_tokens: int | None = Field(None, ge=1, description="verification truncation (default: the target store's)")
    revision: str | None = Field(None, description="model revision (default: the one the target store recorded)")
    batch_size: int = Field(16, ge=1)
    device: str = "cpu"
    dtype: str | None = Field(None, description="model dtype (default: the target store's encode setting)")
    sae_k: int | None = None
    overwrite: bool = False
    # Already built (notebooks, tests): used instead of loading `model` / `sae` / the `generator` spec. A generator
    # is any object with `name`, `generate(requests, on_done)` and `describe()` (synth.generators.Generator).
    loaded_model: Any = Field(None, repr=False)
    loaded_sae: Any = Field(None, repr=False)
    built_generator: Any = Field(None, repr=False)

"""The synthesis stage's options: what `qscope synth` and the pipeline's `synth:` section both parse into.

The only place these knobs have defaults; `SynthConfig` (synthesize.py) adds the run's paths and encode identity.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qscope_data.synth.nearcopy import NearCopyOptions
from qscope_data.synth.requests import VARIANTS, Variant


class SynthOptions(BaseModel):
    """How targeted synthesis generates and verifies samples (independent of which files it reads or writes)."""

    model_config = ConfigDict(extra="forbid")

    generator: str = Field("lm", description="lm (the verifying model, few-shot) | lm:<model> | hf:<model> | "
                                             "openai:<url>?model=… | templates (tests only)")
    per_feature: int = Field(4, ge=1)
    candidates: int = Field(1, ge=1, description="prompts written per slot and attempt; the one whose prompt fires "
                                                 "the target feature most is answered and verified")
    threshold: float = Field(0.0, ge=0.0, description="kept only if the target feature's activation exceeds this")
    max_attempts: int = Field(3, ge=1)
    languages: list[str] = Field(default_factory=lambda: ["en"])
    verify: Literal["prompt", "conversation"] = "prompt"
    max_features: int | None = Field(None, ge=1, description="only the first N gaps (they come biggest-first)")
    variants: list[Variant] = Field(default_factory=lambda: list(VARIANTS))
    near_copy: NearCopyOptions = Field(default_factory=NearCopyOptions)
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

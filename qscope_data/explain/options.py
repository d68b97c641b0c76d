"""The options of the explain stage: one model holding every default; the CLI and the Python API share it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class ExplainOptions(BaseModel):
    """Everything an explain run depends on (what `qscope features explain` parses into)."""

    model_config = ConfigDict(extra="forbid")

    features: Path = Field(description="token-level feature store")
    out: Path
    ids: list[int] | None = Field(None, description="features to explain")
    inventory: Path | None = Field(None, description="explain the features of this inventory YAML")
    layer: int | None = None
    model: str | None = Field(None, description="model (tokenizer, unembedding); default: the one that encoded the store")
    sae: str | None = Field(None, description="SAE (decoder directions); default: the one that encoded the store")
    logit_lens: bool = True
    lens_tokens: int = Field(10, ge=1, description="promoted / suppressed tokens shown")
    by: list[str] | None = Field(None, description="fields for firing rates (default: lang + small string columns)")
    window: int = Field(32, ge=2, description="positions per context")
    n_top: int = Field(10, ge=1)
    n_quantiles: int = Field(5, ge=1)
    per_quantile: int = Field(2, ge=0, description="quantile contexts per bin shown to the explainer")
    heldout_per_quantile: int = Field(2, ge=0, description="held-out activating contexts per bin for detection")
    random_negatives: int = Field(5, ge=0)
    hard_negatives: int = Field(5, ge=0)
    neighbours: int = Field(5, ge=0, description="similar decoder directions whose contexts are hard negatives")
    bins: int = Field(24, ge=1, description="histogram bins")
    seed: int = 0
    explainer: str | None = Field(None, description="generator spec: hf:<model> or openai:<base_url>?model=<name>")
    scorer: str | None = Field(None, description="generator spec of the detection scorer (default: the explainer)")
    detection_batch: int = Field(10, ge=1, description="excerpts per scorer request")
    price_in: float = Field(0.0, ge=0, description="USD per 1M prompt tokens, for the cost estimate")
    price_out: float = Field(0.0, ge=0, description="USD per 1M completion tokens")
    device: str = "cpu"
    dtype: str = "auto"

    def sampling(self):
        """The contexts' sampling options (`contexts.SamplingOptions`)."""
        from qscope_data.explain.contexts import SamplingOptions

        return SamplingOptions(window=self.window, n_top=self.n_top, n_quantiles=self.n_quantiles,
                               per_quantile=self.per_quantile, heldout_per_quantile=self.heldout_per_quantile,
                               n_random_negatives=self.random_negatives, n_hard_negatives=self.hard_negatives,
                               bins=self.bins, seed=self.seed)

"""The SASFT auxiliary loss: keep each language's features quiet on text of other languages.

L_reduce = Σ_{s ∈ P_j} ReLU(pre_s(x) − α_{s,j}), for every counted token x of an example in language j, where
pre_s(x) = x · W_enc[s] + b_enc[s] is feature s's SAE pre-activation at the output of block n and α_{s,j} is its
baseline on language-j text (from `sasft prepare`). P_j, the features penalised on language j, is the union of the
other target languages' sets minus j's own set (a feature shared by zh and ja is never penalised on ja text), each
feature once.

Reduction: summed over features, averaged over the counted tokens — the masked tokens (assistant response by default)
of examples that have at least one penalised feature. Examples whose language has no α column (not in the prepare
input) or no language at all count for nothing, so the loss's scale does not depend on how many of them a batch has.
The module holds only the selected encoder rows, as buffers (moved with `.to(device)`, never trained).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from qscope_data.errors import UsageError


class SASFTLossOutput(NamedTuple):
    loss: torch.Tensor  # scalar, differentiable w.r.t. the hidden states
    tokens: torch.Tensor  # number of counted tokens (the denominator)
    active: torch.Tensor  # number of (token, feature) pairs above their baseline


class SASFTLoss(nn.Module):
    """Penalise selected SAE features' pre-activations above their per-language baseline.

    Args:
        W_enc: [F, d_model] encoder rows of the selected features.
        b_enc: [F] their encoder biases.
        membership: [F, L] bool — feature f belongs to target language L's set.
        alpha: [F, J] baseline α of feature f on baseline language j.
        languages: the L target languages (columns of `membership`).
        baseline_languages: the J languages with an α column; examples are labelled by index into this list.
        b_dec: subtracted from x before encoding, for SAE suites that do so (not Qwen-Scope).
        feature_ids: the SAE feature ids of the rows (for reports).
    """

    def __init__(self, W_enc: torch.Tensor, b_enc: torch.Tensor, membership: torch.Tensor, alpha: torch.Tensor,
                 languages: list[str], baseline_languages: list[str], *, b_dec: torch.Tensor | None = None,
                 feature_ids: list[int] | None = None, layer: int | None = None) -> None:
        super().__init__()
        n_feat = W_enc.shape[0]
        if b_enc.shape != (n_feat,) or membership.shape != (n_feat, len(languages)) or alpha.shape != (n_feat, len(baseline_languages)):
            raise ValueError(f"SASFTLoss shapes disagree: W_enc {tuple(W_enc.shape)}, b_enc {tuple(b_enc.shape)}, "
                             f"membership {tuple(membership.shape)}, alpha {tuple(alpha.shape)}")
        self.languages = list(languages)
        self.baseline_languages = list(baseline_languages)
        self.feature_ids = list(feature_ids) if feature_ids is not None else list(range(n_feat))
        self.layer = layer
        self.register_buffer("W_enc", W_enc.detach().float().clone())
        self.register_buffer("b_enc", b_enc.detach().float().clone())
        self.register_buffer("b_dec", None if b_dec is None else b_dec.detach().float().clone())
        self.register_buffer("alpha_by_lang", alpha.detach().float().T.contiguous().clone())  # [J, F]
        self.register_buffer("penalised", self._penalised(membership.bool()))  # [J, F]

    def _penalised(self, membership: torch.Tensor) -> torch.Tensor:
        """P[j, f]: f is in some other target language's set and not in j's own."""
        pen = torch.zeros(len(self.baseline_languages), membership.shape[0], dtype=torch.bool)
        for j, lang_j in enumerate(self.baseline_languages):
            others = [i for i, lang in enumerate(self.languages) if lang != lang_j]
            own = self.languages.index(lang_j) if lang_j in self.languages else None
            if others:
                pen[j] = membership[:, others].any(dim=1)
            if own is not None:
                pen[j] &= ~membership[:, own]
        return pen

    @property
    def n_features(self) -> int:
        return int(self.W_enc.shape[0])

    def lang_index(self, lang: str | None) -> int:
        """Index of `lang` among the baseline languages, -1 when it has no α (not penalised)."""
        if lang is None:
            return -1
        lang = str(lang).strip().lower()
        return self.baseline_languages.index(lang) if lang in self.baseline_languages else -1

    def pre_activations(self, hidden: torch.Tensor) -> torch.Tensor:
        """pre_s(x) for the selected rows, float32: [..., d_model] → [..., F]."""
        x = hidden.float()
        if self.b_dec is not None:
            x = x - self.b_dec
        return x @ self.W_enc.T + self.b_enc

    def forward(self, hidden: torch.Tensor, example_lang: torch.Tensor, token_mask: torch.Tensor) -> SASFTLossOutput:
        """hidden [B, T, d_model] at block n's output; example_lang [B] (index into baseline languages, -1 = none);
        token_mask [B, T] (1 = counted position)."""
        lang = example_lang.to(hidden.device).long()
        known = lang >= 0
        safe = lang.clamp_min(0)
        pen = self.penalised[safe] & known[:, None]  # [B, F]
        alpha = self.alpha_by_lang[safe]  # [B, F]
        pre = self.pre_activations(hidden)  # [B, T, F]
        excess = torch.relu(pre - alpha[:, None, :]) * pen[:, None, :]
        mask = token_mask.to(hidden.device).bool() & pen.any(dim=1)[:, None]  # [B, T]
        per_token = excess.sum(dim=-1) * mask
        tokens = mask.sum()
        loss = per_token.sum() / tokens.clamp_min(1)
        active = ((excess > 0) & mask[..., None]).sum()
        return SASFTLossOutput(loss, tokens, active)

    @classmethod
    def from_plan(cls, plan_dir: str | Path, languages: list[str] | None = None) -> "SASFTLoss":
        """Build the loss from a `sasft prepare` folder, optionally for a subset of its target languages."""
        from qscope_data.sasft.artifact import load_plan

        plan, rows = load_plan(plan_dir)
        targets = plan.languages if not languages else [lang.strip().lower() for lang in languages]
        unknown = [lang for lang in targets if lang not in plan.features]
        if unknown:
            raise UsageError(f"languages {', '.join(unknown)} are not in the plan {plan_dir} "
                             f"(it has {', '.join(plan.languages)})")
        all_ids = rows["feature_ids"].tolist()
        chosen = sorted({f.id for lang in targets for f in plan.features[lang]})
        if not chosen:
            raise UsageError(f"plan {plan_dir}: no features selected for {', '.join(targets)}")
        pos = torch.tensor([all_ids.index(i) for i in chosen])
        membership = torch.tensor([[any(f.id == i for f in plan.features[lang]) for lang in targets] for i in chosen])
        alpha = torch.tensor([[plan.alpha[str(i)][lang] for lang in plan.baseline_languages] for i in chosen])
        return cls(rows["W_enc"][pos], rows["b_enc"][pos], membership, alpha, targets, plan.baseline_languages,
                   b_dec=rows.get("b_dec"), feature_ids=chosen, layer=plan.layer)

"""How good an SAE is, measured on text it was not trained on: reconstruction, sparsity, and what the LM makes of it.

Why the spliced loss: explained variance can look fine while the reconstruction breaks the model (Gemma's residual
stream carries a few massive dimensions the downstream norms are very sensitive to). The standard score (Bricken et
al. 2023, SAELens' `run_evals`) replaces block n's output with the SAE reconstruction and compares next-token
cross-entropy with the clean model and with zero-ablation of that output:

    loss recovered = (L_zero − L_sae) / (L_zero − L_clean)       (1 = as good as the clean model, 0 = as bad as zero)

Position 0 (the attention sink every sequence starts with; no stage encodes it) keeps its clean value in every
variant, as SAELens' `exclude_special_tokens_from_reconstruction` does; `splice_first=True` replaces it too.

Baselines in the same run: zero-ablation, mean-ablation (the training mean), and a random SAE of the same width
and k (unit random directions, W_enc = W_decᵀ, b_dec = the mean) — so "0.9" is read against what chance gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from qscope_data.sae.model import SparseAutoencoder


@dataclass
class Quality:
    name: str
    explained_variance: float
    l0: float
    dead_fraction: float
    loss: float | None = None
    loss_recovered: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def reconstruct(sae: SparseAutoencoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x̂, ids, values): the exact encode every stage uses, then x̂ = W_dec z + b_dec."""
    values, ids = sae.encode(x.float())
    return sae.decode(values, ids), ids, values


@torch.no_grad()
def reconstruction_metrics(sae: SparseAutoencoder, x: torch.Tensor, chunk: int = 4096) -> dict[str, float]:
    """Explained variance, mean L0 and the share of features that never fire on `x` [N, d_model]."""
    err = 0.0
    l0 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    for i in range(0, x.shape[0], chunk):
        xb = x[i:i + chunk].float()
        x_hat, ids, values = reconstruct(sae, xb)
        err += float((x_hat - xb).pow(2).sum())
        active = (values > 0) & (ids >= 0)
        l0 += float(active.sum())
        fired[ids[active]] = True
    xf = x.float()
    total = float((xf - xf.mean(0)).pow(2).sum())
    return {"explained_variance": 1.0 - err / max(total, 1e-12), "l0": l0 / max(x.shape[0], 1),
            "dead_fraction": float((~fired).float().mean())}


def random_sae(like: SparseAutoencoder, mean: torch.Tensor, seed: int = 0) -> SparseAutoencoder:
    """Same width and k, random unit decoder directions, tied encoder, b_dec at the data mean."""
    gen = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(like.d_model, like.d_sae, generator=gen)
    W_dec /= W_dec.norm(dim=0, keepdim=True)
    W_enc = W_dec.T.contiguous()
    return SparseAutoencoder(W_enc=W_enc, b_enc=-(W_enc @ mean.float()), W_dec=W_dec, b_dec=mean.float().clone(),
                             k=like.k, layer=like.layer, source="random-baseline")


Replacement = Callable[[torch.Tensor], torch.Tensor]


def loss_positions(real: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Which positions' next-token predictions count: real tokens followed by a real token, a seeded random
    `fraction` of them.

    Why sample: the loss needs full-vocabulary logits (262,144 for Gemma: 335 MFLOP and 1 MB per position, more than
    the rest of a 270M model's forward), so scoring every position of every variant dominated the run. The sample
    is drawn once per batch and shared by every variant, so their differences are paired, not sampling noise.
    """
    keep = torch.zeros_like(real)
    keep[:, :-1] = real[:, :-1] & real[:, 1:]
    if fraction < 1.0:
        keep &= torch.rand(keep.shape, generator=gen) < fraction
    return keep


@torch.no_grad()
def spliced_losses(lm, layer: int, texts: Sequence[str], replacements: dict[str, Replacement | None], *,
                   max_tokens: int = 128, batch_size: int = 16, splice_first: bool = False,
                   position_fraction: float = 1.0, seed: int = 0) -> dict[str, float]:
    """Mean next-token cross-entropy over `texts` with block `layer`'s output replaced per variant (None = clean).

    One forward per variant and batch; the loss counts the real next-token predictions `loss_positions` keeps
    (padding excluded), and the LM head runs on those positions only (`logits_to_keep` as a mask).
    """
    from qscope_data.capture import edit_block_output

    if not 0.0 < position_fraction <= 1.0:
        raise ValueError(f"position_fraction must be in (0, 1], got {position_fraction}")
    totals = {name: 0.0 for name in replacements}
    count = 0
    tok = lm.tokenizer
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(texts), batch_size):
        enc = tok(list(texts[start:start + batch_size]), padding=True, truncation=True, max_length=max_tokens,
                  return_tensors="pt")
        ids, mask = enc["input_ids"].to(lm.device), enc["attention_mask"].to(lm.device)
        real = mask.bool()
        first = real & (real.cumsum(1) == 1)
        edit_at = real & ~first if not splice_first else real
        keep = loss_positions(real.cpu(), position_fraction, gen).to(lm.device)
        targets = torch.roll(ids, -1, dims=1)[keep]
        if targets.numel() == 0:
            continue
        count += int(targets.numel())

        def forward() -> torch.Tensor:
            return lm.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits

        for name, fn in replacements.items():
            def edit(h: torch.Tensor, _call: int, fn=fn) -> torch.Tensor:
                new = h.clone()
                rows = h[edit_at]
                new[edit_at] = fn(rows.float()).to(h.dtype)
                return new

            if fn is None:
                logits = forward()
            else:
                with edit_block_output(lm, layer, edit):
                    logits = forward()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets,
                                                     reduction="sum")
            totals[name] += float(loss)
    return {name: total / max(count, 1) for name, total in totals.items()}


def evaluate_sae(lm, sae: SparseAutoencoder, layer: int, heldout_x: torch.Tensor, heldout_texts: Sequence[str], *,
                 mean: torch.Tensor | None = None, max_tokens: int = 128, splice_first: bool = False,
                 seed: int = 0, position_fraction: float = 1.0) -> list[Quality]:
    """Our SAE against zero-ablation, mean-ablation and a random SAE, on the same held-out activations and texts."""
    mean = heldout_x.float().mean(0) if mean is None else mean.float()
    rand = random_sae(sae, mean, seed)
    saes = {"sae": sae, "random SAE": rand}
    replacements: dict[str, Replacement | None] = {
        "clean": None,
        "zero-ablation": lambda h: torch.zeros_like(h),
        "mean-ablation": lambda h: mean.to(h.device).expand_as(h),
        **{name: (lambda h, s=s: reconstruct(s, h)[0]) for name, s in saes.items()},
    }
    losses = spliced_losses(lm, layer, heldout_texts, replacements, max_tokens=max_tokens, splice_first=splice_first,
                            position_fraction=position_fraction, seed=seed)
    clean, zero = losses["clean"], losses["zero-ablation"]

    def recovered(loss: float) -> float:
        return (zero - loss) / (zero - clean) if abs(zero - clean) > 1e-9 else math.nan

    xf = heldout_x.float()
    var = float((xf - xf.mean(0)).pow(2).sum())
    rows = [Quality("clean", 1.0, math.nan, math.nan, clean, 1.0)]
    rows.append(Quality("zero-ablation", 1.0 - float(xf.pow(2).sum()) / var, 0.0, 1.0, zero, 0.0))
    rows.append(Quality("mean-ablation", 1.0 - float((xf - mean).pow(2).sum()) / var, 0.0, 1.0,
                        losses["mean-ablation"], recovered(losses["mean-ablation"])))
    for name, s in saes.items():
        m = reconstruction_metrics(s, heldout_x)
        rows.append(Quality(name, m["explained_variance"], m["l0"], m["dead_fraction"], losses[name],
                            recovered(losses[name])))
    return rows

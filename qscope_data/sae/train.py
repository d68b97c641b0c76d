"""Train (or fine-tune) a TopK sparse autoencoder on a model's residual stream at the output of block n.

Why here: no released SAE exists for most checkpoints (fine-tunes, other sizes, the demo's MiniLM), and a released
Qwen-Scope SAE drifts on a fine-tune. The recipe is Gao et al. 2024 ("Scaling and evaluating sparse autoencoders"),
kept compact in the style of EleutherAI's sparsify:

- forward  z = TopK_k(ReLU(W_enc (x − b_dec) + b_enc)),  x̂ = W_dec z + b_dec  (TopK in plain torch with autograd;
  the exact kernels are inference-only); loss = FVU(x̂, x) + 1/32 · AuxK.
- AuxK: the residual e = x − x̂ is reconstructed from the top-`aux_k` pre-activations of *dead* latents (not fired in
  the last `dead_tokens` training tokens); its normalised MSE revives them. Scaled by min(1, n_dead / aux_k).
- decoder columns unit-norm after every step, with the gradient component parallel to them removed first.
- b_dec starts at the geometric median of the first batch; W_enc starts as W_decᵀ, b_enc at 0.
- outliers (Qwen-Scope recipe: attention-sink-like positions): position 0 of every text is skipped, and within each
  forward batch a position whose L2 norm exceeds `outlier_factor` × the median norm of that batch is dropped.
- activations pass through a shuffle buffer; every `eval_every`-th text is held out and never trained on.

The result is saved in the canonical format in Qwen-Scope form (no b_dec subtraction at encode time: it is folded into
b_enc, exactly), so every stage reads it like a released SAE.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qscope_data import atomic
from qscope_data.errors import UsageError, invalid
from qscope_data.inputs import Record, Reject, input_fingerprint, iter_records, resolve_paths
from qscope_data.progress import Bar
from qscope_data.sae.formats import CANONICAL_CONFIG, load_sae, save_canonical
from qscope_data.sae.model import SparseAutoencoder

METRICS_FILE = "metrics.json"
REJECTS_FILE = "rejects.jsonl"


class TrainConfig(BaseModel):
    """Everything that decides the trained weights (its fingerprint keys the demo's cache)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    layer: int = Field(ge=0)
    inputs: list[str]
    width: int | None = Field(None, gt=0, description="d_sae; taken from --init-from when omitted")
    k: int | None = Field(None, gt=0, description="active latents per token; taken from --init-from when omitted")
    init_from: str | None = None
    max_tokens: int = Field(128, gt=1, description="tokens per text (truncation)")
    tokens_budget: int | None = Field(None, gt=0, description="training positions; None = one pass over the inputs")
    batch_size: int = Field(4096, gt=0, description="positions per optimiser step")
    lr: float | None = Field(None, gt=0, description="None = 2e-4 / sqrt(width / 16384) (sparsify's rule)")
    aux_k: int | None = Field(None, gt=0, description="None = d_model // 2 (Gao et al.)")
    aux_coef: float = Field(1 / 32, ge=0)
    dead_tokens: int | None = Field(None, gt=0, description="None = min(10M, budget // 5)")
    outlier_factor: float = Field(10.0, ge=0, description="drop positions with norm > factor × batch median; 0 = off")
    skip_first: bool = True
    shuffle_buffer: int = Field(65536, ge=0, description="positions held for shuffling; 0 = no shuffle")
    text_batch: int = Field(32, gt=0, description="texts per model forward")
    cache_bytes: int = Field(1 << 30, ge=0, description="replay a pass from memory when it fits (small corpora)")
    eval_every: int = Field(20, gt=1, description="every n-th text is held out for evaluation")
    eval_tokens: int = Field(8192, gt=0)
    warmup_steps: int = Field(50, ge=0)
    decay_fraction: float = Field(0.2, ge=0, le=1, description="linear lr decay to 0 over this last share of the budget")
    normalize: Literal["none", "mean-norm", "per-dim"] = Field(
        "mean-norm", description="mean-norm: train on x · √d_model / E‖x‖ (one dataset-wise scale); per-dim: on "
        "(x − μ) / σ per dimension; either is folded back into the weights at save")
    activations: str | None = Field(None, description="activation cache folder: collected once, reused by later runs")
    log_every: int = Field(25, gt=0)
    seed: int = 0
    device: str = "cpu"
    model_dtype: str | None = None
    text_field: str = "text"

    @classmethod
    def parse(cls, **values: object) -> "TrainConfig":
        """Validate, turning the first problem into a one-line UsageError (CLI exit 2)."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise invalid(exc, "sae train") from None

    def fingerprint(self) -> str:
        """Hash of the config and the input files' bytes: equal fingerprints give the same SAE."""
        payload = self.model_dump(exclude={"log_every", "device", "cache_bytes", "activations"})
        payload["inputs_sha"] = input_fingerprint(resolve_paths(self.inputs))
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    sae: SparseAutoencoder
    metrics: dict


# -- activations ------------------------------------------------------------------------------------------------


def outlier_keep_mask(acts: torch.Tensor, factor: float) -> torch.Tensor:
    """Keep-mask over rows of `acts` [N, d]: False where ‖row‖ > factor × median ‖row‖ (the batch's). factor 0: all."""
    if factor <= 0 or acts.shape[0] == 0:
        return torch.ones(acts.shape[0], dtype=torch.bool, device=acts.device)
    norms = acts.float().norm(dim=-1)
    return norms <= factor * norms.median()


def record_text(record: Record, tokenizer: object) -> str:
    """Plain text, or a conversation rendered with the tokenizer's chat template (role-prefixed lines without one)."""
    if record.text is not None:
        return record.text
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(record.messages, tokenize=False)
    return "\n".join(f"{m['role']}: {m['content']}" for m in record.messages)


@dataclass
class StreamStats:
    texts: int = 0
    positions: int = 0  # real token positions seen (after skipping position 0)
    outliers: int = 0


def iter_positions(lm, layer: int, texts: Iterator[str], cfg: TrainConfig, stats: StreamStats) -> Iterator[torch.Tensor]:
    """Float32 [n, d_model] activations per forward batch: padding and position 0 removed, outliers dropped."""
    from qscope_data.capture import capture

    def flush(batch: list[str]) -> torch.Tensor:
        enc = lm.tokenizer(batch, padding=True, truncation=True, max_length=cfg.max_tokens, return_tensors="pt")
        mask = enc["attention_mask"].bool()
        acts = capture(lm, enc["input_ids"], enc["attention_mask"], [layer])[layer]
        keep = mask & (mask.cumsum(1) > 1) if cfg.skip_first else mask  # works for left and right padding
        rows = acts[keep.to(acts.device)].float()
        ok = outlier_keep_mask(rows, cfg.outlier_factor)
        stats.texts += len(batch)
        stats.positions += int(rows.shape[0])
        stats.outliers += int((~ok).sum())
        return rows[ok]

    # Batches of similar length waste less compute on padding: sort a pool of 8 batches by length first.
    pool: list[str] = []
    for text in texts:
        pool.append(text)
        if len(pool) == 8 * cfg.text_batch:
            pool.sort(key=len)
            for i in range(0, len(pool), cfg.text_batch):
                yield flush(pool[i:i + cfg.text_batch])
            pool = []
    pool.sort(key=len)
    for i in range(0, len(pool), cfg.text_batch):
        yield flush(pool[i:i + cfg.text_batch])


def _split_texts(cfg: TrainConfig, tokenizer: object, rejects: list, *, held_out: bool) -> Iterator[str]:
    """Texts of the inputs, in order: the held-out ones (every eval_every-th) or the training ones."""
    index = 0
    for rec in iter_records(cfg.inputs, text_field=cfg.text_field):
        if isinstance(rec, Reject):
            if not held_out:
                rejects.append(rec.to_json())
            continue
        if (index % cfg.eval_every == 0) == held_out:
            yield record_text(rec, tokenizer)
        index += 1


def shuffled_batches(chunks: Iterator[torch.Tensor], batch_size: int, buffer: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Fixed-size batches from a stream of row chunks, shuffled within a buffer of `buffer` rows."""
    pending: list[torch.Tensor] = []
    held = 0
    capacity = max(buffer, batch_size)

    def drain(final: bool) -> Iterator[torch.Tensor]:
        nonlocal pending, held
        rows = torch.cat(pending) if pending else torch.empty(0)
        if buffer > 0:
            rows = rows[torch.randperm(rows.shape[0], generator=gen)]
        n_full = rows.shape[0] // batch_size
        for i in range(n_full):
            yield rows[i * batch_size:(i + 1) * batch_size]
        rest = rows[n_full * batch_size:]
        if final and rest.shape[0] > 0:
            yield rest
            rest = rest[:0]
        pending, held = ([rest] if rest.shape[0] else []), int(rest.shape[0])

    for chunk in chunks:
        if chunk.shape[0] == 0:
            continue
        pending.append(chunk)
        held += int(chunk.shape[0])
        if held >= capacity:
            yield from drain(final=False)
    yield from drain(final=True)


# -- the autoencoder being trained ------------------------------------------------------------------------------


def geometric_median(x: torch.Tensor, iters: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: robust to the large-norm positions a mean would chase."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=-1).clamp_min(eps)
        y_next = (w[:, None] * x).sum(0) / w.sum()
        if (y_next - y).norm() < eps * (1 + y.norm()):
            return y_next
        y = y_next
    return y


class TopKTrainer(torch.nn.Module):
    """Training-time parameters in sparsify orientation: W_dec rows are the (unit-norm) feature directions."""

    def __init__(self, d_model: int, d_sae: int, k: int, gen: torch.Generator):
        super().__init__()
        W_dec = torch.randn(d_sae, d_model, generator=gen)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        self.W_enc = torch.nn.Parameter(W_dec.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.W_dec = torch.nn.Parameter(W_dec)
        self.b_dec = torch.nn.Parameter(torch.zeros(d_model))
        self.k = k

    @classmethod
    def from_sae(cls, sae: SparseAutoencoder, k: int) -> "TopKTrainer":
        """Exactly the released SAE's encode/decode, with b_dec moved into the encoder input (b_enc compensates)."""
        t = cls.__new__(cls)
        super(TopKTrainer, t).__init__()
        W_enc, b_enc, b_dec = sae.W_enc.float(), sae.b_enc.float(), sae.b_dec.float()
        if not sae.input_bias:
            b_enc = b_enc + W_enc @ b_dec
        t.W_enc = torch.nn.Parameter(W_enc.clone())
        t.b_enc = torch.nn.Parameter(b_enc.clone())
        t.W_dec = torch.nn.Parameter(sae.W_dec.float().T.clone())
        t.b_dec = torch.nn.Parameter(b_dec.clone())
        t.k = k
        return t

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.linear(x - self.b_dec, self.W_enc, self.b_enc))

    def decode(self, values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(ids, self.W_dec, per_sample_weights=values, mode="sum")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        pre = self.pre(x)
        values, ids = pre.topk(self.k, dim=-1, sorted=False)
        return self.decode(values, ids) + self.b_dec, values, ids, pre

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        if self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(-1, keepdim=True)
            self.W_dec.grad -= parallel * self.W_dec

    @torch.no_grad()
    def to_sae(self, *, layer: int, source: str, extra: dict, norm: "Normalization | None" = None) -> SparseAutoencoder:
        """Qwen-Scope form on raw activations, with the training normalisation x_n = s ⊙ (x − μ) folded in:

            pre = (W_enc diag(s)) x + (b_enc − W_enc (b_dec + s ⊙ μ)),   x̂ = (diag(1/s) W_dec) z + (b_dec / s + μ)

        so the file keeps the plain formula every stage uses, with identical pre-activations and feature values.
        """
        norm = norm or Normalization.identity(self.W_enc.shape[1])
        W_enc = self.W_enc.detach().float().cpu()
        b_dec = self.b_dec.detach().float().cpu()
        s, mu = norm.scale.float().cpu(), norm.shift.float().cpu()
        b_enc = self.b_enc.detach().float().cpu() - W_enc @ (b_dec + s * mu)
        W_dec = self.W_dec.detach().float().cpu().T / s[:, None]
        return SparseAutoencoder(
            W_enc=(W_enc * s[None, :]).contiguous(), b_enc=b_enc.contiguous(), W_dec=W_dec.contiguous(),
            b_dec=(b_dec / s + mu).contiguous(), k=self.k, layer=layer, hook="resid_post", source=source,
            format="qscope", input_bias=False, extra=extra,
        )


@dataclass
class Normalization:
    """x_n = scale ⊙ (x − shift): what the trainer sees (a scalar scale is a vector of equal entries)."""

    shift: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def identity(cls, d: int) -> "Normalization":
        return cls(torch.zeros(d), torch.ones(d))

    @classmethod
    def fit(cls, kind: str, x: torch.Tensor) -> "Normalization":
        """From a sample of activations. per-dim: Gemma-style residuals put most raw variance in a few massive
        dimensions, so a raw-MSE SAE reconstructs those and leaves the rest — what the next blocks read — poorly."""
        d = x.shape[1]
        if kind == "mean-norm":
            return cls(torch.zeros(d, device=x.device),
                       torch.full((d,), math.sqrt(d) / float(x.norm(dim=-1).mean().clamp_min(1e-12)), device=x.device))
        if kind == "per-dim":
            std = x.std(0)
            return cls(x.mean(0), 1.0 / std.clamp_min(1e-3 * float(std.median().clamp_min(1e-12))))
        return cls(torch.zeros(d, device=x.device), torch.ones(d, device=x.device))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) * self.scale


def fvu(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained (1 − explained variance), over the batch."""
    return (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)


def auxk_loss(sae: TopKTrainer, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor,
              aux_k: int) -> torch.Tensor:
    """Normalised MSE of reconstructing the residual x − x̂ from the top-aux_k dead latents (0 if none is dead)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return x.new_zeros(())
    k_aux = min(aux_k, n_dead)
    values, ids = pre.masked_fill(~dead, -math.inf).topk(k_aux, dim=-1, sorted=False)
    values = values.clamp_min(0)  # a dead latent with no positive pre-activation contributes nothing
    e = (x - x_hat).detach()
    e_hat = sae.decode(values, ids)
    scale = min(1.0, n_dead / aux_k)
    return scale * (e_hat - e).pow(2).mean() / e.pow(2).mean().clamp_min(1e-12)


@torch.no_grad()
def evaluate(sae: TopKTrainer, x: torch.Tensor, chunk: int = 4096) -> dict[str, float]:
    """Explained variance and L0 of the training forward on held-out activations."""
    if x.shape[0] == 0:
        return {"explained_variance": float("nan"), "l0": float("nan")}
    err, l0 = 0.0, 0.0
    for i in range(0, x.shape[0], chunk):
        xb = x[i:i + chunk]
        x_hat, values, _, _ = sae(xb)
        err += float((x_hat - xb).pow(2).sum())
        l0 += float((values > 0).sum())
    total = float((x - x.mean(0)).pow(2).sum())
    return {"explained_variance": 1.0 - err / max(total, 1e-12), "l0": l0 / x.shape[0]}


# -- the loop -------------------------------------------------------------------------------------------------


def _resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return name


def _initial(cfg: TrainConfig, d_model: int, gen: torch.Generator) -> tuple[TopKTrainer, int, int, bool]:
    """(trainer, width, k, from_release) from --init-from or a fresh init."""
    if cfg.init_from:
        init = load_sae(cfg.init_from, cfg.layer, k=cfg.k)
        if init.d_model != d_model:
            raise UsageError(f"--init-from {cfg.init_from}: SAE d_model {init.d_model} != model d_model {d_model}")
        if cfg.width is not None and cfg.width != init.d_sae:
            raise UsageError(f"--width {cfg.width} differs from --init-from's width {init.d_sae}; omit --width")
        k = cfg.k or init.k
        if k > init.d_sae:
            raise UsageError(f"--k {k} exceeds the SAE width {init.d_sae}")
        return TopKTrainer.from_sae(init, k), init.d_sae, k, True
    if cfg.width is None or cfg.k is None:
        raise UsageError("--width and --k are required unless --init-from gives them")
    if cfg.k > cfg.width:
        raise UsageError(f"--k {cfg.k} exceeds --width {cfg.width}")
    return TopKTrainer(d_model, cfg.width, cfg.k, gen), cfg.width, cfg.k, False


class ActivationSource:
    """Held-out and training activations of the inputs, with a replay cache for corpora that fit in memory."""

    def __init__(self, lm, cfg: TrainConfig, on_read: Callable[[str], None]):
        self.lm, self.cfg, self.on_read = lm, cfg, on_read
        self.stats, self.eval_stats = StreamStats(), StreamStats()
        self.rejects: list[dict] = []
        self.pass_positions = 0  # positions in one training pass (after filtering)

    def held_out(self) -> torch.Tensor:
        """Up to `eval_tokens` positions from every `eval_every`-th text (never trained on)."""
        rows, held = [], 0
        texts = _split_texts(self.cfg, self.lm.tokenizer, [], held_out=True)
        for chunk in iter_positions(self.lm, self.cfg.layer, texts, self.cfg, self.eval_stats):
            rows.append(chunk)
            held += chunk.shape[0]
            self.on_read(f"held-out activations: {held:,} positions")
            if held >= self.cfg.eval_tokens:
                break
        return torch.cat(rows)[: self.cfg.eval_tokens] if rows else torch.empty(0, self.lm.d_model)

    def passes(self, repeat: bool) -> Iterator[torch.Tensor]:
        """Pass after pass over the training texts (one if not `repeat`); a pass that fit in the cache is replayed."""
        cache: list[torch.Tensor] | None = []
        limit, kept = self.cfg.cache_bytes // (4 * self.lm.d_model), 0
        texts = _split_texts(self.cfg, self.lm.tokenizer, self.rejects, held_out=False)
        for chunk in iter_positions(self.lm, self.cfg.layer, texts, self.cfg, self.stats):
            kept += chunk.shape[0]
            if cache is not None and kept <= limit:
                cache.append(chunk)
            else:
                cache = None
            self.on_read(f"reading pass 1: {self.stats.texts:,} texts, {self.stats.positions:,} positions")
            yield chunk
        self.pass_positions = kept
        if kept == 0:
            raise UsageError(f"input {', '.join(self.cfg.inputs)}: no usable training text "
                             "(every record rejected, empty or held out)")
        while repeat:
            if cache is not None:
                yield from cache
            else:
                texts = _split_texts(self.cfg, self.lm.tokenizer, [], held_out=False)
                yield from iter_positions(self.lm, self.cfg.layer, texts, self.cfg, self.stats)


class TensorActivationSource:
    """Training and held-out activations already in memory (or memory-mapped): [N, d_model] tensors."""

    CHUNK = 65536

    def __init__(self, train_x: torch.Tensor, eval_x: torch.Tensor, *, texts: int = 0):
        self.train_x, self.eval_x = train_x, eval_x
        self.stats, self.eval_stats, self.rejects = StreamStats(texts, int(train_x.shape[0])), StreamStats(), []
        self.pass_positions = 0

    def held_out(self) -> torch.Tensor:
        return self.eval_x.clone()

    def passes(self, repeat: bool) -> Iterator[torch.Tensor]:
        n = self.train_x.shape[0]
        if n == 0:
            raise UsageError("the activation source holds no training positions")
        self.pass_positions = n
        while True:
            for i in range(0, n, self.CHUNK):
                yield self.train_x[i:i + self.CHUNK].clone()
            if not repeat:
                return


def cached_source(lm, cfg: TrainConfig, on_read: Callable[[str], None]) -> TensorActivationSource:
    """Activations from the cache in `cfg.activations`, collected first (one forward over the inputs) when absent.

    Reused while its fingerprint — model, block, inputs' bytes, truncation, held-out split — matches.
    """
    from qscope_data.sae import activations

    folder = Path(cfg.activations)
    key = {"model": lm.describe(), "layer": cfg.layer, "inputs": input_fingerprint(resolve_paths(cfg.inputs)),
           "max_tokens": cfg.max_tokens, "eval_every": cfg.eval_every, "text_field": cfg.text_field}
    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    rejects: list[dict] = []
    texts = _split_texts(cfg.model_copy(update={"eval_every": 10**12}), lm.tokenizer, rejects, held_out=False)
    meta = activations.collect(
        lm, [cfg.layer], texts, folder, fingerprint=fingerprint, max_tokens=cfg.max_tokens,
        text_batch=cfg.text_batch, eval_every=cfg.eval_every,
        on_progress=lambda m: on_read(f"caching activations: {m.texts:,} texts, {m.train_positions:,} positions"),
    )
    source = TensorActivationSource(activations.load(folder, cfg.layer, "train"),
                                    activations.load(folder, cfg.layer, "heldout", limit=cfg.eval_tokens),
                                    texts=meta.texts)
    source.rejects = rejects
    return source


def train_sae(
    cfg: TrainConfig,
    out: str | Path | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    lm=None,
    source: TensorActivationSource | None = None,
) -> TrainResult:
    """Train per `cfg`; with `out`, write sae.json + sae.safetensors (canonical), metrics.json and rejects.jsonl.

    `lm` reuses an already loaded model (a `qscope_data.capture.LoadedModel`), e.g. when a flow trains several layers;
    `source` gives the activations directly (e.g. one cache read for several recipes).
    """
    from qscope_data.capture import check_layers, load_model
    from qscope_data.torch_dtypes import parse_dtype

    device = _resolve_device(cfg.device)
    resolve_paths(cfg.inputs)  # fail fast on a wrong path
    if lm is None:
        lm = load_model(cfg.model, device=device, dtype=parse_dtype(cfg.model_dtype))
    check_layers(lm, [cfg.layer])
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    sae, width, k, from_release = _initial(cfg, lm.d_model, gen)
    sae = sae.to(device)
    aux_k = min(cfg.aux_k or max(lm.d_model // 2, 1), width)
    lr = cfg.lr or 2e-4 / math.sqrt(width / 2**14)
    budget = cfg.tokens_budget
    dead_tokens = cfg.dead_tokens or (min(10_000_000, max(budget // 5, cfg.batch_size)) if budget else 10_000_000)
    say = log or (lambda _msg: None)

    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), eps=6.25e-10)
    since_fired = torch.zeros(width, dtype=torch.long, device=device)
    history: list[dict] = []
    seen = step = 0
    bar = Bar("sae train", budget, enabled=progress, unit="tok", rate_unit="tok")
    t0 = time.perf_counter()
    with bar:
        if source is None:
            source = (cached_source if cfg.activations else ActivationSource)(lm, cfg, bar.note)
        eval_x = source.held_out().to(device)
        raw_eval_x = eval_x
        norm = Normalization.identity(lm.d_model)
        buffer = min(cfg.shuffle_buffer, budget) if budget else cfg.shuffle_buffer  # don't read far past the budget
        for x in shuffled_batches(source.passes(repeat=budget is not None), cfg.batch_size, buffer, gen):
            x = x[: budget - seen].to(device) if budget is not None else x.to(device)
            if step == 0 and not from_release:
                norm = Normalization.fit(cfg.normalize, x)
                eval_x = norm(eval_x)
            x = norm(x)
            if step == 0:
                if not from_release:
                    with torch.no_grad():
                        sae.b_dec.copy_(geometric_median(x))
                init_eval = evaluate(sae, eval_x if eval_x.shape[0] else x)
                say(f"init: explained variance {init_eval['explained_variance']:.3f} on {eval_x.shape[0]:,} "
                    "held-out positions")
            for group in opt.param_groups:
                group["lr"] = lr * _lr_factor(step, seen, budget, cfg)
            x_hat, values, ids, pre = sae(x)
            dead = since_fired > dead_tokens
            main = fvu(x_hat, x)
            aux = auxk_loss(sae, x, x_hat, pre, dead, aux_k) if cfg.aux_coef > 0 else x.new_zeros(())
            opt.zero_grad(set_to_none=True)
            (main + cfg.aux_coef * aux).backward()
            sae.remove_parallel_grad()
            opt.step()
            sae.normalise_decoder()
            with torch.no_grad():
                since_fired += x.shape[0]
                since_fired[ids[values > 0]] = 0
            seen += x.shape[0]
            step += 1
            row = {"step": step, "tokens": seen, "explained_variance": 1.0 - main.item(), "auxk": aux.item(),
                   "l0": float((values > 0).sum(-1).float().mean()), "dead_fraction": float(dead.float().mean())}
            bar.advance(x.shape[0], work=x.shape[0])
            bar.note(f"EV {row['explained_variance']:.3f} L0 {row['l0']:.1f} dead {row['dead_fraction']:.1%}")
            if step % cfg.log_every == 0:
                history.append(row)
                say(f"step {step} · {seen:,} tok · EV {row['explained_variance']:.3f} · L0 {row['l0']:.1f} · "
                    f"dead {row['dead_fraction']:.1%} · auxk {row['auxk']:.3f}")
            if budget is not None and seen >= budget:
                break
    if step == 0:
        raise UsageError(f"input {', '.join(cfg.inputs)}: produced no training activations")
    if history[-1:] != [row]:
        history.append(row)
    elapsed = time.perf_counter() - t0

    final_eval = evaluate(sae, eval_x) if eval_x.shape[0] else row
    metrics = {
        "explained_variance": final_eval["explained_variance"],
        "l0": final_eval["l0"],
        "dead_fraction": float((since_fired > dead_tokens).float().mean()),
        "init_explained_variance": init_eval["explained_variance"],
        "train_explained_variance": row["explained_variance"],
        "eval_positions": int(eval_x.shape[0]),
        "train_tokens": seen,
        "steps": step,
        "passes": round(seen / source.pass_positions, 2) if source.pass_positions else None,  # None: < 1 pass
        "seconds": round(elapsed, 2),
        "tokens_per_second": round(seen / max(elapsed, 1e-9), 1),
        "texts_read": source.stats.texts,
        "positions_read": source.stats.positions,
        "outliers_dropped": source.stats.outliers + source.eval_stats.outliers,
        "rejects": len(source.rejects),
        "normalization": cfg.normalize if not from_release else "none",
        "width": width, "k": k, "aux_k": aux_k, "lr": lr, "dead_tokens": dead_tokens, "d_model": lm.d_model,
        "model": lm.describe(),
        "init_from": cfg.init_from,
        "fingerprint": cfg.fingerprint(),
    }
    result = sae.to_sae(
        layer=cfg.layer, source=f"qscope-train:{cfg.model}@layer{cfg.layer}",
        extra={"training": {"config": cfg.model_dump(), "metrics": metrics}}, norm=norm,
    )
    if raw_eval_x.shape[0]:  # the saved SAE on raw activations (equal to the above unless normalised per dim)
        metrics["explained_variance_raw"] = result.reconstruction_metrics(raw_eval_x.cpu())["explained_variance"]
    if out is not None:
        out = Path(out)
        save_canonical(result, out)
        atomic.write_json(out / METRICS_FILE, {**metrics, "config": cfg.model_dump(), "history": history})
        if source.rejects:
            atomic.write_text(out / REJECTS_FILE,
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in source.rejects))
    return TrainResult(result, {**metrics, "history": history})


def _lr_factor(step: int, seen: int, budget: int | None, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup_steps`, then constant, then (with a budget) linear decay over its last share."""
    factor = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    if budget and cfg.decay_fraction > 0:
        left = (budget - seen) / (cfg.decay_fraction * budget)
        factor *= min(1.0, max(left, 0.02))
    return factor


def load_trained(out: str | Path, cfg: TrainConfig) -> SparseAutoencoder | None:
    """The SAE in `out` if it was trained from exactly `cfg` and these input bytes (the demo's cache), else None."""
    out = Path(out)
    try:
        meta = json.loads((out / CANONICAL_CONFIG).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("extra", {}).get("training", {}).get("metrics", {}).get("fingerprint") != cfg.fingerprint():
        return None
    return load_sae(out)



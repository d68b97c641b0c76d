"""`sasft prepare`: choose each language's features and estimate their per-language baselines, from the model.

Why from the model: the feature store keeps only post-TopK activations, but the SASFT loss penalises
*pre*-activations above a baseline α, so the baselines need x at block n. One pass over the input gives, per
language, (a) the mean post-TopK activation μ_L of every feature (0 when inactive), (b) the mean residual vector
x̄_L, and (c) each document's strongest activation per feature (for the report's top examples).

Selection: for target language L, ν(f) = μ_L(f) − γ(f) with γ(f) the mean of μ_j(f) over the *other* input
languages j; the `top` features with the largest positive ν are L's set.

Baselines: α_{f,j} with the default statistic "mean" is the mean pre-activation of f over language-j tokens. The
pre-activation is linear in x, so it equals W_enc[f] · x̄_j + b_enc[f] exactly — no second pass. A quantile statistic
("q50", "q90"…) needs the token-level values: a second pass computes the pre-activations of the selected rows only.
Position 0 of every text (the attention sink; [CLS] for BERT) is skipped by default, as in the SAE's training.
Works on encoder-only models too (BERT family): prepare only reads block n's output.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pydantic import BaseModel, Field, field_validator

from qscope_data.atomic import write_json, write_text
from qscope_data.capture import LoadedModel, capture, check_layers
from qscope_data.errors import UsageError
from qscope_data.inputs import Record, Reject, input_fingerprint, iter_records, resolve_paths
from qscope_data.sae import SparseAutoencoder
from qscope_data.sasft.artifact import FeatureScore, SASFTPlan, save_plan

_QUANTILE = re.compile(r"^q(\d{1,2}(?:\.\d+)?)$")


class PrepareConfig(BaseModel):
    layer: int
    lang_field: str = "lang"
    text_field: str = "text"
    id_field: str = "id"
    languages: list[str] | None = Field(None, description="target languages (default: every language of the input)")
    top: int = Field(16, ge=1)
    max_tokens: int = Field(256, ge=2)
    max_docs_per_language: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)
    alpha_stat: str = "mean"
    skip_first: bool = True
    examples_per_feature: int = Field(3, ge=0)

    @field_validator("alpha_stat")
    @classmethod
    def _stat(cls, v: str) -> str:
        if v != "mean" and not _QUANTILE.match(v):
            raise ValueError("alpha_stat must be 'mean' or 'qNN' (e.g. q50, q90)")
        return v

    @field_validator("languages")
    @classmethod
    def _langs(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [norm_lang(x) for x in v if x.strip()]


def norm_lang(lang: object) -> str:
    return str(lang).strip().lower()


@dataclass
class Doc:
    doc_id: str
    lang: str
    text: str


@dataclass
class DocTop:
    """One document's strongest activation per feature: ids ascending, their max values and token positions."""

    ids: np.ndarray
    values: np.ndarray
    token_ids: np.ndarray  # the input token at each id's max position (decoded only for the report's features)


@dataclass
class PrepareResult:
    plan: SASFTPlan
    examples: dict[int, list[dict]]  # feature id → top examples
    rows: dict[str, torch.Tensor]  # the selected encoder rows (what training loads)
    rejects: list[Reject] = field(default_factory=list)


def render_text(record: Record, tokenizer: object) -> str:
    """A record's text: plain text as is; a conversation through the chat template (joined contents without one)."""
    if record.text is not None:
        return record.text
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(record.messages, tokenize=False)
    return "\n".join(m["content"] for m in record.messages)


def read_docs(input_spec: str | Path | list, tokenizer: object, config: PrepareConfig) -> tuple[list[Doc], list[Reject], list[str]]:
    """Records with a language; records without one are rejects (the run goes on)."""
    paths = resolve_paths(input_spec)
    docs: list[Doc] = []
    rejects: list[Reject] = []
    per_lang: dict[str, int] = {}
    for rec in iter_records(paths, text_field=config.text_field, id_field=config.id_field):
        if isinstance(rec, Reject):
            rejects.append(rec)
            continue
        lang = rec.fields.get(config.lang_field)
        if lang is None or not str(lang).strip():
            rejects.append(Reject(rec.file, rec.line, f"missing language field '{config.lang_field}'", rec.doc_id))
            continue
        lang = norm_lang(lang)
        if config.max_docs_per_language is not None and per_lang.get(lang, 0) >= config.max_docs_per_language:
            continue
        per_lang[lang] = per_lang.get(lang, 0) + 1
        docs.append(Doc(rec.doc_id, lang, render_text(rec, tokenizer)))
    return docs, rejects, paths


def _counted_positions(attention_mask: torch.Tensor, skip_first: bool) -> torch.Tensor:
    """Real (non-pad) positions, minus each text's first real token when `skip_first` (either padding side)."""
    mask = attention_mask.bool()
    if skip_first:
        mask = mask & (attention_mask.long().cumsum(dim=1) > 1)
    return mask


def _batches(docs: list[Doc], size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, len(docs)))) for i in range(0, len(docs), size)]


def _forward(lm: LoadedModel, texts: list[str], config: PrepareConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden [B, T, d] at block n, counted-position mask [B, T], input_ids [B, T])."""
    enc = lm.tokenizer(texts, padding=True, truncation=True, max_length=config.max_tokens, return_tensors="pt")
    hidden = capture(lm, enc["input_ids"], enc["attention_mask"], [config.layer])[config.layer]
    mask = _counted_positions(enc["attention_mask"], config.skip_first).to(hidden.device)
    return hidden, mask, enc["input_ids"]


def prepare(lm: LoadedModel, sae: SparseAutoencoder, input_spec: str | Path | list, config: PrepareConfig,
            *, progress: Callable[[str, int], Callable[[int], None]] | None = None) -> PrepareResult:
    """Select per-language features and their α baselines (see the module docstring). Raises UsageError on bad input."""
    check_layers(lm, [config.layer])
    if sae.d_model != lm.d_model:
        raise UsageError(f"SAE {sae.source or '?'} has d_model {sae.d_model} but {lm.model_id} has {lm.d_model}")
    if sae.layer is not None and sae.layer != config.layer:
        raise UsageError(f"SAE {sae.source or '?'} was trained on layer {sae.layer}, not --layer {config.layer}")
    docs, rejects, paths = read_docs(input_spec, lm.tokenizer, config)
    langs = sorted({d.lang for d in docs})
    if len(langs) < 2:
        raise UsageError(f"input {input_spec}: needs text in at least two languages (field '{config.lang_field}'), "
                         f"found {langs or 'none'}")
    targets = config.languages or langs
    missing = [t for t in targets if t not in langs]
    if missing:
        raise UsageError(f"--languages {', '.join(missing)}: no text in that language in {input_spec} (it has {', '.join(langs)})")
    li = {lang: i for i, lang in enumerate(langs)}
    device = lm.device
    sae = sae.to(device=device)

    act_sum = torch.zeros(len(langs), sae.d_sae, dtype=torch.float64, device=device)
    x_sum = torch.zeros(len(langs), sae.d_model, dtype=torch.float64, device=device)
    n_tok = torch.zeros(len(langs), dtype=torch.long)
    n_doc = {lang: 0 for lang in langs}
    tops: list[DocTop | None] = [None] * len(docs)
    tick = progress("sasft prepare: texts", len(docs)) if progress else None
    for batch in _batches(docs, config.batch_size):
        hidden, mask, input_ids = _forward(lm, [docs[i].text for i in batch], config)
        x = hidden[mask].float()  # [N, d]: every counted token of the batch, row-major
        values, ids = sae.encode(x)
        tok_lang = torch.tensor([li[docs[di].lang] for di in batch], device=device).repeat_interleave(mask.sum(1))
        valid = ids >= 0
        flat = (tok_lang[:, None] * sae.d_sae + ids.clamp_min(0))[valid]
        act_sum.view(-1).index_add_(0, flat, values[valid].double())
        x_sum.index_add_(0, tok_lang, x.double())
        n_tok += torch.bincount(tok_lang.cpu(), minlength=len(langs))
        offsets = [0, *mask.sum(1).cumsum(0).tolist()]
        for row, di in enumerate(batch):
            n_doc[docs[di].lang] += 1
            lo, hi = offsets[row], offsets[row + 1]
            if hi > lo:
                pos = mask[row].nonzero().squeeze(1)
                tops[di] = _doc_top(values[lo:hi], ids[lo:hi], pos, input_ids[row])
        if tick:
            tick(len(batch))
    empty = [lang for lang in langs if n_tok[li[lang]] == 0]
    if empty:
        raise UsageError(f"input {input_spec}: no tokens left for {', '.join(empty)} (texts too short?)")

    mu = (act_sum / n_tok.to(device)[:, None].double()).cpu()  # [L, d_sae]
    features: dict[str, list[FeatureScore]] = {}
    for lang in targets:
        i = li[lang]
        others = [j for j in range(len(langs)) if j != i]
        gamma = mu[others].mean(0)
        nu = mu[i] - gamma
        order = torch.argsort(nu, descending=True, stable=True)[: config.top]
        features[lang] = [FeatureScore(id=int(f), nu=float(nu[f]), mu=float(mu[i, f]), gamma=float(gamma[f]))
                          for f in order.tolist() if nu[f] > 0]
    selected = sorted({f.id for feats in features.values() for f in feats})
    if not selected:
        raise UsageError("no feature is more active on any target language than on the others (ν ≤ 0 everywhere): "
                         "check the layer, the SAE and the language labels")
    sel = torch.tensor(selected, device=device)
    W_rows, b_rows = sae.W_enc[sel].float(), sae.b_enc[sel].float()
    b_dec = sae.b_dec.float() if sae.input_bias else None

    if config.alpha_stat == "mean":
        x_mean = (x_sum / n_tok.to(device)[:, None].double()).float()  # [L, d]
        if b_dec is not None:
            x_mean = x_mean - b_dec
        alpha = (x_mean @ W_rows.T + b_rows).T.cpu()  # [F, L]
    else:
        alpha = _quantile_alpha(lm, docs, li, W_rows, b_rows, b_dec, config,
                                progress("sasft prepare: α quantiles", len(docs)) if progress else None)

    plan = SASFTPlan(
        layer=config.layer, languages=list(targets), baseline_languages=langs, alpha_stat=config.alpha_stat,
        features=features,
        alpha={str(f): {lang: float(alpha[r, li[lang]]) for lang in langs} for r, f in enumerate(selected)},
        mu={str(f): {lang: float(mu[li[lang], f]) for lang in langs} for f in selected},
        token_counts={lang: int(n_tok[li[lang]]) for lang in langs}, doc_counts=n_doc,
        model=lm.describe(), sae={**sae.describe(), "layer": config.layer},
        provenance={
            "input": [str(p) for p in paths], "input_fingerprint": input_fingerprint(paths),
            "lang_field": config.lang_field, "max_tokens": config.max_tokens, "skip_first": config.skip_first,
            "max_docs_per_language": config.max_docs_per_language, "top": config.top,
            "rejects": len(rejects), "created_by": "qscope sasft prepare",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    rows = {"W_enc": W_rows.cpu(), "b_enc": b_rows.cpu(), "feature_ids": torch.tensor(selected, dtype=torch.long)}
    if b_dec is not None:
        rows["b_dec"] = b_dec.cpu()
    examples = _top_examples(selected, docs, tops, config.examples_per_feature, lm.tokenizer)
    return PrepareResult(plan, examples, rows, rejects)


def _doc_top(values: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor, input_ids: torch.Tensor) -> DocTop:
    """Per feature, the max activation in this document and the token where it happens."""
    v = values.flatten().cpu().numpy()
    f = ids.flatten().cpu().numpy()
    t = pos[:, None].expand_as(ids).flatten().cpu().numpy()
    keep = f >= 0
    v, f, t = v[keep], f[keep], t[keep]
    order = np.lexsort((-v, f))  # by feature, then value descending
    f, v, t = f[order], v[order], t[order]
    first = np.unique(f, return_index=True)[1]
    return DocTop(f[first].astype(np.int64), v[first].astype(np.float32), input_ids.cpu().numpy()[t[first]])


def _top_examples(selected: list[int], docs: list[Doc], tops: list[DocTop | None], n: int,
                  tokenizer: object) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    if n == 0:
        return {f: [] for f in selected}
    for f in selected:
        best: list[tuple[float, int, int]] = []
        for di, top in enumerate(tops):
            if top is None:
                continue
            k = np.searchsorted(top.ids, f)
            if k < len(top.ids) and top.ids[k] == f:
                best.append((float(top.values[k]), di, int(top.token_ids[k])))
        best.sort(key=lambda t: (-t[0], t[1]))
        out[f] = [{"doc_id": docs[di].doc_id, "lang": docs[di].lang, "activation": val, "token": tokenizer.decode([tok]),
                   "text": docs[di].text} for val, di, tok in best[:n]]
    return out


def _quantile_alpha(lm: LoadedModel, docs: list[Doc], li: dict[str, int], W_rows: torch.Tensor, b_rows: torch.Tensor,
                    b_dec: torch.Tensor | None, config: PrepareConfig,
                    tick: Callable[[int], None] | None = None) -> torch.Tensor:
    """Second pass: the selected rows' pre-activations on every counted token, then a per-language percentile."""
    q = float(_QUANTILE.match(config.alpha_stat).group(1)) / 100.0
    chunks: list[list[np.ndarray]] = [[] for _ in li]
    for batch in _batches(docs, config.batch_size):
        hidden, mask, _ = _forward(lm, [docs[i].text for i in batch], config)
        x = hidden.float()
        if b_dec is not None:
            x = x - b_dec
        pre = x @ W_rows.T + b_rows  # [B, T, F] — selected rows only
        for row, di in enumerate(batch):
            chunks[li[docs[di].lang]].append(pre[row][mask[row]].cpu().numpy())
        if tick:
            tick(len(batch))
    # every language has tokens (checked by the caller), so no chunk list is empty
    cols = [np.quantile(np.concatenate(c, axis=0), q, axis=0) for c in chunks]
    return torch.tensor(np.stack(cols, axis=1), dtype=torch.float32)  # [F, L]


def write_prepare(result: PrepareResult, out_dir: str | Path) -> dict[str, Path]:
    """The plan folder: sasft.json + encoder_rows.safetensors, report.md / report.html, examples.json (top
    examples per feature, texts cut to 300 characters), rejects.jsonl."""
    from qscope_data.sasft.report import write_report

    out_dir = Path(out_dir)
    save_plan(out_dir, result.plan, result.rows)
    paths = {"plan": out_dir / "sasft.json", "rows": out_dir / "encoder_rows.safetensors"}
    paths.update(write_report(result.plan, result.examples, out_dir))
    examples = {str(f): [{**e, "text": e["text"][:300]} for e in ex] for f, ex in result.examples.items()}
    write_json(out_dir / "examples.json", examples)
    paths["examples"] = out_dir / "examples.json"
    if result.rejects:
        write_text(out_dir / "rejects.jsonl",
                   "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in result.rejects))
        paths["rejects"] = out_dir / "rejects.jsonl"
    return paths

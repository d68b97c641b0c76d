"""Steering, measured: an α sweep over prompts, with the effect on what the model writes and its quality cost.

Two prompt sets (`qscope steer --eval PROMPTS`, `benchmarks/bench_steering.py`): *amplify* prompts in one language,
steered with +α along a language direction of another (does the output move into the target language?), and
*suppress* prompts that tend to drift into the target language, steered with −α (does the drift stop?). For each α:

- effect: the share of the continuation's letters in the target language (the code-switching detector
  `qscope_data.sasft.langdetect`: script letters for zh/ru/…, stopword-labelled segments for Latin languages), and
  the share of continuations that contain it at all;
- quality cost: perplexity of the continuation under the *unsteered* model given the prompt — where it climbs,
  over-steering has started — and the mean share of its character 10-grams that repeat an earlier one
  (`synth.fluency.repetition`): a steered loop is predictable, so perplexity alone misses it;
- the direction's own read-out: the steered block's residual projected on the unit direction, averaged over the
  continuation's positions (an SAE feature's pre-activation when the direction is one).

α is in units of the block's median residual norm on the prompts (`steering.residual_scale`), along the unit
vector of the direction: h ← h + α·s·d̂. Decoding is greedy with a repetition penalty (a base model loops greedily),
so the α = 0 row is the baseline and every difference comes from steering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from qscope_data.capture import LoadedModel, edit_block_output
from qscope_data.sasft.langdetect import detect
from qscope_data.synth.fluency import repetition, scored_perplexity
from qscope_data.synth.steering import generate, residual_scale, scaled_steering

PromptSet = Literal["amplify", "suppress"]


class SteerEvalOptions(BaseModel):
    """Defaults of the α sweep (`qscope steer --eval`)."""

    model_config = ConfigDict(extra="forbid")

    alphas: list[float] = Field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.4],
                                description="α ≥ 0 in units of the median residual norm; suppress prompts get −α")
    target_lang: str = Field("zh", description="the language the direction writes")
    max_new_tokens: int = Field(32, ge=1)
    repetition_penalty: float = Field(1.2, gt=0.0)
    positions: Literal["all", "generated"] = "all"
    batch_size: int = Field(8, ge=1)
    add_special_tokens: bool = True


@dataclass
class EvalPrompt:
    text: str
    lang: str
    set: PromptSet


def target_share(text: str, lang: str) -> float:
    """Share of the text's language evidence (letters) that is in `lang`; 0 for text without letters."""
    letters = detect(text).letters
    total = sum(letters.values())
    return letters.get(lang, 0) / total if total else 0.0


def continuation_perplexity(lm: LoadedModel, prompt: str, continuation: str, *, add_special_tokens: bool = True) -> float | None:
    """exp(mean NLL) of the continuation's tokens given the prompt, under the model as loaded (unsteered)."""
    tok = lm.tokenizer
    p_ids = tok(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    c_ids = tok(continuation, add_special_tokens=False)["input_ids"]
    return scored_perplexity(lm, p_ids + c_ids, len(p_ids)) if c_ids else None


def _projection(lm: LoadedModel, layer: int, steering, prompt: str, continuation: str, unit: torch.Tensor,
                add_special_tokens: bool) -> float:
    """Mean of (steered block output · d̂) over the continuation's positions, the steering applied as in generation."""
    tok = lm.tokenizer
    p_ids = tok(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    c_ids = tok(continuation, add_special_tokens=False)["input_ids"] or []
    ids = torch.tensor([p_ids + c_ids], device=lm.device)
    seen: dict[str, torch.Tensor] = {}

    def edit(hidden: torch.Tensor, call: int) -> torch.Tensor:
        if steering is not None:
            vec = steering.alpha * steering.direction.to(hidden.device, hidden.dtype)
            if steering.positions == "generated":
                mask = torch.zeros(hidden.shape[1], 1, device=hidden.device, dtype=hidden.dtype)
                mask[len(p_ids):] = 1
                hidden = hidden + mask * vec
            else:
                hidden = hidden + vec
        seen["h"] = hidden
        return hidden

    with edit_block_output(lm, layer, edit), torch.inference_mode():
        lm.model(input_ids=ids)
    h = seen["h"][0, len(p_ids) - 1 if not c_ids else len(p_ids):].float()
    return float((h @ unit.to(h.device)).mean())


def sweep(lm: LoadedModel, layer: int, direction: torch.Tensor, prompts: list[EvalPrompt],
          options: SteerEvalOptions | None = None) -> dict[str, Any]:
    """The α sweep (see the module docstring): per set and α, effect, perplexity and projection; plus the outputs."""
    o = options or SteerEvalOptions()
    scale = residual_scale(lm, layer, [p.text for p in prompts[:16]])
    unit = direction.float() / direction.float().norm().clamp_min(1e-12)
    rows: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    for set_name, sign in (("amplify", 1.0), ("suppress", -1.0)):
        group = [p for p in prompts if p.set == set_name]
        if not group:
            continue
        for alpha in o.alphas:
            signed = sign * alpha
            steering = scaled_steering(lm, layer, unit, signed, scale, o.positions) if signed else None
            texts = [p.text for p in group]
            outs = generate(lm, texts, max_new_tokens=o.max_new_tokens, temperature=0.0, steering=steering,
                            batch_size=o.batch_size, add_special_tokens=o.add_special_tokens,
                            repetition_penalty=o.repetition_penalty)
            shares = [target_share(t, o.target_lang) for t in outs]
            ppl = [continuation_perplexity(lm, p, t, add_special_tokens=o.add_special_tokens) for p, t in zip(texts, outs)]
            proj = [_projection(lm, layer, steering, p, t, unit, o.add_special_tokens) for p, t in zip(texts, outs)]
            finite = [x for x in ppl if x is not None]
            reps = [repetition(t) for t in outs]
            rows.append({
                "set": set_name, "alpha": signed, "n": len(group),
                "target_share": round(sum(shares) / len(shares), 4),
                "with_target": round(sum(1 for s in shares if s > 0) / len(shares), 4),
                "perplexity_median": round(sorted(finite)[len(finite) // 2], 3) if finite else None,
                "repetition_mean": round(sum(reps) / len(reps), 4),
                "projection": round(sum(proj) / len(proj), 3),
            })
            samples += [{"set": set_name, "alpha": signed, "prompt": p, "output": t} for p, t in zip(texts, outs)]
    return {"layer": layer, "residual_scale": scale, "target_lang": o.target_lang, "options": o.model_dump(),
            "rows": rows, "samples": samples}


def sweep_figure(result: dict[str, Any]) -> bytes:
    """α vs effect (share of output in the target language) and vs perplexity, one panel per prompt set."""
    import io

    from matplotlib.figure import Figure

    sets = [s for s in ("amplify", "suppress") if any(r["set"] == s for r in result["rows"])]
    fig = Figure(figsize=(5.5 * len(sets), 3.6))
    axes = fig.subplots(1, len(sets), squeeze=False)[0]
    fig.subplots_adjust(wspace=0.55)
    for ax, s in zip(axes, sets):
        rows = [r for r in result["rows"] if r["set"] == s]
        a = [r["alpha"] for r in rows]
        ax.plot(a, [r["target_share"] for r in rows], "o-", color="#3a9d5d", label=f"share of output in {result['target_lang']}")
        ax.plot(a, [r["with_target"] for r in rows], "s--", color="#8bc79b", label=f"outputs with any {result['target_lang']}")
        ax.set_xlabel("α (× median residual norm at the block)")
        ax.set_ylabel("effect")
        ax.set_ylim(-0.02, 1.02)
        ax2 = ax.twinx()
        ax2.plot(a, [r["perplexity_median"] or float("nan") for r in rows], "^-", color="#d9534f",
                 label="perplexity (unsteered model)")
        ax2.set_yscale("log")
        ax2.set_ylabel("median perplexity of the continuation")
        ax.set_title(f"{s}: block {result['layer']}")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def markdown_table(result: dict[str, Any]) -> str:
    lines = ["| set | α | n | share of output in " + result["target_lang"] + " | outputs with any | median perplexity | "
             "repeated 10-grams | projection on d̂ |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [table_row(r) for r in result["rows"]]
    return "\n".join(lines)


def table_row(r: dict[str, Any], label: str | None = None) -> str:
    """One row of `markdown_table` (`label` replaces the set name, e.g. for a control run)."""
    ppl = "–" if r["perplexity_median"] is None else f"{r['perplexity_median']:.1f}"
    return (f"| {label or r['set']} | {r['alpha']:+g} | {r['n']} | {r['target_share']:.3f} | {r['with_target']:.2f} | "
            f"{ppl} | {r['repetition_mean']:.2f} | {r['projection']:.1f} |")


def mean_difference(lm: LoadedModel, layer: int, texts_a: list[str], texts_b: list[str], *, max_tokens: int = 64) -> torch.Tensor:
    """mean(h | texts_a) − mean(h | texts_b) at block `layer` (position 0 left out): a language direction without an
    SAE (the fallback when no SAE feature is given)."""
    from qscope_data.capture import capture

    def mean(texts: list[str]) -> torch.Tensor:
        total, n = None, 0
        for t in texts:
            enc = lm.tokenizer([t], return_tensors="pt", truncation=True, max_length=max_tokens)
            h = capture(lm, enc["input_ids"], enc["attention_mask"], [layer])[layer][0, 1:].float()
            total = h.sum(0) if total is None else total + h.sum(0)
            n += h.shape[0]
        return total / max(n, 1)

    return mean(texts_a) - mean(texts_b)

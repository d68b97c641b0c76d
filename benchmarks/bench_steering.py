"""Steering, measured on the real LM (Gemma-3-270M by default): α sweep, effect vs perplexity, baseline α = 0 beside.

- direction: a zh language direction at block `--layer` — an SAE feature (`--sae DIR`: the feature whose firing
  rate on Chinese minus English text is largest) or, without an SAE, the difference of mean residuals
  (zh − en) on UD sentences (the fallback; the script says which it used);
- amplify: N English sentence openings (UD English, PUD test sentences), steered +α toward zh;
- suppress: N prompts prone to drift into Chinese — an English/Chinese PUD sentence pair, then the opening of another
  English sentence (the pattern invites a Chinese line next) — steered −α;
- per α: share of the continuation's letters in Chinese (the project's code-switching detector), share of outputs
  with any Chinese, median perplexity of the continuation under the unsteered model, mean share of repeated
  character 10-grams (a loop's perplexity is low), projection on the direction;
  plus a random direction at the largest α (same norm, same prompts): the perplexity cost of steering without
  the language direction.

    python benchmarks/bench_steering.py [--model DIR] [--layer 6] [--sae DIR] [--n 10] [--alphas 0,0.1,0.2,0.4]
                                        [--max-new-tokens 32] [--out DIR]

Data: ../shared/data/ud_text (Universal Dependencies, CC BY-SA; PUD CC BY-SA 3.0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QSCOPE_SHARED_DATA", REPO.parent / "shared" / "data"))  # env: a worktree elsewhere


def ud(lang: str) -> list[dict]:
    return [json.loads(line) for line in (SHARED / "ud_text" / f"{lang}.jsonl").open(encoding="utf-8")]


def build_prompts(n: int, seed: int):
    from qscope_data.synth.steer_eval import EvalPrompt

    rng = random.Random(seed)
    en = [r for r in ud("en") if "PUD" in r["source"]]
    zh = {r["sent_id"]: r for r in ud("zh") if "PUD" in r["source"]}
    pairs = [(r, zh[r["sent_id"]]) for r in en if r["sent_id"] in zh]
    rng.shuffle(pairs)
    amplify = [EvalPrompt(" ".join(e["text"].split()[:8]), "en", "amplify") for e, _ in pairs[:n]]
    # drift-prone: an English line after an en/zh pair — the pattern invites a Chinese line next
    suppress = [EvalPrompt(f"English: {e['text']}\nChinese: {z['text']}\nEnglish: {' '.join(e2['text'].split()[:8])}",
                           "en", "suppress")
                for (e, z), (e2, _) in zip(pairs[n:2 * n], pairs[2 * n:3 * n])]
    held = pairs[3 * n:3 * n + 200]  # direction texts: never a prompt
    return amplify + suppress, [z["text"] for _, z in held], [e["text"] for e, _ in held]


def sae_direction(lm, sae_dir: str, layer: int, zh: list[str], en: list[str]) -> tuple[torch.Tensor, str]:
    from qscope_data.encode import EncodeOptions, featurize
    from qscope_data.inputs import Record
    from qscope_data.sae import load_sae

    sae = load_sae(sae_dir, layer)

    def mean_acts(texts: list[str]) -> torch.Tensor:
        recs = [Record(f"t{i}", "<bench>", i, t, None, {}) for i, t in enumerate(texts)]
        table = featurize(lm, {layer: sae}, recs, EncodeOptions(max_tokens=64, drop_text=True))[layer]
        total = torch.zeros(sae.d_sae)
        for row in table.select(["feature_ids", "fire_counts", "n_positions"]).to_pylist():
            rate = torch.tensor(row["fire_counts"], dtype=torch.float32) / max(row["n_positions"], 1)
            total[torch.tensor(row["feature_ids"], dtype=torch.long)] += rate
        return total / len(texts)

    diff = mean_acts(zh) - mean_acts(en)
    f = int(diff.argmax())
    return sae.W_dec[:, f].float(), f"SAE feature {f} of {sae_dir} (firing rate zh − en {float(diff[f]):.2f})"


def main() -> None:
    from qscope_data.capture import load_model
    from qscope_data.synth.steer_eval import (SteerEvalOptions, markdown_table, mean_difference, sweep, sweep_figure,
                                             table_row)

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="causal LM folder (default: the demo's Gemma-3-270M)")
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--sae", default=None, help="SAE folder for --layer (default: difference-of-means direction)")
    ap.add_argument("--n", type=int, default=10, help="prompts per set")
    ap.add_argument("--alphas", default="0,0.1,0.2,0.4")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "steering"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found (the shared data folder beside the checkout)")
    model = args.model
    if model is None:
        from qscope_data.demo.gemma import ensure_gemma

        model = str(ensure_gemma())
    t0 = time.perf_counter()
    lm = load_model(model, dtype=torch.float32)
    prompts, zh, en = build_prompts(args.n, args.seed)
    if args.sae:
        direction, how = sae_direction(lm, args.sae, args.layer, zh, en)
    else:
        direction, how = mean_difference(lm, args.layer, zh, en), "difference of mean residuals zh − en (200 PUD sentences each)"
    options = SteerEvalOptions(alphas=[float(a) for a in args.alphas.split(",")], max_new_tokens=args.max_new_tokens)
    result = sweep(lm, args.layer, direction, prompts, options)
    # control: a random direction at the largest α, amplify prompts (same norm after unit-normalising)
    gen = torch.Generator().manual_seed(args.seed)
    control_opts = options.model_copy(update={"alphas": [max(options.alphas)]})
    control = sweep(lm, args.layer, torch.randn(direction.shape[0], generator=gen),
                    [p for p in prompts if p.set == "amplify"], control_opts)
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.update(direction=how, model=lm.model_id, control_random_direction=control["rows"], seconds=round(seconds, 1))
    (out / "steering.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    (out / "steering.png").write_bytes(sweep_figure(result))
    print(f"model {lm.model_id} · block {args.layer} · direction: {how}")
    print(f"α unit: median residual norm at the block = {result['residual_scale']:.1f}; greedy, repetition penalty "
          f"{options.repetition_penalty}, {options.max_new_tokens} new tokens; α = 0 is the unsteered baseline")
    print(markdown_table(result))
    print(table_row(control["rows"][0], "control: random direction"))
    print(f"{seconds:.0f} s; outputs and figure in {out}")
    for s in result["samples"][:: max(1, args.n)]:
        print(f"  [{s['set']} α={s['alpha']:+g}] {s['prompt'][-40:]!r} → {s['output'][:80]!r}")


if __name__ == "__main__":
    main()

"""Quality of the demo SAE on held-out text, beside its baselines, in one run.

    .venv/bin/python benchmarks/sae_quality.py [--sae qscope_data/demo/sae] [--texts 240] [--position-fraction 0.25]
                                               [--splice-first]

Held-out text: the texts of `qscope_data.demo.sae_data` listed in the SAE's `heldout-texts.sha256` (every 20th text
of its training stream, never trained on). Needs ../shared/data (for the text) and the converted Gemma-3-270M (`qscope_data.demo.gemma`). Prints, for our
SAE and for zero-ablation, mean-ablation and a random SAE of the same width and k: explained variance, L0, the
share of features that never fire on the held-out positions, next-token loss with block n's output replaced, and
loss recovered = (L_zero − L) / (L_zero − L_clean).

Cost: Gemma's LM head (262,144 tokens) is most of a forward, so the loss is scored on a seeded random
`--position-fraction` of the predictions (the same positions for every variant, so the comparison is paired);
1.0 scores all of them, as `make demo-sae`'s metrics.json does.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def main() -> None:
    from qscope_data.capture import capture, load_model
    from qscope_data.demo import sae_data
    from qscope_data.demo.demo_sae import RECIPE, SHIPPED, heldout_hashes
    from qscope_data.demo.gemma import ensure_gemma
    from qscope_data.sae import load_sae, quality

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", type=Path, default=SHIPPED)
    ap.add_argument("--texts", type=int, default=240, help="held-out texts for the spliced loss")
    ap.add_argument("--position-fraction", type=float, default=0.25,
                    help="share of next-token predictions scored (seeded; the same for every variant)")
    ap.add_argument("--splice-first", action="store_true", help="also replace position 0 (the attention sink)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not SHARED.exists():
        raise SystemExit(f"no shared data at {SHARED}")
    t0 = time.monotonic()
    sae = load_sae(args.sae)
    lm = load_model(str(ensure_gemma()), dtype=torch.float32)
    layer = int(sae.layer)
    held = heldout_hashes(args.sae)
    texts = [t for _, t in sae_data.training_texts(SHARED, seed=RECIPE["seed"]) if sae_data.text_hash(t) in held]
    texts = texts[: args.texts]
    rows = []
    for i in range(0, len(texts), 32):
        enc = lm.tokenizer(texts[i:i + 32], padding=True, truncation=True, max_length=RECIPE["max_tokens"],
                           return_tensors="pt")
        mask = enc["attention_mask"].bool()
        acts = capture(lm, enc["input_ids"], enc["attention_mask"], [layer])[layer]
        rows.append(acts[mask & (mask.cumsum(1) > 1)].float())
    x = torch.cat(rows)
    table = quality.evaluate_sae(lm, sae, layer, x, texts, max_tokens=RECIPE["max_tokens"],
                                 splice_first=args.splice_first, position_fraction=args.position_fraction)
    print(f"demo SAE {args.sae} on Gemma-3-270M block {layer}: d_sae {sae.d_sae}, k {sae.k}; "
          f"{len(texts)} held-out texts, {x.shape[0]:,} positions; "
          f"loss on {args.position_fraction:.0%} of the predictions; position 0 "
          f"{'replaced' if args.splice_first else 'kept clean'}; {time.monotonic() - t0:.0f} s")
    print("| variant | explained variance | L0 | dead fraction | next-token loss | loss recovered |")
    print("|---|---:|---:|---:|---:|---:|")

    def fmt(v: float | None, spec: str) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    for q in table:
        print(f"| {q.name} | {fmt(q.explained_variance, '.3f')} | {fmt(q.l0, '.1f')} | {fmt(q.dead_fraction, '.3f')} "
              f"| {fmt(q.loss, '.3f')} | {fmt(q.loss_recovered, '.3f')} |")


if __name__ == "__main__":
    main()

"""Baseline beside the mined SAE rules: logistic regression on mean-pooled residual activations, same model and layer.

It uses the rules' own split (qscope_data.rules.split: seeded hash of doc_id), so it trains on exactly the mining
documents (discovery + validation) and is scored on exactly the held-out documents that `rules eval` scores.

    .venv/bin/python benchmarks/toxicity_baseline.py --input toxicity.jsonl --model M --layer 3 [--train-lang en]

Prints balanced accuracy (and F1) per language on the held-out split, for a model trained on --train-lang
(transfer to the others), and for each language's own model.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np
import torch


def pooled_activations(model: str, layer: int, texts: list[str], max_tokens: int, batch: int = 64) -> np.ndarray:
    from qscope_data.capture import capture, load_model

    lm = load_model(model)  # float32 on a CPU without fast bf16
    out = []
    for start in range(0, len(texts), batch):
        enc = lm.tokenizer(texts[start:start + batch], return_tensors="pt", padding=True, truncation=True,
                           max_length=max_tokens)
        hidden = capture(lm, enc["input_ids"], enc["attention_mask"], [layer])[layer].float()
        mask = enc["attention_mask"].clone()
        mask[:, 0] = 0  # first position left out, as the store aggregates
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        out.append(pooled.numpy())
    return np.concatenate(out)


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, f1_score
    from sklearn.preprocessing import StandardScaler

    from qscope_data.rules import split as splits

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--layer", type=int, required=True)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--train-lang", default="en")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout-fraction", type=float, default=0.2)
    ap.add_argument("--validation-fraction", type=float, default=0.25)
    args = ap.parse_args()

    rows = [json.loads(line) for line in open(args.input, encoding="utf-8") if line.strip()]
    ids = [r["id"] for r in rows]
    split = np.array(splits.assign(ids, args.seed, args.heldout_fraction, args.validation_fraction).to_list())
    y = np.array([int(r["label"]) for r in rows])
    lang = np.array([r["lang"] for r in rows])
    with torch.inference_mode():
        X = pooled_activations(args.model, args.layer, [r["text"] for r in rows], args.max_tokens)
    held = split == splits.HELDOUT
    results: dict[str, dict[str, float]] = defaultdict(dict)

    def fit(mask: np.ndarray):
        scaler = StandardScaler().fit(X[mask])
        clf = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(X[mask]), y[mask])
        return lambda m: clf.predict(scaler.transform(X[m]))

    transfer = fit(~held & (lang == args.train_lang))
    for lg in sorted(set(lang)):
        m = held & (lang == lg)
        own = fit(~held & (lang == lg))
        for name, model in ((f"{args.train_lang} model", transfer), ("own model", own)):
            pred = model(m)
            results[lg][name] = (balanced_accuracy_score(y[m], pred), f1_score(y[m], pred))
        results[lg]["n_heldout"] = int(m.sum())
    print(f"logistic regression on mean-pooled block-{args.layer} activations of {args.model}")
    print(f"| lang | n | BA ({args.train_lang} model) | F1 ({args.train_lang} model) | BA (own model) | F1 (own model) |")
    print("|---|---:|---:|---:|---:|---:|")
    for lg, r in results.items():
        t, o = r[f"{args.train_lang} model"], r["own model"]
        print(f"| {lg} | {r['n_heldout']} | {t[0]:.3f} | {t[1]:.3f} | {o[0]:.3f} | {o[1]:.3f} |")


if __name__ == "__main__":
    main()

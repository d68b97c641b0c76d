"""Toxicity rules mined from real labelled data: the Qwen-Scope report's recipe on the public sets in ../shared/data.

Two steps around `qscope encode` (which needs the model):

    # 1. a labelled JSONL corpus (id, text, lang, label 1 = toxic / 0 = clean, source) from ../shared/data
    .venv/bin/python benchmarks/toxicity_real.py prepare --out toxicity.jsonl [--per-class 1000]
    # 2. encode it with a real model + SAE (the demo backbone, or a Qwen model with a Qwen-Scope SAE)
    .venv/bin/qscope encode --model MODEL --sae SAE --input toxicity.jsonl --id-field id --out tox-store
    # 3. mine per language on the mining split, evaluate on the held-out split, print the F1 table
    .venv/bin/python benchmarks/toxicity_real.py run --features tox-store --out tox-report

Sources (credited in the table): ParaDetox (toxic sentence vs its first neutral paraphrase, en), ToxiGen
demonstrations (hate vs neutral, en), MLMA hate speech (en, fr, ar; `normal` = clean), GermEval 2018 (de;
OFFENSE vs OTHER), COLD dev (zh).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _paradetox() -> list[dict]:
    rows = []
    with open(DATA / "paradetox" / "paradetox.tsv", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        for i, r in enumerate(reader):
            if len(r) >= 2 and r[0].strip() and r[1].strip():
                rows.append({"id": f"paradetox-{i}-toxic", "text": r[0].strip(), "label": 1})
                rows.append({"id": f"paradetox-{i}-neutral", "text": r[1].strip(), "label": 0})
    return [dict(r, lang="en", source="paradetox") for r in rows]


def _toxigen() -> list[dict]:
    rows = []
    for path in sorted((DATA / "toxigen_demonstrations" / "demonstrations").glob("*/*.txt")):
        label = 1 if path.name.startswith("hate_") else 0
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                rows.append({"id": f"toxigen-{path.parent.name}-{path.stem}-{i}", "text": line.strip(), "label": label,
                             "lang": "en", "source": "toxigen"})
    return rows


def _mlma(lang: str) -> list[dict]:
    rows = []
    with open(DATA / "mlma_hate_speech" / f"{lang}_dataset.csv", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            text, sentiment = (r.get("tweet") or "").strip(), (r.get("sentiment") or "").strip()
            if text and sentiment:
                rows.append({"id": f"mlma-{lang}-{r['HITId']}", "text": text, "label": int(sentiment != "normal"),
                             "lang": lang, "source": "mlma"})
    return rows


def _germeval() -> list[dict]:
    rows = []
    for i, line in enumerate((DATA / "germeval2018" / "germeval2018.training.txt").read_text(encoding="utf-8").splitlines()):
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0].strip():
            rows.append({"id": f"germeval-{i}", "text": parts[0].strip(), "label": int(parts[1] == "OFFENSE"),
                         "lang": "de", "source": "germeval2018"})
    return rows


def _cold() -> list[dict]:
    rows = []
    with open(DATA / "cold" / "dev.csv", encoding="utf-8-sig") as fh:
        for i, r in enumerate(csv.DictReader(fh)):
            if (r.get("TEXT") or "").strip():
                rows.append({"id": f"cold-{i}", "text": r["TEXT"].strip(), "label": int(r["label"]), "lang": "zh",
                             "source": "cold"})
    return rows


SOURCES = {"paradetox": _paradetox, "toxigen": _toxigen, "mlma-en": lambda: _mlma("en"), "mlma-fr": lambda: _mlma("fr"),
           "mlma-ar": lambda: _mlma("ar"), "germeval2018": _germeval, "cold": _cold}


def prepare(out: Path, per_class: int, seed: int, sources: list[str] | None = None) -> None:
    """Balanced samples per source and label; texts the demo SAE was trained on are left out (no leakage)."""
    from qscope_data.demo.sae_data import text_hash, training_text_hashes

    if not DATA.exists():
        sys.exit(f"no data folder at {DATA}")
    rng = random.Random(seed)
    seen_by_sae = training_text_hashes(DATA)
    records = []
    for name in sources or list(SOURCES):
        rows = [r for r in SOURCES[name]() if text_hash(r["text"]) not in seen_by_sae]
        for label in (0, 1):
            part = [r for r in rows if r["label"] == label]
            rng.shuffle(part)
            records += part[:per_class]
            print(f"{name:<14} label {label}: {min(len(part), per_class):>5} of {len(part)}")
    rng.shuffle(records)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    print(f"wrote {len(records)} records to {out}")


def run(features: Path, out: Path, top: int, seed: int, layer: str | None, by: str) -> None:
    from qscope_data.rules.evaluate import evaluate_rules
    from qscope_data.rules.mine import MineInputs, MineOptions
    from qscope_data.rules.mine import run as mine

    out.mkdir(parents=True, exist_ok=True)
    rules = out / "mined.yaml"
    options = MineOptions(label_field="label", positive="1", by=by, top=top, seed=seed, name="toxic")
    mined = mine(options, MineInputs(features, int(layer) if layer and layer != "auto" else layer), rules).stats
    report = evaluate_rules([rules], features, out / "report.json", by=by, split="heldout", progress=True)
    print(f"\nmodel {report['model'] or '?'}, layer {report['layer']}, held-out split ({report['n_documents']} documents)")
    print(f"{'rule':<16} {'group':<8} {'k':>2} {'eps':>7} {'BA':>6} {'flagged':>7} {'P':>6} {'R':>6} {'F1':>6} "
          f"{'F1 all':>6} {'n':>6}")
    for r in mined["rules"]:
        entry = report["rules"][r["name"]]
        rows = [("overall", entry["overall"])] + (sorted(entry.get("by_group", {}).items()) if r["group"] is None else [])
        for group, m in rows:
            print(f"{r['name']:<16} {group:<8} {r['k']:>2} {r['eps']:>7.4g} {m['balanced_accuracy']:6.3f} "
                  f"{m['flagged']:7.0%} {m['precision']:6.3f} {m['recall']:6.3f} {m['f1']:6.3f} {m['f1_flag_all']:6.3f} "
                  f"{m['n']:>6}")
    if report["transfer"]:
        t = report["transfer"]
        for key in ("balanced_accuracy", "f1"):
            print(f"\ntransfer {key} (row: mined on, column: evaluated on)")
            print(" " * 8 + "".join(f"{g:>8}" for g in t["targets"]))
            for src in t["sources"]:
                print(f"{src:<8}" + "".join(f"{t['matrix'][src][key][g]:8.3f}" for g in t["targets"]))
    if report["data_efficiency"]:
        rel = report["data_efficiency"].get("relative_to_full", {})
        for key, points in rel.items():
            print(f"data efficiency {key}: 10% of the mining data → {points.get('0.1', float('nan')):.1%} of the full-data F1")
    print(f"\nrules: {rules}\nreport: {out / 'report.json'} ({', '.join(Path(p).name for p in report['artifacts'].values())})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="write the labelled JSONL corpus")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-class", type=int, default=1000, help="records per source and label")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sources", default=None, help=f"comma-separated subset of {', '.join(SOURCES)}")
    r = sub.add_parser("run", help="mine + eval on an encoded store, print the F1 table")
    r.add_argument("--features", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--top", type=int, default=10)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--layer", default=None, help="layer number or auto")
    r.add_argument("--by", default="lang")
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.out, args.per_class, args.seed, args.sources.split(",") if args.sources else None)
    else:
        run(args.features, args.out, args.top, args.seed, args.layer, args.by)


if __name__ == "__main__":
    main()

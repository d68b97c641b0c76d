"""Safety-feature coverage on real data: an inventory from harm categories vs benign prompts, and a benign target's gaps.

Two steps, with `qscope encode` (a real Qwen model + Qwen-Scope SAE) in between:

    # 1. inputs from ../shared/data (read in place, written outside the repo)
    .venv/bin/python benchmarks/coverage_real.py prepare --out /tmp/cov-inputs
    #    reference.jsonl: Do-Not-Answer (category dna:<risk area>), HarmBench (harmbench:<semantic category>),
    #    AdvBench (advbench) and benign prompts (category benign: MGSM rows 0-124 in 11 languages + self-instruct);
    #    target.jsonl: benign only (MGSM rows 125-249 + XQuAD questions, 12 languages), with lang and source.
    # 2. encode both with the same model / SAE layer (see `qscope encode --help`), e.g.
    #    qscope encode /tmp/cov-inputs/reference.jsonl --id-field id --out /tmp/cov-ref ...
    #    qscope encode /tmp/cov-inputs/target.jsonl   --id-field id --out /tmp/cov-target ...
    # 3. select + gaps + summary
    .venv/bin/python benchmarks/coverage_real.py run --reference /tmp/cov-ref --target /tmp/cov-target --out /tmp/cov-report

Sources (credit where results are shown): Libr-AI/do-not-answer (Apache-2.0), centerforaisafety/HarmBench (MIT),
llm-attacks/llm-attacks AdvBench (MIT), google-research/url-nlp MGSM (CC BY 4.0), yizhongw/self-instruct (Apache-2.0),
google-deepmind/xquad (CC BY-SA 4.0).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MGSM_LANGS = ("en", "es", "fr", "de", "ru", "zh", "ja", "th", "sw", "bn", "te")
XQUAD_LANGS = ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60]


def _mgsm(lang: str) -> list[str]:
    with open(DATA / "mgsm" / f"mgsm_{lang}.tsv", encoding="utf-8") as fh:
        return [row[0] for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) if row]


def reference_records() -> list[dict]:
    out: list[dict] = []
    with open(DATA / "do_not_answer" / "do_not_answer_en.csv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            out.append({"id": f"dna-{row['id']}", "text": row["question"], "category": f"dna:{_slug(row['risk_area'])}",
                        "lang": "en", "source": "do_not_answer"})
    with open(DATA / "harmbench" / "harmbench_behaviors_text_val.csv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            text = row["Behavior"] + (f"\n\n{row['ContextString']}" if row.get("ContextString") else "")
            out.append({"id": f"hb-{row['BehaviorID']}", "text": text, "category": f"harmbench:{row['SemanticCategory']}",
                        "lang": "en", "source": "harmbench"})
    with open(DATA / "advbench" / "harmful_behaviors.csv", encoding="utf-8") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            out.append({"id": f"adv-{i}", "text": row["goal"], "category": "advbench", "lang": "en", "source": "advbench"})
    for lang in MGSM_LANGS:
        for i, q in enumerate(_mgsm(lang)[:125]):
            out.append({"id": f"mgsm-{lang}-{i}", "text": q, "category": "benign", "lang": lang, "source": "mgsm"})
    with open(DATA / "self_instruct_seed" / "seed_tasks.jsonl", encoding="utf-8") as fh:
        for line in fh:
            task = json.loads(line)
            out.append({"id": f"si-{task['id']}", "text": task["instruction"], "category": "benign", "lang": "en",
                        "source": "self_instruct"})
    return out


def target_records(xquad_per_lang: int = 100) -> list[dict]:
    out: list[dict] = []
    for lang in MGSM_LANGS:
        for i, q in enumerate(_mgsm(lang)[125:], start=125):
            out.append({"id": f"mgsm-{lang}-{i}", "text": q, "lang": lang, "source": "mgsm"})
    for lang in XQUAD_LANGS:
        data = json.loads((DATA / "xquad" / f"xquad.{lang}.json").read_text(encoding="utf-8"))
        questions = [qa for art in data["data"] for para in art["paragraphs"] for qa in para["qas"]][:xquad_per_lang]
        out += [{"id": f"xquad-{lang}-{qa['id']}", "text": qa["question"], "lang": lang, "source": "xquad"} for qa in questions]
    return out


def prepare(out: Path) -> None:
    if not DATA.exists():
        sys.exit(f"coverage_real: {DATA} not found (the shared data sets live beside the repo)")
    out.mkdir(parents=True, exist_ok=True)
    for name, records in (("reference.jsonl", reference_records()), ("target.jsonl", target_records())):
        with open(out / name, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        counts: dict[str, int] = {}
        for r in records:
            key = r.get("category") or r["source"]
            counts[key] = counts.get(key, 0) + 1
        print(f"{out / name}: {len(records)} records ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")


def run(reference: Path, targets: list[Path], out: Path, top: int, min_support: int, min_docs: int, layer: int | None) -> None:
    from qscope_data.coverage.gaps import compute_gaps
    from qscope_data.coverage.inventory import save_inventory, select_features
    from qscope_data.coverage.report import gap_report_markdown, write_gap_report
    from qscope_data.store import FeatureStore

    ref = FeatureStore(reference)
    t0 = time.perf_counter()
    inventory = select_features(ref, label_field="category", negative="benign", top=top, min_support=min_support, layer=layer)
    t_select = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    save_inventory(inventory, out / "inventory.yaml")
    t0 = time.perf_counter()
    report = compute_gaps(inventory, [FeatureStore(t) for t in targets], reference=ref, by=["lang", "source"], min_docs=min_docs)
    t_gaps = time.perf_counter() - t0
    paths = write_gap_report(report, out)
    sae = inventory.provenance.sae
    print(f"reference {reference}: {ref.manifest.n_documents} docs; SAE {sae.get('source')} layer {sae.get('layer')} "
          f"d_sae {sae.get('d_sae')} k {sae.get('k')}")
    print(f"inventory: {len(inventory.features)} features over {len(inventory.categories())} categories "
          f"(select {t_select:.2f} s) -> {out / 'inventory.yaml'}")
    for feat in inventory.features[:3]:
        print(f"  e.g. feature {feat.id} [{feat.category}] delta {feat.delta:.3f} support {feat.support}")
    print(f"gaps computed in {t_gaps:.2f} s -> {paths['gaps.json']}, {paths['report.html']}")
    print()
    print(gap_report_markdown(report, max_gaps=15, max_example_chars=100))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="write reference.jsonl and target.jsonl from ../shared/data")
    p.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run", help="select the inventory on the reference store and report the target's gaps")
    r.add_argument("--reference", type=Path, required=True)
    r.add_argument("--target", type=Path, action="append", required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--top", type=int, default=10)
    r.add_argument("--min-support", type=int, default=3)
    r.add_argument("--min-docs", type=int, default=1)
    r.add_argument("--layer", type=int, default=None)
    args = parser.parse_args()
    if args.cmd == "prepare":
        prepare(args.out)
    else:
        run(args.reference, args.target, args.out, args.top, args.min_support, args.min_docs, args.layer)


if __name__ == "__main__":
    main()

"""How each stage's cost grows with its input: peak RSS, docs/s and wall at 1×, 3× and 10× a base corpus.

    .venv/bin/python benchmarks/bench_scale.py                 # base 5,000 documents; ~3 minutes on 2 cores
    .venv/bin/python benchmarks/bench_scale.py --base 500      # quicker

The base corpus is synthesised from ../shared/data: each document is a conversation, a question from MGSM and an
answer of consecutive Universal Dependencies sentences (en de fr es ru pt it tr), with a label (a quarter positive)
and a category. Its feature store is synthetic (48 features a document drawn from a seeded generator, 4 more from a
small "positive" block on positive documents, so mining and coverage have a signal) and written through the store
contract with the corpus' fingerprint. A k× corpus replicates the base with fresh ids (``<id>~r<c>``) and
fresh-looking text (copy c replaces every third word by another word of the same document, so no copy is an exact
or near duplicate of another: dedup does real work), and its store replicates the base rows.

Stages: `score` (one rule file, drop + flag rules), `curate` (with those scores; 500-row shards), `rules mine`
(label, by lang), `features select` (inventory by category), `gaps` (that inventory against the store), `overlap`
(the store). Each stage and size runs in a fresh subprocess that reports its peak RSS (VmHWM) and the wall time of
the command itself (interpreter start-up excluded). The 10×/1× ratios are the ones the scale acceptance reads: peak
RSS within 1.3× and docs/s within 0.8× of the 1× run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QSCOPE_SHARED_DATA", ROOT.parent / "shared" / "data"))
LANGS = ("en", "de", "fr", "es", "ru", "pt", "it", "tr")
D_SAE, LAYER, PER_DOC, POSITIVE_BLOCK = 8192, 12, 48, 16
STAGES = ("score", "curate", "mine", "select", "gaps", "overlap")
RULES = """rules:
  - {name: toxic, when: 'fires(f3) and fires(f7)', action: drop}
  - {name: risky, when: 'any_fires(f1, f2, f5)', action: flag}
"""


def base_documents(n: int) -> list[dict]:
    """n conversations from the shared data (round-robin over the languages), each with id, lang, label, category."""
    questions = [line.split("\t")[0] for line in (SHARED / "mgsm" / "mgsm_en.tsv").read_text().splitlines() if line]
    sentences = {lang: [json.loads(x)["text"] for x in (SHARED / "ud_text" / f"{lang}.jsonl").read_text().splitlines()]
                 for lang in LANGS}
    rng = np.random.default_rng(0)
    docs = []
    for i in range(n):
        lang = LANGS[i % len(LANGS)]
        pool = sentences[lang]
        start = int(rng.integers(0, len(pool) - 6))
        answer = " ".join(pool[start:start + int(rng.integers(3, 7))])
        label = int(rng.random() < 0.25)
        docs.append({"id": f"b{i}", "lang": lang, "label": label, "category": "harmful" if label else "benign",
                     "messages": [{"role": "user", "content": questions[i % len(questions)]},
                                  {"role": "assistant", "content": answer}]})
    return docs


def _copy_text(text: str, c: int) -> str:
    """Copy c of a text: every third word replaced by another word of the same text (c = 0: unchanged)."""
    words = text.split()
    if c == 0 or len(words) < 2:
        return text if c == 0 else f"{text} {c}"
    return " ".join(words[(j * 7 + c) % len(words)] if (j + c) % 3 == 0 else w for j, w in enumerate(words))


def base_features(docs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Per document its sorted feature ids (CSR offsets, values): 48 random, plus 4 of the positive block if positive."""
    rng = np.random.default_rng(1)
    offsets, values = [0], []
    for d in docs:
        ids = set(rng.choice(np.arange(POSITIVE_BLOCK, D_SAE), PER_DOC, replace=False).tolist())
        if d["label"]:
            ids |= set(rng.choice(POSITIVE_BLOCK, 4, replace=False).tolist())
        elif rng.random() < 0.1:
            ids.add(int(rng.integers(0, POSITIVE_BLOCK)))
        values.extend(sorted(ids))
        offsets.append(len(values))
    return np.asarray(offsets, dtype=np.int32), np.asarray(values, dtype=np.int32)


def build(root: Path, docs: list[dict], copies: int) -> dict[str, Path]:
    """The k× corpus (JSONL), its store, the rule file; returns their paths."""
    import pyarrow as pa

    from qscope_data.inputs import input_fingerprint
    from qscope_data.store import SAEInfo, StoreManifest, write_store

    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as fh:
        for c in range(copies):
            for d in docs:
                msgs = [{**m, "content": _copy_text(m["content"], c)} if m["role"] == "assistant" else m for m in d["messages"]]
                fh.write(json.dumps({**d, "id": f"{d['id']}~r{c}", "messages": msgs}, ensure_ascii=False) + "\n")
    offsets, values = base_features(docs)
    n = len(docs)
    lengths = np.diff(offsets)
    all_offsets = np.concatenate([[0], np.cumsum(np.tile(lengths, copies))]).astype(np.int32)
    all_values = np.tile(values, copies)
    rng = np.random.default_rng(2)
    acts = rng.gamma(2.0, 1.5, size=all_values.size).astype(np.float32)
    counts = rng.integers(1, 20, size=all_values.size).astype(np.int32)
    n_tokens = np.tile(rng.integers(20, 300, size=n), copies).astype(np.int32)
    table = pa.table({
        "doc_id": [f"{d['id']}~r{c}" for c in range(copies) for d in docs],
        "n_tokens": n_tokens, "n_positions": n_tokens - 1,
        "feature_ids": pa.ListArray.from_arrays(all_offsets, all_values),
        "max_acts": pa.ListArray.from_arrays(all_offsets, acts),
        "fire_counts": pa.ListArray.from_arrays(all_offsets, counts),
        "lang": [d["lang"] for _ in range(copies) for d in docs],
        "label": pa.array([d["label"] for _ in range(copies) for d in docs], pa.int64()),
        "category": [d["category"] for _ in range(copies) for d in docs],
    })
    manifest = StoreManifest(
        model={"id": "bench/synthetic", "architecture": "none"},
        saes=[SAEInfo(layer=LAYER, source="bench/synthetic", format="qwen-scope", k=32, d_sae=D_SAE, d_model=640)],
        options={"text_field": "text", "id_field": "id"}, inputs={"fingerprint": input_fingerprint([str(corpus)])})
    write_store(root / "store", {LAYER: table}, manifest)
    (root / "rules.yaml").write_text(RULES)
    return {"corpus": corpus, "store": root / "store", "rules": root / "rules.yaml"}


def stage_args(stage: str, root: Path) -> list[str]:
    store, out = str(root / "store"), root / f"out-{stage}"
    return {
        "score": ["score", "--rules", str(root / "rules.yaml"), "--features", store, "--out", str(out), "--no-progress"],
        "curate": ["curate", "--input", str(root / "corpus.jsonl"), "--features", store, "--scores", str(root / "out-score"),
                   "--out", str(out), "--max-shard-rows", "500", "--no-progress"],
        "mine": ["rules", "mine", "--features", store, "--out", str(root / "mined.yaml"), "--by", "lang"],
        "select": ["features", "select", "--features", store, "--label-field", "category", "--out", str(root / "inventory.yaml")],
        "gaps": ["gaps", "--inventory", str(root / "inventory.yaml"), "--target", store, "--out", str(out)],
        "overlap": ["overlap", store, "--out", str(out)],
    }[stage]


CHILD = """
import json, sys, time
from qscope_data.cli import main
t = time.perf_counter()
rc = main(json.loads(sys.argv[1]))
wall = time.perf_counter() - t
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"rc": rc, "wall": wall, "hwm_mib": int(status["VmHWM"].split()[0]) / 1024}))
"""


def run_stage(stage: str, root: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(stage_args(stage, root))], capture_output=True,
                          text=True, cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{stage} at {root.name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["rc"] not in (None, 0):
        raise SystemExit(f"{stage} at {root.name} exited {result['rc']}:\n{done.stderr[-3000:]}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=int, default=5000, help="documents in the 1× corpus (more than one 2,048-document batch)")
    ap.add_argument("--scales", default="1,3,10")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    scales = [int(s) for s in args.scales.split(",")]
    stages = [s for s in args.stages.split(",") if s]
    if "curate" in stages and "score" not in stages:
        stages.insert(0, "score")  # curate reads the scores
    if "gaps" in stages and "select" not in stages:
        stages.insert(stages.index("gaps"), "select")
    docs = base_documents(args.base)
    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="qscope-bench-scale-", dir=args.workdir) as tmp:
        for k in scales:
            root = Path(tmp) / f"x{k}"
            t = time.perf_counter()
            build(root, docs, k)
            print(f"built {k}× ({k * args.base:,} documents, {(root / 'corpus.jsonl').stat().st_size / 2**20:.1f} MiB JSONL) "
                  f"in {time.perf_counter() - t:.1f}s", file=sys.stderr)
            for stage in stages:
                r = run_stage(stage, root)
                r["docs"] = k * args.base
                results[stage, k] = r
                print(f"  {stage:8s} {r['wall']:7.2f}s  {r['hwm_mib']:7.1f} MiB", file=sys.stderr)
    lo, hi = scales[0], scales[-1]
    header = "| stage | " + " | ".join(f"{k}×: docs · peak RSS MiB · docs/s · wall s" for k in scales) + \
             f" | RSS {hi}×/{lo}× | docs/s {hi}×/{lo}× |"
    print(f"\nbase {args.base:,} documents; machine: {os.cpu_count()} CPUs\n")
    print(header)
    print("|" + "---|" * (len(scales) + 3))
    for stage in stages:
        cells = [f"{r['docs']:,} · {r['hwm_mib']:.0f} · {r['docs'] / r['wall']:,.0f} · {r['wall']:.2f}"
                 for r in (results[stage, k] for k in scales)]
        a, b = results[stage, lo], results[stage, hi]
        rss = b["hwm_mib"] / a["hwm_mib"]
        rate = (b["docs"] / b["wall"]) / (a["docs"] / a["wall"])
        print(f"| {stage} | " + " | ".join(cells) + f" | {rss:.2f} | {rate:.2f} |")


if __name__ == "__main__":
    main()

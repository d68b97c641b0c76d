"""Benchmark `qscope score`: a synthetic 1M-document store (≈50 sparse features per document, d_sae 32768),
20 rules, documents per second — beside two baselines on a sample, extrapolated:

* per-row Python: every document turned into a {feature: (act, count)} dict and the 20 rules written as plain
  Python functions (what a dolma-style per-document filter does); also checks they agree with `score`;
* polars list.eval: each rule's feature lookups as per-row list expressions (`list.eval(element().index_of(f))`),
  no shared feature gather.

    .venv/bin/python benchmarks/bench_score.py [--docs 1000000] [--store /tmp/qscope-bench-store] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from qscope_data.rules.score import ScoreInputs, ScoreOptions, run
from qscope_data.store import FeatureStore, SAEInfo, StoreManifest, write_store

D_SAE = 32768
PER_DOC = 50
LANGS = ["en", "de", "fr", "zh", "ru"]

# 20 rules over frequent and rare features, metadata and every function family.
RULES_YAML = """
sae: {id: synthetic, layer: 12, d_sae: 32768}
features:
  insult: 3
  slur: 17
  threat: 40
  chinese: 5
rules:
  - {name: r01, when: "any_fires(insult, slur, threat)", action: drop}
  - {name: r02, when: "fires(insult, 0.8) or fires(slur, 0.9)", score: "max_act(insult, slur)", action: flag}
  - {name: r03, when: "act(threat) > 0.5 and lang == 'en'", action: flag}
  - {name: r04, when: "n_fires(f1, f2, f3, f4, f5, f6) >= 3", score: "n_fires(f1, f2, f3, f4, f5, f6)", action: flag}
  - {name: r05, when: "count(insult) >= 10 and n_tokens > 200", action: drop}
  - {name: r06, when: "rate(slur) > 0.05", score: "rate(slur)", action: flag}
  - {name: r07, when: "fires(chinese) and lang in ['en', 'de', 'fr']", languages: [en, de, fr], action: flag}
  - {name: r08, when: "sum_act(f100, f200, f300) > 1.2", score: "sum_act(f100, f200, f300)", action: flag}
  - {name: r09, when: "not fires(f8) and fires(f9, 0.3)", action: keep}
  - {name: r10, when: "act(f11) * 2 + act(f12) > 1.5", action: flag}
  - {name: r11, when: "all_fires(f13, f14)", action: flag}
  - {name: r12, when: "max_act(f20, f21, f22, f23) > 0.9 or count(f24) > 15", action: flag}
  - {name: r13, when: "fires(f31000) or fires(f32000) or fires(f12345)", action: drop}
  - {name: r14, when: "act(f50) - act(f51) > 0.3 and lang != 'zh'", action: flag}
  - {name: r15, when: "n_positions > 0 and count(f60) / n_positions > 0.02", action: flag}
  - {name: r16, when: "any_fires(f70, f71, f72, f73, f74, f75, f76, f77)", languages: [zh, ru], action: flag}
  - {name: r17, when: "fires(f7, 0.2) and not (lang in ['zh'])", score: "act(f7)", action: flag}
  - {name: r18, when: "n_tokens >= 300 or fires(f90, 0.95)", action: keep}
  - {name: r19, when: "(fires(f2) or fires(f4)) and (fires(f6) or fires(f10))", action: flag}
  - {name: r20, when: "rate(f1) + rate(f2) > 0.4", score: "rate(f1) + rate(f2)", action: flag}
"""


def _python_rules():
    """The same 20 rules as plain Python over {id: (act, count)} dicts (the per-row baseline)."""

    def a(d, f):
        return d.get(f, (0.0, 0))[0]

    def c(d, f):
        return d.get(f, (0.0, 0))[1]

    def rate(d, f, npos):
        return c(d, f) / npos if npos > 0 else 0.0

    return {
        "r01": lambda d, m: a(d, 3) > 0 or a(d, 17) > 0 or a(d, 40) > 0,
        "r02": lambda d, m: a(d, 3) > 0.8 or a(d, 17) > 0.9,
        "r03": lambda d, m: a(d, 40) > 0.5 and m["lang"] == "en",
        "r04": lambda d, m: sum(a(d, f) > 0 for f in (1, 2, 3, 4, 5, 6)) >= 3,
        "r05": lambda d, m: c(d, 3) >= 10 and m["n_tokens"] > 200,
        "r06": lambda d, m: rate(d, 17, m["n_positions"]) > 0.05,
        "r07": lambda d, m: a(d, 5) > 0 and m["lang"] in ("en", "de", "fr"),
        "r08": lambda d, m: a(d, 100) + a(d, 200) + a(d, 300) > 1.2,
        "r09": lambda d, m: not a(d, 8) > 0 and a(d, 9) > 0.3,
        "r10": lambda d, m: a(d, 11) * 2 + a(d, 12) > 1.5,
        "r11": lambda d, m: a(d, 13) > 0 and a(d, 14) > 0,
        "r12": lambda d, m: max(a(d, 20), a(d, 21), a(d, 22), a(d, 23)) > 0.9 or c(d, 24) > 15,
        "r13": lambda d, m: a(d, 31000) > 0 or a(d, 32000) > 0 or a(d, 12345) > 0,
        "r14": lambda d, m: a(d, 50) - a(d, 51) > 0.3 and m["lang"] != "zh",
        "r15": lambda d, m: m["n_positions"] > 0 and (c(d, 60) / m["n_positions"] if m["n_positions"] else 0) > 0.02,
        "r16": lambda d, m: any(a(d, f) > 0 for f in range(70, 78)) and m["lang"] in ("zh", "ru"),
        "r17": lambda d, m: a(d, 7) > 0.2 and not m["lang"] == "zh",
        "r18": lambda d, m: m["n_tokens"] >= 300 or a(d, 90) > 0.95,
        "r19": lambda d, m: (a(d, 2) > 0 or a(d, 4) > 0) and (a(d, 6) > 0 or a(d, 10) > 0),
        "r20": lambda d, m: rate(d, 1, m["n_positions"]) + rate(d, 2, m["n_positions"]) > 0.4,
    }


def build_store(root: Path, n_docs: int, seed: int = 0) -> FeatureStore:
    """Random sparse documents: ids from a heavy-tailed distribution (some features common, most rare)."""
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, n_docs, 200_000):
        n = min(200_000, n_docs - start)
        raw = np.sort((rng.pareto(1.1, (n, PER_DOC + 14)) * 300).astype(np.int64) % D_SAE, axis=1)
        keep = np.ones_like(raw, dtype=bool)
        keep[:, 1:] = raw[:, 1:] != raw[:, :-1]
        keep &= np.cumsum(keep, axis=1) <= PER_DOC
        lens = keep.sum(1)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(lens, out=offsets[1:])
        flat = raw[keep].astype(np.int32)
        n_tokens = rng.integers(16, 512, n).astype(np.int32)
        n_positions = (n_tokens - 1).astype(np.int32)
        acts = (rng.gamma(2.0, 0.25, flat.size)).astype(np.float32)
        counts = np.minimum(rng.geometric(0.15, flat.size), np.repeat(n_positions, lens)).astype(np.int32)
        off = pa.array(offsets)
        chunks.append(pa.table({
            "doc_id": pa.array([f"doc{start + i:08d}" for i in range(n)]),
            "n_tokens": pa.array(n_tokens),
            "n_positions": pa.array(n_positions),
            "feature_ids": pa.ListArray.from_arrays(off, pa.array(flat)),
            "max_acts": pa.ListArray.from_arrays(off, pa.array(acts)),
            "fire_counts": pa.ListArray.from_arrays(off, pa.array(counts)),
            "lang": pa.array(rng.choice(LANGS, n)),
        }))
    table = pa.concat_tables(chunks)
    manifest = StoreManifest(model={"id": "synthetic"}, saes=[SAEInfo(layer=12, k=PER_DOC, d_sae=D_SAE, d_model=2048)])
    return write_store(root, {12: table}, manifest, shard_rows=50_000)


def per_row_baseline(store: FeatureStore, sample: int, scores: pl.DataFrame) -> tuple[float, int]:
    """Docs/s of per-row Python over a sample; returns (rate, disagreements with `score` on the sample)."""
    rows = store.scan().head(sample).collect()
    rules = _python_rules()
    start = time.perf_counter()
    results = {name: [] for name in rules}
    for row in rows.iter_rows(named=True):
        d = {f: (a, c) for f, a, c in zip(row["feature_ids"], row["max_acts"], row["fire_counts"])}
        for name, fn in rules.items():
            results[name].append(bool(fn(d, row)))
    rate = rows.height / (time.perf_counter() - start)
    ref = scores.head(sample)
    bad = sum(int((pl.Series(results[name]) != ref[name]).sum()) for name in rules)
    return rate, bad


def list_eval_baseline(store: FeatureStore, sample: int) -> float:
    """Docs/s of per-feature list.eval lookups (no shared gather) for the 20 rules' features, on a sample."""
    df = store.scan().head(sample).collect()
    feature_ids = sorted({3, 17, 40, 5, 1, 2, 4, 6, 100, 200, 300, 8, 9, 11, 12, 13, 14, 20, 21, 22, 23, 24, 31000,
                          32000, 12345, 50, 51, 60, *range(70, 78), 7, 90, 10})

    def act(f: int) -> pl.Expr:
        idx = pl.col("feature_ids").list.eval(pl.element().index_of(f)).list.first()
        return pl.col("max_acts").list.get(idx, null_on_oob=True).fill_null(0.0).alias(f"a{f}")

    start = time.perf_counter()
    df.select([act(f) for f in feature_ids])
    return df.height / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "qscope-bench-store")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--sample", type=int, default=20_000, help="documents for the baselines")
    ap.add_argument("--repeat", type=int, default=2, help="score runs (the best is reported)")
    args = ap.parse_args()

    if args.rebuild or not (args.store / "manifest.json").exists() or FeatureStore(args.store).manifest.n_documents != args.docs:
        shutil.rmtree(args.store, ignore_errors=True)
        t0 = time.perf_counter()
        build_store(args.store, args.docs)
        print(f"built {args.docs:,}-document store in {time.perf_counter() - t0:.1f}s at {args.store}")
    store = FeatureStore(args.store)

    work = Path(tempfile.mkdtemp(prefix="qscope-bench-"))
    rules = work / "bench_rules.yaml"
    rules.write_text(RULES_YAML)
    best = cpu = None
    load_before = os.getloadavg()[0]
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        summary = run(ScoreOptions(), ScoreInputs([rules], args.store), work / "out", progress=False).stats
        wall, used = time.perf_counter() - t0, time.process_time() - c0
        if best is None or wall < best:
            best, cpu = wall, used
    scores = pl.read_parquet(work / "out" / "scores.parquet")
    n = summary["n_documents"]
    row_rate, disagreements = per_row_baseline(store, args.sample, scores)
    list_rate = list_eval_baseline(store, args.sample)
    result = {
        "documents": n, "rules": len(summary["rules"]), "score_wall_s": round(best, 2),
        "score_docs_per_s": round(n / best), "score_cpu_s": round(cpu, 2), "cpu_count": os.cpu_count(),
        "load_average_1m_before": round(load_before, 2), "per_row_python_docs_per_s": round(row_rate),
        "list_eval_docs_per_s": round(list_rate),
        "speedup_vs_per_row": round(n / best / row_rate, 1), "speedup_vs_list_eval": round(n / best / list_rate, 1),
        "per_row_disagreements_on_sample": disagreements,
        "hits": {k: v["hits"] for k, v in summary["rules"].items()},
    }
    print(f"score: {n:,} documents × {len(summary['rules'])} rules in {best:.2f}s = {n / best:,.0f} docs/s "
          f"(end to end: read Parquet, gather features, evaluate, write scores + summary); CPU time {cpu:.2f}s "
          f"on {os.cpu_count()} cores, 1-min load average {load_before:.1f} before the run")
    print(f"baseline per-row Python ({args.sample:,}-doc sample): {row_rate:,.0f} docs/s "
          f"→ ×{n / best / row_rate:.1f}; agreement with score: {disagreements} differing cells")
    print(f"baseline polars list.eval per feature ({args.sample:,}-doc sample, lookups only): {list_rate:,.0f} docs/s "
          f"→ ×{n / best / list_rate:.1f}")
    print(json.dumps(result))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Encode throughput: local executor vs the Ray executor with 1 and 2 encoder actors, on the same input.

A small random Qwen3 (built from a config, saved to disk) and a random Qwen-Scope SAE; a few hundred synthetic
documents cut into shards. Every run writes a full store; the stores are checked to be identical (same shard
sha256s). Ray runs on a local instance with fractional-CPU actors; a warm-up run (not counted) pays the worker
processes' first imports, so the table compares steady-state pipelines. Wall time includes model loading.

    .venv/bin/python benchmarks/bench_ray.py [--docs 400] [--hidden 256] [--d-sae 4096] [--cpus 2]
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

WORDS = ("the quick brown fox jumps over a lazy dog while you bake bread with flour water salt and yeast "
         "der schnelle braune Fuchs le renard brun what is twelve plus thirty please answer carefully").split()


def write_corpus(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with path.open("w") as fh:
        for i in range(n):
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(10, 60))))
            fh.write(json.dumps({"id": f"d{i}", "text": text, "lang": "en"}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=400)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--shard-rows", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray instance")
    args = ap.parse_args()

    import ray

    from qscope_data.encode import EncodeOptions, EncodeInputs, run as encode_run
    from qscope_data.executors.ray import RayExecutor, RayOptions
    from qscope_data.store import FeatureStore
    from qscope_data.testing import random_sae, save_tiny_model, write_sae

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        model = str(save_tiny_model(work / "model", "qwen3", hidden_size=args.hidden, num_layers=args.layers))
        layer = args.layers // 2
        sae = str(write_sae(random_sae(args.hidden, args.d_sae, args.k, layer=layer), work / "sae", "qwen-scope", layer=layer))
        corpus = work / "corpus.jsonl"
        write_corpus(corpus, args.docs)
        warm = work / "warm.jsonl"
        write_corpus(warm, 2 * args.shard_rows, seed=1)
        opts = EncodeOptions(batch_size=16, shard_rows=args.shard_rows, max_tokens=args.max_tokens)

        rows: list[dict] = []
        t = time.perf_counter()
        s = encode_run(opts, EncodeInputs(model, sae, corpus, [layer]), work / "local", progress=False).stats
        rows.append({"executor": "local", "actors": "-", "wall": time.perf_counter() - t, "summary": s})

        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        ray_init = time.perf_counter() - t
        encode_run(opts, EncodeInputs(model, sae, warm, [layer]), work / "warm", progress=False, executor=RayExecutor(RayOptions(workers=2, cpus_per_worker=0.5)))
        for workers in (1, 2):
            out = work / f"ray{workers}"
            t = time.perf_counter()
            s = encode_run(opts, EncodeInputs(model, sae, corpus, [layer]), out, progress=False, executor=RayExecutor(RayOptions(workers=workers, cpus_per_worker=0.5))).stats
            rows.append({"executor": "ray", "actors": str(workers), "wall": time.perf_counter() - t, "summary": s})
        ray.shutdown()

        ref = [x.sha256 for x in FeatureStore(work / "local").manifest.shards]
        same = all([x.sha256 for x in FeatureStore(work / f"ray{w}").manifest.shards] == ref for w in (1, 2))
        s0 = rows[0]["summary"]
        print(f"\nencode: {args.docs} docs, {s0.tokens:,} tokens, {s0.shards} shards of {args.shard_rows}; "
              f"Qwen3 d_model {args.hidden} × {args.layers} blocks (layer {layer}), SAE d_sae {args.d_sae} k {args.k}; "
              f"Ray local instance num_cpus={args.cpus} (init {ray_init:.1f} s, not counted); stores identical: {same}\n")
        print(f"{'executor':<9} {'actors':>6} {'wall s':>8} {'encode s':>9} {'docs/s':>8} {'tokens/s':>9} {'vs local':>9}")
        base = rows[0]["summary"].tokens / rows[0]["wall"]
        for r in rows:
            s = r["summary"]
            rate = s["tokens"] / r["wall"]
            print(f"{r['executor']:<9} {r['actors']:>6} {r['wall']:>8.2f} {s['encode_seconds']:>9.2f} "
                  f"{s['documents'] / r['wall']:>8.1f} {rate:>9,.0f} {rate / base:>8.2f}×")
        print("\n(wall: the whole call, model loading and, for Ray, actor start-up included; encode: the shard loop /"
              " Ray pipeline; rates over wall time)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

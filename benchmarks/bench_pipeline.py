"""Benchmark of the encode stage on CPU: what the pipeline costs on top of the model + SAE compute, whether memory
stays flat as the corpus grows, and what stopping the forward at block n saves.

    .venv/bin/python benchmarks/bench_pipeline.py            # ~2-4 minutes on 2 cores
    .venv/bin/python benchmarks/bench_pipeline.py --docs 100 # quicker

1. `encode.run` (reading, scanning, tokenising, batching, capture, encode, aggregation, Parquet + markers + manifest)
   against the compute floor: the same truncated forwards + SAE encodes over the same batches in a bare loop, on
   pre-tokenised input. Overhead = pipeline time (model loading excluded) / floor − 1, the median over paired repeats
   (after one untimed warm-up of each; within a pair the order alternates, so neither side always runs first on a
   warmer machine); target ≤ 10 % (issue #19). Best-vs-best is printed too.
2. Peak RSS of an encode of N and 10·N documents, each in a fresh subprocess (ru_maxrss).
3. Capture at block n vs a full forward with all hidden states: expected speed-up ≈ n_layers / (n + 1).

The model is a random Qwen3 (hidden 256, 8 layers) and the SAE random (d_sae 4096, k 32): small enough for CPU,
large enough that the forward and the encode dominate as they do on real models.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

HIDDEN, N_LAYERS, D_SAE, K, LAYER = 256, 8, 4096, 32, 3
WORDS = ("the quick brown fox jumps over a lazy dog while you bake bread with flour water salt and yeast "
         "der schnelle braune Fuchs le renard brun what is twelve plus thirty write a poem about the sea").split()


def make_corpus(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        for i in range(n):
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(20, 160))))
            fh.write(json.dumps({"id": f"d{i}", "text": text, "lang": "en", "label": int(i % 2)}) + "\n")
    return path


def build_artefacts(root: Path) -> tuple[Path, Path]:
    from qscope_data.testing import random_sae, save_tiny_model, write_sae

    model = save_tiny_model(root / "model", "qwen3", hidden_size=HIDDEN, num_layers=N_LAYERS)
    sae = write_sae(random_sae(HIDDEN, D_SAE, K, layer=LAYER), root / "sae", "qwen-scope", layer=LAYER)
    return model, sae


def options(**kw):
    from qscope_data.encode import EncodeOptions

    return EncodeOptions(batch_size=16, shard_rows=256, max_tokens=256, **kw)


def load_cpu_seconds(model: Path, sae: Path) -> float:
    """CPU time of loading the model and SAE (subtracted from the pipeline's CPU time)."""
    from qscope_data.capture import load_model
    from qscope_data.encode import load_saes

    c = time.process_time()
    load_model(str(model)), load_saes(str(sae), [LAYER])
    return time.process_time() - c


def time_pipeline(model: Path, sae: Path, corpus: Path, out: Path, load_cpu: float) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds) of encode.run, model loading excluded; documents; tokens."""
    from qscope_data.encode import EncodeInputs, run as encode_run

    c = time.process_time()
    s = encode_run(options(), EncodeInputs(str(model), str(sae), corpus, [LAYER]), out, progress=False, overwrite=True).stats
    return s["seconds"] - s["load_seconds"], time.process_time() - c - load_cpu, s["documents"], s["tokens"]


def time_floor(model: Path, sae: Path, corpus: Path) -> tuple[float, float]:
    """Same batches (same shards, same length-sorted grouping), only capture + encode, input pre-tokenised."""
    import torch

    from qscope_data.capture import capture, load_model
    from qscope_data.encode import iter_shards, load_saes, pad_batch, plan_batches, resolve_inputs
    from qscope_data.spans import tokenize_records

    opts = options()
    lm = load_model(str(model))
    sae_obj = load_saes(str(sae), [LAYER])[LAYER]
    batches = []
    for shard in iter_shards(resolve_inputs(corpus).paths, opts):
        docs = tokenize_records(lm.tokenizer, shard.records, max_tokens=opts.max_tokens)
        for batch in plan_batches([d.n_tokens for d in docs], opts.batch_size):
            batches.append(pad_batch(docs, batch, lm.tokenizer.pad_token_id))
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for ids, attn, agg in batches:
            hidden = capture(lm, ids, attn, [LAYER])[LAYER]
            sae_obj.encode(hidden[agg])
    return time.perf_counter() - start, time.process_time() - cpu


def capture_speedup(model: Path, layer: int, repeats: int = 5) -> float:
    import torch

    from qscope_data.capture import capture, load_model

    lm = load_model(str(model))
    rng = np.random.default_rng(0)
    ids = torch.as_tensor(rng.integers(3, len(lm.tokenizer), size=(16, 128)))
    attn = torch.ones_like(ids)

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    with torch.inference_mode():
        full = best(lambda: lm.model(input_ids=ids, attention_mask=attn, output_hidden_states=True))
        part = best(lambda: capture(lm, ids, attn, [layer]))
    return full / part


def rss_child(model: str, sae: str, docs: int, workdir: str) -> None:
    """Run in a fresh process: encode `docs` documents, print peak RSS (MiB) as JSON."""
    from qscope_data.encode import EncodeInputs, run as encode_run

    corpus = make_corpus(Path(workdir) / f"corpus-{docs}.jsonl", docs, seed=1)
    t = time.perf_counter()
    s = encode_run(options(), EncodeInputs(model, sae, corpus, [LAYER]), Path(workdir) / f"store-{docs}", progress=False, overwrite=True).stats
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"docs": s["documents"], "tokens": s["tokens"], "rss_mib": peak, "seconds": time.perf_counter() - t}))


def measure_rss(model: Path, sae: Path, docs: int, workdir: Path) -> dict:
    import torch

    out = subprocess.run([sys.executable, __file__, "--rss-child", str(docs), "--model", str(model), "--sae", str(sae),
                          "--workdir", str(workdir), "--threads", str(torch.get_num_threads())],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=300, help="documents in the throughput corpus (RSS: 1× and 10× of docs/3)")
    ap.add_argument("--repeats", type=int, default=5, help="paired repeats (the order alternates within a pair)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared machine OpenMP threads spin-wait for descheduled peers)")
    ap.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sae", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.rss_child is not None:
        rss_child(args.model, args.sae, args.rss_child, args.workdir)
        return

    with tempfile.TemporaryDirectory(prefix="qscope-bench-") as tmp:
        root = Path(tmp)
        model, sae = build_artefacts(root)
        corpus = make_corpus(root / "corpus.jsonl", args.docs)
        load_cpu = load_cpu_seconds(model, sae)
        pipe, floor = [], []
        time_pipeline(model, sae, corpus, root / "store", load_cpu), time_floor(model, sae, corpus)  # warm-up, untimed
        for r in range(args.repeats):  # paired, the order alternating: neither side always runs first
            first_pipe = r % 2 == 0
            if not first_pipe:
                floor.append(time_floor(model, sae, corpus))
            t, c, n_docs, n_tokens = time_pipeline(model, sae, corpus, root / "store", load_cpu)
            pipe.append((t, c))
            if first_pipe:
                floor.append(time_floor(model, sae, corpus))
        t_pipe, t_floor = min(p[0] for p in pipe), min(f[0] for f in floor)
        c_pipe, c_floor = min(p[1] for p in pipe), min(f[1] for f in floor)
        # The two runs of a pair see the same machine load, so the median of the paired ratios is the overhead;
        # best-vs-best mixes the quietest moments of two series.
        paired_wall = float(np.median([p[0] / f[0] for p, f in zip(pipe, floor)]))
        paired_cpu = float(np.median([p[1] / f[1] for p, f in zip(pipe, floor)]))
        small = max(args.docs // 3, 20)
        rss_1, rss_10 = measure_rss(model, sae, small, root), measure_rss(model, sae, 10 * small, root)
        speedups = {n: capture_speedup(model, n) for n in (1, 3)}

    rows = [
        ("encode pipeline (encode.run, load excluded)", f"{n_docs / t_pipe:,.1f} docs/s", f"{n_tokens / t_pipe:,.0f} tokens/s"),
        ("compute floor (capture + encode, same batches)", f"{n_docs / t_floor:,.1f} docs/s", f"{n_tokens / t_floor:,.0f} tokens/s"),
        (f"pipeline overhead, wall time (median of {len(pipe)} paired runs; target ≤ 10 %)",
         f"{100 * (paired_wall - 1):.1f} %", "ratios " + ", ".join(f"{p[0] / f[0]:.3f}" for p, f in zip(pipe, floor))),
        ("pipeline overhead, wall time, best vs best", f"{100 * (t_pipe / t_floor - 1):.1f} %",
         f"{t_pipe:.2f} s vs {t_floor:.2f} s"),
        (f"pipeline overhead, CPU time (median of {len(pipe)} paired runs)", f"{100 * (paired_cpu - 1):.1f} %",
         f"best {c_pipe:.2f} s vs {c_floor:.2f} s"),
        (f"peak RSS, {rss_1['docs']:,} docs", f"{rss_1['rss_mib']:,.0f} MiB", f"{rss_1['tokens']:,} tokens"),
        (f"peak RSS, {rss_10['docs']:,} docs (10×)", f"{rss_10['rss_mib']:,.0f} MiB",
         f"ratio {rss_10['rss_mib'] / rss_1['rss_mib']:.2f}"),
    ] + [
        (f"capture at block {n} vs full forward + all hidden states", f"{s:.2f}× faster",
         f"expected ≈ {N_LAYERS}/({n}+1) = {N_LAYERS / (n + 1):.2f}×") for n, s in speedups.items()
    ]
    print(f"\nqscope encode on CPU ({torch.get_num_threads()} threads, {os.cpu_count()} cores): random Qwen3 hidden {HIDDEN}, "
          f"{N_LAYERS} layers, SAE d_sae {D_SAE} k {K} at layer {LAYER}; {n_docs} docs, {n_tokens:,} tokens, batch 16\n")
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"| {'measure'.ljust(w0)} | {'value'.ljust(w1)} | detail |")
    print(f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|--------|")
    for a, b, c in rows:
        print(f"| {a.ljust(w0)} | {b.ljust(w1)} | {c} |")


if __name__ == "__main__":
    main()

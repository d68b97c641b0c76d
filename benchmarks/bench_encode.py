"""Benchmark the TopK SAE encode implementations side by side: one table, one run.

For each (d_model, d_sae, k) it times a plain matmul of the same size (the machine's measured rate: encode
costs 2 · d_model · d_sae FLOPs per token, so this is the physical limit), the usual encode that SAELens and
sparsify run (`topk(relu(x @ W_encᵀ + b), k)`, no exactness), and each qscope_kernels implementation. Columns:
tokens/s, speed relative to the dense path, peak extra memory of the call, achieved GFLOP/s and its fraction
of the matmul rate, and the share of rows whose ids equal the exact answer (the float64 reference contract).

    python benchmarks/bench_encode.py                         # CPU: 2,048 tokens; GPU: 16,384 (when CUDA is present)
    python benchmarks/bench_encode.py --tokens 256 --shapes 2048x32768x50
    python benchmarks/bench_encode.py --device cuda --dtype bfloat16

On the CPU each implementation is also run once more in a process of its own (`--rss-child`), whose peak
resident set over one steady-state call (Linux VmHWM, reset before the call) is the "own-process" column: what a
user sees, including MKL/OpenMP buffers the in-process figure can share between implementations.

Repeats are interleaved (matmul, usual, dense, blocked, …, then again) and the best time and the smallest
peak are kept (a first call also pays one-time buffers, e.g. MKL's packing workspace), so load from other
processes affects all implementations alike; on a shared machine read the ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from qscope_kernels import topk_encode, triton_available
from qscope_kernels.peak_memory import measure, track_large_allocations

DEFAULT_SHAPES = "2048x32768x50,4096x65536x100,5120x81920x100"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Row:
    shape: str
    impl: str
    seconds: float
    peak_bytes: int
    exact_rows: float | None
    own_process_bytes: int = -1


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in text.split(","):
        try:
            d_model, d_sae, k = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--shapes: {item!r} is not d_model x d_sae x k (e.g. 2048x32768x50)") from None
        shapes.append((d_model, d_sae, k))
    return shapes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def usual_encode(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What SAELens / sparsify do: materialise the pre-activations, ReLU, top-k. Not exact, no tie rule."""
    values, ids = torch.topk(torch.relu(torch.addmm(b, x, W.T)), k, dim=-1)
    return values.float(), ids


def candidates(device: torch.device, impls: list[str] | None) -> list[str]:
    found = ["usual", "dense", "blocked"] + (["triton"] if device.type == "cuda" and triton_available() else [])
    return [i for i in found if impls is None or i in impls]


def make_problem(d_model: int, d_sae: int, tokens: int, dtype: torch.dtype, device: torch.device):
    g = torch.Generator(device="cpu").manual_seed(0)
    W = (torch.randn(d_sae, d_model, generator=g) / d_model ** 0.5).to(device=device, dtype=dtype)
    b = (torch.randn(d_sae, generator=g) * 0.1).to(device=device, dtype=dtype)
    x = torch.randn(tokens, d_model, generator=g).to(device=device, dtype=dtype)
    return x, W, b


def make_call(impl: str, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, k: int) -> Callable[[], object]:
    if impl == "matmul":
        return lambda: x @ W.T
    if impl == "usual":
        return lambda: usual_encode(x, W, b, k)
    return lambda: topk_encode(x, W, b, k, impl=impl)


def rss_child(impl: str, shape: tuple[int, int, int], tokens: int, dtype: torch.dtype) -> int:
    """In this (fresh) process: VmHWM growth over one steady-state call of `impl` (after one warm-up call)."""
    d_model, d_sae, k = shape
    x, W, b = make_problem(d_model, d_sae, tokens, dtype, torch.device("cpu"))
    fn = make_call(impl, x, W, b, k)
    fn()
    _, extra = measure(fn, "cpu")
    return extra


def own_process_peak(impl: str, shape: tuple[int, int, int], tokens: int, dtype_name: str, threads: int) -> int:
    cmd = [sys.executable, __file__, "--rss-child", impl, "--shapes", "x".join(map(str, shape)),
           "--tokens", str(tokens), "--dtype", dtype_name, "--threads", str(threads)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"--rss-child {impl} failed: {run.stderr.strip()[-2000:]}")
    return int(json.loads(run.stdout.strip().splitlines()[-1])["peak_bytes"])


def run_shape(d_model: int, d_sae: int, k: int, tokens: int, dtype: torch.dtype, device: torch.device,
              impls: list[str], repeats: int, progress: Progress, task) -> list[Row]:
    x, W, b = make_problem(d_model, d_sae, tokens, dtype, device)
    label = f"{d_model}×{d_sae}, k={k}"
    calls = {name: make_call(name, x, W, b, k) for name in ["matmul", *impls]}
    if device.type == "cuda":  # compile / autotune outside the timed runs
        for fn in calls.values():
            fn()
        sync(device)
    best = {name: float("inf") for name in calls}
    peak = {name: -1 for name in calls}
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for _ in range(repeats):
        for name, fn in calls.items():
            progress.update(task, description=f"{label}: {name}")

            def timed(fn=fn):
                sync(device)
                t0 = time.perf_counter()
                out = fn()
                sync(device)
                return out, time.perf_counter() - t0

            (out, seconds), extra = measure(timed, device)
            best[name] = min(best[name], seconds)
            peak[name] = extra if peak[name] < 0 else min(peak[name], extra)  # the steady state
            if name != "matmul":
                outputs[name] = out
            del out
            progress.advance(task)
    exact_ids = outputs["dense"][1] if "dense" in outputs else None
    rows = []
    for name in calls:
        agree = None
        if exact_ids is not None and name != "matmul":
            agree = float((outputs[name][1] == exact_ids).all(dim=1).float().mean())
        rows.append(Row(label, name, best[name], peak[name], agree))
    return rows


def render(rows: list[Row], tokens: int, shapes: list[tuple[int, int, int]], header: str) -> str:
    lines = [header, "",
             "| shape (d_model×d_sae, k) | impl | tokens/s | vs usual | vs dense | peak extra MiB | own-process peak MiB "
             "| GFLOP/s | % of matmul | rows exact |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for d_model, d_sae, k in shapes:
        label = f"{d_model}×{d_sae}, k={k}"
        group = {r.impl: r for r in rows if r.shape == label}
        flops = 2.0 * tokens * d_model * d_sae
        rate = flops / group["matmul"].seconds
        dense, usual = group.get("dense"), group.get("usual")
        for r in group.values():
            speed = tokens / r.seconds
            rel = f"{dense.seconds / r.seconds:.2f}×" if dense and r.impl != "matmul" else "—"
            rel_usual = f"{usual.seconds / r.seconds:.2f}×" if usual and r.impl != "matmul" else "—"
            exact = f"{100 * r.exact_rows:.1f}%" if r.exact_rows is not None else "—"
            mem = f"{r.peak_bytes / 2**20:,.0f}" if r.peak_bytes >= 0 else "n/a"
            own = f"{r.own_process_bytes / 2**20:,.0f}" if r.own_process_bytes >= 0 else "—"
            lines.append(
                f"| {label} | {r.impl} | {speed:,.0f} | {rel_usual} | {rel} | {mem} | {own} | "
                f"{flops / r.seconds / 1e9:,.1f} | {100 * flops / r.seconds / rate:.0f}% | {exact} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=None, help="tokens per call (default 2,048 on CPU, 16,384 on GPU)")
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated d_model x d_sae x k")
    ap.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                    help="inputs and weights (auto: float32 on CPU, bfloat16 on GPU)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per implementation (best kept)")
    ap.add_argument("--impls", default=None, help="comma-separated subset of usual,dense,blocked,triton")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-own-process", action="store_true", help="skip the per-implementation RSS processes (CPU)")
    ap.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    tokens = args.tokens or (16384 if device.type == "cuda" else 2048)
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    repeats = args.repeats or (3 if device.type == "cuda" else 1)
    shapes = parse_shapes(args.shapes)
    impls = candidates(device, args.impls.split(",") if args.impls else None)
    track_large_allocations()
    if args.rss_child:
        print(json.dumps({"peak_bytes": rss_child(args.rss_child, shapes[0], tokens, dtype)}))
        return 0
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU"
    header = (f"TopK SAE encode, {tokens:,} tokens, {str(dtype).removeprefix('torch.')}, {where}, "
              f"{torch.get_num_threads()} torch threads, best of {repeats}")
    console = Console(stderr=True)
    rows: list[Row] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("encode", total=len(shapes) * (len(impls) + 1) * repeats)
        for d_model, d_sae, k in shapes:
            rows += run_shape(d_model, d_sae, k, tokens, dtype, device, impls, repeats, progress, task)
    if device.type == "cpu" and not args.no_own_process:
        for r in rows:
            shape = next(s for s in shapes if r.shape == f"{s[0]}×{s[1]}, k={s[2]}")
            console.print(f"own-process peak: {r.shape} {r.impl}")
            r.own_process_bytes = own_process_peak(r.impl, shape, tokens, str(dtype).removeprefix("torch."),
                                                   torch.get_num_threads())
    print(render(rows, tokens, shapes, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The encode kernels agree exactly with the float64 reference: ids equal, values to rtol 1e-5.

Covers random shapes (hypothesis), ties beyond k + margin, fewer than k positives, k = d_sae, N = 1 and 0,
non-contiguous and half-precision inputs, an input offset, the certificate (no fallback on generic data,
fallback on ties), the blocked path's memory bound, dispatch, and the Triton kernel under the interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qscope_kernels
from qscope_data.sae import reference_encode
from qscope_kernels import canonical, numba_cpu, resolve_impl, topk_encode
from qscope_kernels.blocked import tile_topk

# Small tiles so the blocked path runs many token and dictionary tiles and merges.
IMPL_KWARGS = {"dense": {}, "blocked": {"token_tile": 7, "dict_tile": 48}, "blocked-default": {}}


def encode(impl: str, *args, **kwargs):
    return topk_encode(*args, impl=impl.split("-")[0], **IMPL_KWARGS[impl], **kwargs)


def problem(n: int, d: int, s: int, seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(s, d, generator=g) / d ** 0.5).to(dtype)
    b = (torch.randn(s, generator=g) * 0.1).to(dtype)
    x = torch.randn(n, d, generator=g).to(dtype)
    return x, W, b


def tied_problem(n: int, d: int, distinct: int, s: int, seed: int = 0):
    """`distinct` (row, bias) pairs repeated over s features. Entries are small dyadic numbers, so every
    pre-activation is exact in fp32 and float64 whatever the summation order: the ties are exact everywhere
    (with general floats a float64 GEMM can round equal rows differently at different column positions)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, (n, d), generator=g).float()
    base = torch.randint(-2, 3, (distinct, d), generator=g).float() * 0.5
    base_b = torch.randint(-4, 5, (distinct,), generator=g).float() * 0.25
    pick = torch.randint(0, distinct, (s,), generator=g)
    return x, base[pick].contiguous(), base_b[pick].contiguous()


def check(values, ids, x, W, b, k, x_offset=None):
    xr = x.double() if x_offset is None else x.double() - x_offset.double()
    ref_v, ref_i = reference_encode(xr, W, b, k)
    assert values.dtype == torch.float32 and ids.dtype == torch.long
    assert values.shape == ids.shape == (x.shape[0], k)
    assert torch.equal(ids, ref_i)
    torch.testing.assert_close(values, ref_v, rtol=1e-5, atol=0)


@pytest.fixture
def fallbacks(monkeypatch):
    """Counts rows the certificate sends to the exact fallback (the real fallback still runs)."""
    count = [0]
    real = canonical.exact_rows

    def counting(x, *args, **kwargs):
        count[0] += x.shape[0]
        return real(x, *args, **kwargs)

    monkeypatch.setattr(canonical, "exact_rows", counting)
    return count


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 30), d=st.integers(1, 40), s=st.integers(1, 300), k_frac=st.floats(0, 1),
    seed=st.integers(0, 2**16), impl=st.sampled_from(["dense", "blocked"]),
)
def test_random_shapes_match_reference(n, d, s, k_frac, seed, impl):
    k = max(1, round(k_frac * min(s, 40)))
    x, W, b = problem(n, d, s, seed)
    check(*encode(impl, x, W, b, k), x, W, b, k)


@pytest.mark.parametrize("impl", ["dense", "blocked", "blocked-default"])
def test_generic_rows_are_certified_without_fallback(impl, fallbacks):
    x, W, b = problem(64, 96, 9000, seed=1)
    check(*encode(impl, x, W, b, 50), x, W, b, 50)
    assert fallbacks[0] == 0


@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_ties_beyond_candidates_fall_back_to_exact(impl, fallbacks):
    # 6 distinct (row, bias) pairs repeated over 240 features: every row has ≥ 40 exact ties > k + margin.
    x, W, b = tied_problem(12, 16, 6, 240, seed=2)
    values, ids = encode(impl, x, W, b, 20)
    check(values, ids, x, W, b, 20)
    assert fallbacks[0] > 0
    # Within a run of equal values, ids ascend.
    same = values[:, 1:] == values[:, :-1]
    assert bool((ids[:, 1:][same] > ids[:, :-1][same]).all())


@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_fewer_than_k_positive_pad_with_zero_and_minus_one(impl):
    x, W, b = problem(10, 12, 200, seed=4)
    b = b - 3.0  # a handful of pre-activations stay positive
    b[:3] = 100.0  # rows always have at least three
    values, ids = encode(impl, x, W, b, 30)
    check(values, ids, x, W, b, 30)
    assert bool((ids == -1).any()) and bool((values[ids == -1] == 0).all())
    values, ids = encode(impl, x, W, torch.full_like(b, -50.0), 30)  # nothing positive at all
    assert bool((ids == -1).all()) and bool((values == 0).all())


@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_k_equals_d_sae_and_single_token(impl):
    x, W, b = problem(1, 20, 37, seed=5)
    check(*encode(impl, x, W, b, 37), x, W, b, 37)
    check(*encode(impl, x, W, b, 1), x, W, b, 1)


@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_empty_batch(impl):
    x, W, b = problem(0, 20, 100)
    values, ids = encode(impl, x, W, b, 5)
    assert values.shape == ids.shape == (0, 5)


@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_non_contiguous_inputs(impl):
    _, W, b = problem(1, 24, 500, seed=6)
    g = torch.Generator().manual_seed(7)
    transposed = torch.randn(24, 33, generator=g).T  # column-major
    sliced = torch.randn(66, 48, generator=g)[::2, ::2]  # strided rows and columns
    for x in (transposed, sliced):
        assert not x.is_contiguous()
        check(*encode(impl, x, W, b, 16), x, W, b, 16)
    W_t = torch.randn(24, 500, generator=g).T  # a transposed weight view
    check(*encode(impl, transposed, W_t, b, 16), transposed, W_t, b, 16)


@pytest.mark.parametrize("impl", ["dense", "blocked"])
@pytest.mark.parametrize(
    "x_dtype,w_dtype",
    [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16), (torch.bfloat16, torch.float32),
     (torch.float32, torch.float16)],
)
def test_half_precision_inputs_and_weights(impl, x_dtype, w_dtype):
    x, W, b = problem(20, 64, 400, seed=8)
    x, W, b = x.to(x_dtype), W.to(w_dtype), b.to(w_dtype)
    check(*encode(impl, x, W, b, 25), x, W, b, 25)


@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_input_offset_is_subtracted_exactly(impl):
    x, W, b = problem(15, 32, 300, seed=9)
    offset = torch.randn(32, generator=torch.Generator().manual_seed(10)) * 3
    check(*encode(impl, x, W, b, 12, x_offset=offset), x, W, b, 12, x_offset=offset)
    xh = x.to(torch.bfloat16)
    check(*encode(impl, xh, W, b, 12, x_offset=offset), xh, W, b, 12, x_offset=offset)


def test_paths_return_identical_values():
    x, W, b = problem(40, 80, 3000, seed=11)
    dense = encode("dense", x, W, b, 32)
    for impl in ("blocked", "blocked-default"):
        other = encode(impl, x, W, b, 32)
        assert torch.equal(other[1], dense[1]) and torch.equal(other[0], dense[0])


@pytest.mark.parametrize("width,c", [(8192, 66), (4096, 116), (1024, 8)])
def test_grouped_tile_selection_equals_topk(width, c):
    tile = torch.randn(33, width, generator=torch.Generator().manual_seed(width))
    values, cols = tile_topk(tile, c)
    ref_v, ref_c = torch.topk(tile, c)
    assert torch.equal(values, ref_v) and torch.equal(cols, ref_c)
    tied = tile.round(decimals=1)  # many equal values: the values must still be the top-c
    values, cols = tile_topk(tied, c)
    assert torch.equal(values, torch.topk(tied, c).values)
    assert torch.equal(torch.gather(tied, 1, cols), values)


@pytest.mark.parametrize("c,width,tiles", [(66, 512, 5), (8, 33, 3), (5, 3, 4)])
def test_compiled_heap_merge_keeps_the_top_c_and_a_valid_ceiling(c, width, tiles):
    """The blocked path's compiled running top-C over several tiles equals topk over the whole row; with many
    ties the kept values are still the top-c values and every dropped value is ≤ the kept minimum (the ceiling)."""
    g = torch.Generator().manual_seed(c)
    for full in (torch.randn(9, width * tiles, generator=g), torch.randn(9, width * tiles, generator=g).round()):
        heap_v, heap_i = numba_cpu.new_heap(9, c, torch.float32)
        for t in range(tiles):
            numba_cpu.merge_tile(full[:, t * width:(t + 1) * width].contiguous(), t * width, heap_v, heap_i)
        kept, order = torch.sort(heap_v, dim=-1, descending=True)
        assert torch.equal(kept, torch.topk(full, c).values)
        assert torch.equal(torch.gather(full, 1, torch.gather(heap_i, 1, order)), kept)
        dropped = full.scatter(1, heap_i, float("-inf"))
        assert bool((dropped.max(dim=-1).values <= kept[:, -1]).all())


def test_compiled_rescore_equals_float64_definition():
    x, W, b = problem(12, 37, 200, seed=3)
    offset = torch.randn(37, generator=torch.Generator().manual_seed(4))
    ids = torch.randint(-1, 200, (12, 9), generator=torch.Generator().manual_seed(5))
    widths = torch.randint(1, 10, (12,), generator=torch.Generator().manual_seed(6))
    got = numba_cpu.rescore_rows(x, W, b, ids, widths, offset)
    full = torch.addmm(b.double(), x.double() - offset.double(), W.double().T)
    want = torch.gather(full, 1, ids.clamp_min(0))
    live = (ids >= 0) & (torch.arange(9) < widths.unsqueeze(1))
    torch.testing.assert_close(got[live], want[live], rtol=1e-13, atol=1e-13)
    assert bool(torch.isneginf(got[~live]).all())


def test_compiled_loops_leave_torch_thread_count_as_set():
    """Numba's OpenMP layer, started when the parallel loops load, reset the process's OpenMP thread count that torch
    reads: `torch.set_num_threads(1)` before the first encode became NUMBA_NUM_THREADS. A fresh process, since the
    layer starts once per process."""
    script = textwrap.dedent("""
        import json, torch
        torch.set_num_threads(1)
        seen = [torch.get_num_threads()]
        from qscope_kernels import numba_cpu, topk_encode
        seen.append(torch.get_num_threads())
        x, W, b = torch.randn(6, 16), torch.randn(64, 16), torch.randn(64)
        heap_v, heap_i = numba_cpu.new_heap(6, 8, torch.float32)
        numba_cpu.merge_tile(x @ W.T, 0, heap_v, heap_i)
        seen.append(torch.get_num_threads())
        numba_cpu.rescore_rows(x, W, b, heap_i, torch.full((6,), 8), None)
        topk_encode(x, W, b, 4, impl="blocked")
        seen.append(torch.get_num_threads())
        print(json.dumps(seen))
    """)
    env = {**os.environ, "NUMBA_NUM_THREADS": "3"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [1, 1, 1, 1]


def test_blocked_memory_is_a_fraction_of_dense_and_flat_in_d_sae():
    script = textwrap.dedent("""
        import json, torch
        from qscope_kernels import topk_encode
        from qscope_kernels.peak_memory import measure, track_large_allocations
        track_large_allocations()
        torch.manual_seed(0)
        out = {}
        x = torch.randn(1024, 128)  # the issue's regime: token tiles full, so scratch is a fixed fraction of dense
        for s in (16384, 131072):
            W, b = torch.randn(s, 128) / 128 ** 0.5, torch.randn(s) * 0.1
            for impl in ("dense", "blocked"):
                topk_encode(x, W, b, 50, impl=impl)  # steady state: MKL keeps its packing buffers after a first call
                _, peak = measure(lambda: topk_encode(x, W, b, 50, impl=impl))
                out[f"{impl}-{s}"] = peak
        print(json.dumps(out))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    peak = json.loads(run.stdout.strip().splitlines()[-1])
    mib = 1 << 20
    assert peak["dense-131072"] >= 0.95 * 1024 * 131072 * 4  # dense holds the [N, d_sae] fp32 block (sampling misses a few pages)
    assert peak["blocked-131072"] <= peak["dense-131072"] / 4
    # Dense grows 8× with the dictionary; blocked stays within its scratch (the allocator sometimes keeps a second
    # scratch-sized block alive, so allow up to 2× of the small dictionary's reading, not 8×).
    assert peak["dense-131072"] >= 7 * peak["dense-16384"]
    assert peak["blocked-131072"] <= 2.1 * peak["blocked-16384"] + 4 * mib


def test_dispatch_and_argument_errors():
    x, W, b = problem(3, 8, 50)
    assert resolve_impl("auto", x) == "blocked"
    assert resolve_impl("dense", x) == "dense"
    with pytest.raises(ValueError, match="unknown encode impl"):
        topk_encode(x, W, b, 5, impl="fast")
    with pytest.raises(ValueError, match="k must be"):
        topk_encode(x, W, b, 51)
    with pytest.raises(ValueError, match="shapes do not fit"):
        topk_encode(x[:, :4], W, b, 5)
    assert qscope_kernels.__name__ == "qscope_kernels"


def test_repository_root_does_not_shadow_the_hub_kernels_package():
    """transformers ≥ 5.25 imports Hugging Face's ``kernels`` package from every model module; run from the
    repository root (``python -m pytest``, ``python -c``) the top-level ``kernels/`` folder must not be that
    import name, or every model import fails."""
    root = Path(__file__).resolve().parents[1]
    code = "import kernels, transformers.activations, qscope_kernels; print(kernels.__file__ or '')"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not Path(out.stdout.strip()).is_relative_to(root / "kernels")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"), reason="interpreter mode is on")
@pytest.mark.skipif(not qscope_kernels.triton_available(), reason="triton is not installed")
def test_triton_on_cpu_without_interpreter_is_a_clear_error():
    x, W, b = problem(3, 8, 50)
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        topk_encode(x, W, b, 5, impl="triton")


TRITON_SCRIPT = textwrap.dedent("""
    import os
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    import json, torch
    from qscope_data.sae import SparseAutoencoder, reference_encode
    from qscope_kernels import topk_encode

    def case(name, x, W, b, k, offset=None, **blocks):
        blocks = {"block_m": 16, "block_n": 32, "block_k": 16, "group_m": 2, **blocks}
        v, i = topk_encode(x, W, b, k, impl="triton", x_offset=offset, **blocks)
        xr = x.double() if offset is None else x.double() - offset.double()
        rv, ri = reference_encode(xr, W, b, k)
        ok = v.shape == (x.shape[0], k) and torch.equal(i, ri) and torch.allclose(v, rv, rtol=1e-5, atol=0)
        return name, bool(ok)

    g = torch.Generator().manual_seed(0)
    def problem(n, d, s, dtype=torch.float32):
        return (torch.randn(n, d, generator=g).to(dtype), (torch.randn(s, d, generator=g) / d ** 0.5).to(dtype),
                (torch.randn(s, generator=g) * 0.1).to(dtype))

    results = []
    results.append(case("non-pow2 d_sae, k, d_model", *problem(9, 24, 203), 7))
    results.append(case("grouped launch: 3 token blocks x 7 tiles", *problem(37, 20, 210), 6, c_tile=3))
    results.append(case("N=1, k=d_sae", *problem(1, 20, 37), 37))
    results.append(case("several tiles, c_tile < C", *problem(5, 16, 300), 20, c_tile=4))
    x, W, b = problem(6, 40, 150, torch.bfloat16)
    results.append(case("bf16", x, W, b, 11))
    x, W, b = problem(6, 40, 150, torch.float16)
    results.append(case("fp16", x, W, b, 11))
    x, W, b = problem(6, 40, 150)
    results.append(case("bf16 x, fp32 W", x.to(torch.bfloat16), W, b, 11))
    results.append(case("non-contiguous x", torch.randn(40, 7, generator=g).T, W, b, 9))
    results.append(case("input offset", x, W, b, 9, offset=torch.randn(40, generator=g)))
    results.append(case("fewer than k positive", x, W, b - 2.5, 30))
    # Dyadic entries: every pre-activation is exact, so the 4 distinct values tie exactly in any arithmetic.
    base, bb = torch.randint(-2, 3, (4, 40), generator=g) * 0.5, torch.randint(-4, 5, (4,), generator=g) * 0.25
    pick = torch.randint(0, 4, (90,), generator=g)
    xi = torch.randint(-3, 4, (6, 40), generator=g).float()
    results.append(case("ties beyond k + margin", xi, base[pick].contiguous(), bb[pick].contiguous(), 10))
    sae = SparseAutoencoder(W, b, W.T.clone(), torch.randn(40, generator=g), k=9, input_bias=True)
    v, i = sae.encode(x, impl="triton")
    rv, ri = sae.encode(x, impl="reference")
    results.append(("SparseAutoencoder.encode(impl='triton')", bool(torch.equal(i, ri) and torch.allclose(v, rv, rtol=1e-5, atol=0))))
    # The GPU finish's re-score kernel against the torch re-score (both float64).
    from qscope_kernels.canonical import rescore
    from qscope_kernels.triton_rescore import rescore_triton
    x, W, b = problem(7, 45, 130, torch.bfloat16)
    ids = torch.randint(-1, 130, (7, 21), generator=g)
    offset = torch.randn(45, generator=g)
    for off in (None, offset):
        got, want = rescore_triton(x, W, b, ids, off), rescore(x, W, b, ids, x_offset=off)
        results.append((f"rescore kernel, offset={off is not None}",
                        bool(torch.equal(got.isinf(), want.isinf()) and torch.allclose(got, want, rtol=1e-12, atol=1e-12))))
    print(json.dumps(results))
""")


@pytest.mark.skipif(not qscope_kernels.triton_available(), reason="triton is not installed")
def test_triton_kernel_matches_reference_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    failed = [name for name, ok in results if not ok]
    assert not failed, failed
    assert len(results) == 14


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 exists only on CUDA")
def test_tf32_is_off_inside_the_exact_kernels_and_restored_after():
    from qscope_kernels import topk_encode

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 256, generator=g).cuda()
        W = torch.randn(4096, 256, generator=g).cuda()
        b = torch.zeros(4096).cuda()
        v_cpu, i_cpu = topk_encode(x.cpu(), W.cpu(), b.cpu(), 16, impl="dense")  # no TF32 on a CPU
        for impl in ("dense", "blocked", "auto"):
            v, i = topk_encode(x, W, b, 16, impl=impl)
            assert torch.equal(i.cpu(), i_cpu) and torch.equal(v.cpu(), v_cpu), impl
        assert torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "high"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")


def _precision_state() -> dict:
    """Both views PyTorch keeps of the fp32 matmul precision (a legacy read raises when the two are mixed)."""
    from qscope_kernels.precision import matmul_precision

    state: dict = {"leaves": matmul_precision()}
    for name, read in (("allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32),
                       ("precision", torch.get_float32_matmul_precision)):
        try:
            state[name] = read()
        except RuntimeError:
            state[name] = "mixed"
    return state


class _MatmulPrecisionSeen(torch.overrides.TorchFunctionMode):
    """Records the precision state at every matmul the kernels call (a real observation, nothing replaced)."""

    def __init__(self):
        super().__init__()
        self.seen: list[dict] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.addmm, torch.mm, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__):
            self.seen.append(_precision_state())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("caller", [
    "torch.backends.cuda.matmul.allow_tf32 = True",                 # the legacy switch
    "torch.set_float32_matmul_precision('high')",                    # TF32 on CUDA and oneDNN
    "torch.set_float32_matmul_precision('medium')",                  # bf16 on oneDNN CPUs
    "torch.backends.cuda.matmul.fp32_precision = 'tf32'",            # the per-backend API (legacy view then mixed)
    "torch.backends.mkldnn.matmul.fp32_precision = 'bf16'",
])
@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_exact_kernels_force_ieee_fp32_matmuls_and_restore_the_callers_setting(caller, impl):
    """On every device (oneDNN on a CPU honours the same setting): the matmuls inside the exact encode run with
    IEEE fp32 in both views of the setting, and the caller's exact state — mixed or not — is back afterwards, also
    when the encode raises."""
    x, W, b = problem(40, 32, 300, seed=3)
    saved = _precision_state()
    try:
        exec(caller, {"torch": torch})
        before = _precision_state()
        assert before["leaves"] != ("ieee", "ieee")
        with _MatmulPrecisionSeen() as mode:
            v, i = encode(impl, x, W, b, 8)
        assert mode.seen and all(s == {"leaves": ("ieee", "ieee"), "allow_tf32": False, "precision": "highest"}
                                 for s in mode.seen), mode.seen
        assert _precision_state() == before
        ref_v, ref_i = reference_encode(x, W, b, 8)
        assert torch.equal(i, ref_i)
        with pytest.raises(RuntimeError), qscope_kernels.ieee_fp32():
            torch.addmm(b, x, W[:, :5].T)  # a kernel failing inside the guard
        assert _precision_state() == before
    finally:
        torch.set_float32_matmul_precision(saved["precision"] if saved["precision"] != "mixed" else "highest")
        for backend, value in zip((torch.backends.cuda.matmul, torch.backends.mkldnn.matmul), saved["leaves"]):
            backend.fp32_precision = value

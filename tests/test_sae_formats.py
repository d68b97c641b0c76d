"""SAE loading: every supported format, name parsing, hub resolution from a cache, and refusal of bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qscope_data.errors import SAEFormatError
from qscope_data.sae import load_sae, parse_qwen_scope_name, reference_encode
from qscope_data.testing import random_sae, write_sae

QSCOPE = [sys.executable, "-m", "qscope_data"]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*QSCOPE, *map(str, args)], capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_parse_qwen_scope_name():
    assert parse_qwen_scope_name("Qwen/SAE-Res-Qwen3-8B-Base-W64K-L0_50") == {"model": "Qwen3-8B-Base", "d_sae": 65536, "k": 50}
    assert parse_qwen_scope_name("SAE-Res-Qwen3.5-27B-W80K-L0_100")["d_sae"] == 81920
    assert parse_qwen_scope_name("something-else") is None


def test_inspect_reports_shapes_of_a_qwen_scope_folder(tmp_path):
    sae = random_sae(64, 1024, 16, layer=2)
    folder = write_sae(sae, tmp_path, "qwen-scope")
    assert folder.name == "SAE-Res-Tiny-W1K-L0_16"
    out = run_cli("sae", "inspect", folder, "--layer", "2")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert (info["d_model"], info["d_sae"], info["k"], info["layer"], info["format"]) == (64, 1024, 16, 2, "qwen-scope")
    assert info["dtype"] == "float32"


# Qwen-Scope never subtracts b_dec before encoding; sparsify always does; SAELens and ours say so in their config.
@pytest.mark.parametrize(
    "fmt, input_bias",
    [("qwen-scope", False), ("saelens", False), ("saelens", True), ("sparsify", True), ("qscope", False), ("qscope", True)],
)
def test_every_format_encodes_identically(tmp_path, fmt, input_bias):
    sae = random_sae(32, 2048, 12, layer=3, seed=1)
    sae.input_bias = input_bias
    where = write_sae(sae, tmp_path, fmt, layer=3)
    loaded = load_sae(where, 3)
    assert loaded.format == fmt and loaded.layer == 3 and loaded.k == 12
    x = torch.randn(40, 32, generator=torch.Generator().manual_seed(0))
    want = reference_encode(sae.encoder_input(x.double()), sae.W_enc, sae.b_enc, 12)
    for impl in ("reference", "auto"):
        values, ids = loaded.encode(x, impl=impl)
        assert torch.equal(ids, want[1])
        torch.testing.assert_close(values, want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loaded.W_dec, sae.W_dec)


def test_convert_writes_canonical_and_round_trips(tmp_path):
    sae = random_sae(32, 1024, 8, layer=1)
    src = write_sae(sae, tmp_path / "src", "qwen-scope")
    out = run_cli("sae", "convert", src, "--layer", "1", "--out", tmp_path / "canon", "--dtype", "bf16")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "canon").iterdir()) == ["sae.json", "sae.safetensors"]
    back = load_sae(tmp_path / "canon")
    assert back.format == "qscope" and back.dtype == torch.bfloat16 and back.k == 8 and back.layer == 1
    torch.testing.assert_close(back.W_enc.float(), sae.W_enc.bfloat16().float())


def test_hub_repo_id_resolves_through_the_local_cache_offline(tmp_path, monkeypatch):
    """The real huggingface_hub code path, fed from a cache laid out as the hub client writes it."""
    sae = random_sae(16, 1024, 4, layer=0)
    repo = tmp_path / "cache" / "models--Qwen--SAE-Res-Tiny-W1K-L0_4"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    torch.save({n: getattr(sae, n) for n in ("W_enc", "W_dec", "b_enc", "b_dec")}, snap / "layer0.sae.pt")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_sae("Qwen/SAE-Res-Tiny-W1K-L0_4", 0, cache_dir=str(tmp_path / "cache"))
    assert (loaded.d_sae, loaded.k, loaded.layer) == (1024, 4, 0)
    with pytest.raises(SAEFormatError, match="Qwen/SAE-Res-Missing-W1K-L0_4"):
        load_sae("Qwen/SAE-Res-Missing-W1K-L0_4", 0, cache_dir=str(tmp_path / "cache"))


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "SAE-Res-Evil-W1K-L0_4"
    folder.mkdir()
    torch.save({"W_enc": torch.zeros(1024, 8), "payload": _Exploit(str(marker))}, folder / "layer0.sae.pt")
    out = run_cli("sae", "inspect", folder, "--layer", "0")
    assert out.returncode == 2
    assert not marker.exists()
    assert "layer0.sae.pt" in out.stderr and "weights_only" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def _write_pt(folder: Path, layer: int, tensors: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, folder / f"layer{layer}.sae.pt")
    return folder


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.pop("b_dec"), "missing key(s) b_dec"),
        (lambda t: t.update(extra=torch.zeros(1)), "unexpected key(s) extra"),
        (lambda t: t.update(W_dec=torch.zeros(16, 1000)), "W_dec has shape (16, 1000)"),
        (lambda t: t.update(b_enc=torch.zeros(7)), "b_enc has shape (7,)"),
    ],
)
def test_bad_tensor_dicts_name_the_file_and_problem(tmp_path, mutate, message):
    sae = random_sae(16, 1024, 4)
    tensors = {n: getattr(sae, n) for n in ("W_enc", "W_dec", "b_enc", "b_dec")}
    mutate(tensors)
    folder = _write_pt(tmp_path / "SAE-Res-X-W1K-L0_4", 0, tensors)
    out = run_cli("sae", "inspect", folder, "--layer", "0")
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "layer0.sae.pt" in out.stderr and "Traceback" not in out.stderr


def test_k_larger_than_d_sae_and_missing_layer_and_unknown_format(tmp_path):
    sae = random_sae(16, 1024, 4)
    tensors = {n: getattr(sae, n) for n in ("W_enc", "W_dec", "b_enc", "b_dec")}
    folder = _write_pt(tmp_path / "SAE-Res-X-W1K-L0_4", 0, tensors)
    out = run_cli("sae", "inspect", folder, "--layer", "0", "--k", "5000")
    assert out.returncode == 2 and "k = 5000" in out.stderr
    out = run_cli("sae", "inspect", folder, "--layer", "7")
    assert out.returncode == 2 and "no layer7.sae.pt" in out.stderr and "layers here: 0" in out.stderr
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "weights.bin").write_bytes(b"\0")
    out = run_cli("sae", "inspect", tmp_path / "odd")
    assert out.returncode == 2 and "unknown SAE format" in out.stderr


def test_debug_flag_shows_the_traceback(tmp_path):
    out = run_cli("--debug", "sae", "inspect", tmp_path / "nothing")
    assert out.returncode != 0 and "Traceback" in out.stderr


def _multi_layer_repo(root: Path, fmt: str, layers=(3, 12, 30)) -> dict[int, object]:
    """A folder laid out like a multi-layer hub repo of `fmt` (one SAE per layer), with a README and a config."""
    from qscope_data.sae import save_canonical

    saes = {n: random_sae(16, 1024, 4, layer=n, seed=n) for n in layers}
    root.mkdir(parents=True)
    (root / "README.md").write_text("# SAEs\n")
    for n, sae in saes.items():
        if fmt == "qwen-scope":
            torch.save({t: getattr(sae, t) for t in ("W_enc", "W_dec", "b_enc", "b_dec")}, root / f"layer{n}.sae.pt")
        elif fmt == "saelens":
            write_sae(sae, root / f"blocks.{n}.hook_resid_post", "saelens")
        elif fmt == "sparsify":
            write_sae(sae, root, "sparsify", layer=n)
        else:
            save_canonical(sae, root / f"layer{n}")
    return saes


@pytest.mark.parametrize("fmt", ["qwen-scope", "saelens", "sparsify", "qscope"])
def test_a_hub_download_of_one_layer_fetches_only_that_layers_weights(tmp_path, fmt):
    """What `snapshot_download(allow_patterns=hub_patterns(layer))` keeps of a multi-layer repo, selected by
    huggingface_hub's own filter (the hub itself is unreachable here): the layer's weights and small metadata, no
    other layer's weights — and what it keeps loads as that layer."""
    import shutil

    from huggingface_hub.utils import filter_repo_objects

    from qscope_data.sae.formats import hub_patterns

    repo = tmp_path / "repo"
    saes = _multi_layer_repo(repo, fmt)
    files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    kept = list(filter_repo_objects(files, allow_patterns=hub_patterns(12)))
    weights = [f for f in kept if not f.endswith((".json", ".md"))]
    assert weights and all("12" in f for f in weights), weights
    assert sum(os.path.getsize(repo / f) for f in kept) < sum(os.path.getsize(repo / f) for f in files) / 2
    fetched = tmp_path / "snapshot"
    for f in kept:
        (fetched / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / f, fetched / f)
    sae = load_sae(fetched, 12, k=4)  # a hub repo names k in its id; the copy here does not
    assert sae.layer == 12 and torch.equal(sae.W_enc, saes[12].W_enc)
    every = list(filter_repo_objects(files, allow_patterns=hub_patterns(None)))  # no layer: a single-SAE repo
    assert set(every) == set(files)

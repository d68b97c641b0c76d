"""The embedded default's reader: Gemma-3-270M converted once from its PyPI GGUF, and read like any Qwen model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from qscope_data.demo import gemma as gemma_mod


def test_conversion_record_catches_a_truncated_or_altered_file(tmp_path, gemma_dir):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "model.safetensors").write_bytes(b"0123456789" * 100)
    assert gemma_mod.check_converted(folder) is not None  # no record yet: half-written
    gemma_mod.write_record(folder)
    assert gemma_mod.check_converted(folder) is None
    (folder / "model.safetensors").write_bytes(b"0123456789" * 99)
    assert "truncated" in gemma_mod.check_converted(folder)
    (folder / "model.safetensors").write_bytes(b"9123456789" + b"0123456789" * 99)  # same size, other bytes
    assert gemma_mod.check_converted(folder) is None
    assert "sha256" in gemma_mod.check_converted(folder, verify=True)


def test_cached_conversion_is_reused_and_verifies(gemma_dir):
    assert gemma_dir == gemma_mod.converted_dir()
    assert gemma_mod.check_converted(gemma_dir, verify=False) is None
    marker = json.loads((gemma_dir / gemma_mod.MARKER).read_text())
    assert marker["gguf_sha256"] == gemma_mod.gguf_sha256() and "Gemma Terms of Use" in marker["licence"]
    assert (gemma_dir / "GEMMA_TERMS.html").exists()
    assert gemma_mod.ensure_gemma(log=lambda m: pytest.fail(f"reconverted: {m}")) == gemma_dir


def test_a_corrupt_cache_is_rebuilt(tmp_path, gemma_dir, monkeypatch):
    """A cache whose weights were cut short (a killed copy, a full disk) is detected and converted again — into the
    same weights, with the GGUF parsed once for config, tokenizer and weights (it was parsed three times: 60 s)."""
    import gguf

    parses: list[str] = []
    real_reader = gguf.GGUFReader
    monkeypatch.setattr(gguf, "GGUFReader", lambda path, *a, **kw: parses.append(str(path)) or real_reader(path, *a, **kw))
    spy = gguf.GGUFReader
    target = gemma_mod.converted_dir(tmp_path)
    shutil.copytree(gemma_dir, target, ignore=shutil.ignore_patterns("model.safetensors"))
    (target / "model.safetensors").write_bytes(b"\0" * 1024)
    messages: list[str] = []
    rebuilt = gemma_mod.ensure_gemma(root=tmp_path, log=messages.append)
    assert rebuilt == target and gemma_mod.check_converted(target, verify=True) is None
    assert any("rebuilding" in m for m in messages)
    assert not list(target.parent.glob(".*.tmp-*"))  # the work folder is gone
    assert len(parses) == 1 and gguf.GGUFReader is spy  # parsed once; what was there before is put back
    files = {name: json.loads((d / gemma_mod.MARKER).read_text())["files"]["model.safetensors"] for name, d in
             (("rebuilt", target), ("cached", gemma_dir))}
    assert files["rebuilt"] == files["cached"]


def test_capture_reads_the_output_of_block_n_as_for_qwen(gemma):
    from qscope_data.capture import capture

    assert gemma.architecture == "gemma3_text" and gemma.n_layers == 18 and gemma.d_model == 640
    assert gemma.blocks_path == "model.layers"
    enc = gemma.tokenizer(["北京是中国的首都。", "The capital of France is Paris."], padding=True, return_tensors="pt")
    got = capture(gemma, enc["input_ids"], enc["attention_mask"], [4, 9])
    with torch.inference_mode():
        hidden = gemma.model(**enc, output_hidden_states=True).hidden_states
    mask = enc["attention_mask"].bool()
    for n in (4, 9):
        torch.testing.assert_close(got[n][mask], hidden[n + 1][mask])


def test_auto_dtype_is_float32_on_a_cpu_without_fast_bf16(gemma_dir):
    from qscope_data.capture import load_model
    from qscope_data.torch_dtypes import cpu_has_fast_bf16

    assert json.loads((Path(gemma_dir) / "config.json").read_text()).get("dtype", "bfloat16") == "bfloat16"
    lm = load_model(str(gemma_dir))
    expected = "bfloat16" if cpu_has_fast_bf16() else "float32"
    assert lm.describe()["dtype"] == expected

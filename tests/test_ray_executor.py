"""The Ray executor writes the same store as the local executor: same shard files (names, rows, sha256), same rows,
same rejects; a rerun of a finished Ray store does nothing and an interrupted one resumes only its missing shards.

Real Ray (a local 2-CPU instance, fractional-CPU actors), a tiny random Qwen3 saved to disk, random Qwen-Scope SAEs.
"""

from __future__ import annotations

import numpy as np
import pytest

from qscope_data.cli import main
from qscope_data.encode import EncodeOptions, EncodeInputs, run as encode_run
from qscope_data.errors import UsageError
from qscope_data.store import FeatureStore

ray = pytest.importorskip("ray")

WORDS = "the quick brown fox jumps over a lazy dog bake bread flour water salt yeast der Fuchs le renard 你好".split()


def corpus(write_jsonl, n: int = 30):
    rng = np.random.default_rng(7)
    rows: list = [{"id": f"d{i}", "text": " ".join(rng.choice(WORDS, size=int(rng.integers(2, 20)))),
                   "lang": ["en", "de", "zh"][i % 3], "label": i % 2} for i in range(n)]
    rows.insert(11, "{not json")  # a malformed line: rejected, the run goes on
    rows.insert(20, {"id": "empty", "text": ""})  # tokenises to no tokens: rejected inside its shard
    return write_jsonl(rows)


def shard_table(store: FeatureStore) -> list[tuple[str, int, int, str]]:
    return [(s.name, s.rows, s.bytes, s.sha256) for s in store.manifest.shards]


def test_ray_store_equals_local_store_and_resumes(local_ray, tiny_model_dir, sae_dir, write_jsonl, tmp_path, capsys):
    from qscope_data.executors.ray import RayExecutor, RayOptions

    model, saes = str(tiny_model_dir("qwen3")), str(sae_dir(d_model=64, layers=(1, 2)))
    inp = corpus(write_jsonl)
    opts = EncodeOptions(batch_size=4, shard_rows=8, max_tokens=24)

    local = encode_run(opts, EncodeInputs(model, saes, inp, [1, 2]), tmp_path / "local", progress=False).stats
    main(["encode", "--model", model, "--sae", saes, "--layer", "1", "--layer", "2", "--input", str(inp),
          "--out", str(tmp_path / "ray"), "--batch-size", "4", "--shard-rows", "8", "--max-tokens", "24",
          "--executor", "ray", "--workers", "2", "--no-progress"])
    assert "encoded 30 documents" in capsys.readouterr().out
    assert local["shards"] == 4 and (local["documents"], local["rejected"]) == (30, 2)

    a, b = FeatureStore(tmp_path / "local"), FeatureStore(tmp_path / "ray")
    assert shard_table(a) == shard_table(b)  # same files, byte for byte
    for layer in (1, 2):
        assert a.read(layer).sort("doc_id").equals(b.read(layer).sort("doc_id"))
    ma, mb = a.manifest, b.manifest
    assert (ma.model, ma.saes, ma.options, ma.inputs, ma.stats) == (mb.model, mb.saes, mb.options, mb.inputs, mb.stats)
    assert a.rejects() == b.rejects() and [r["line"] for r in b.rejects()] == [12, 21]
    assert not (tmp_path / "ray" / "_progress" / "scratch").exists()  # staged shards are cleaned up

    # A finished store: nothing to do, nothing started.
    again = encode_run(opts, EncodeInputs(model, saes, inp, [1, 2]), tmp_path / "ray", progress=False, executor=RayExecutor(RayOptions(workers=2))).stats
    assert again["state"] == "finished"

    # Interrupted after shard 2 was written: only shards 2 and 3 are redone, and the result is the same store.
    (tmp_path / "ray" / "manifest.json").unlink()
    for i in (2, 3):
        (tmp_path / "ray" / "_progress" / f"part-{i:05d}.json").unlink()
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").glob("layer*/part-0000[01].parquet")}
    resumed = encode_run(opts, EncodeInputs(model, saes, inp, [1, 2]), tmp_path / "ray", progress=False, executor=RayExecutor(RayOptions(workers=1, cpus_per_worker=0.5))).stats
    assert (resumed["state"], resumed["shards_skipped"], resumed["documents_encoded"]) == ("resume", 2, 14)
    assert shard_table(FeatureStore(tmp_path / "ray")) == shard_table(a)
    assert before == {p: p.stat().st_mtime_ns for p in before}  # finished shards untouched


def test_ray_executor_refuses_bad_pairs_before_writing(local_ray, tiny_model_dir, sae_dir, write_jsonl, tmp_path):
    from qscope_data.executors.ray import RayExecutor, RayOptions

    model, inp = str(tiny_model_dir("qwen3")), corpus(write_jsonl, n=4)
    wide = str(sae_dir(d_model=32, layers=(1,)))
    with pytest.raises(UsageError, match="d_model 32.*hidden size 64"):
        encode_run(EncodeOptions(), EncodeInputs(model, wide, inp, [1]), tmp_path / "out", progress=False, executor=RayExecutor())
    with pytest.raises(UsageError, match="beyond the model's depth"):
        encode_run(EncodeOptions(), EncodeInputs(model, str(sae_dir(d_model=64, layers=(9,))), inp, [9]), tmp_path / "out", progress=False, executor=RayExecutor())
    with pytest.raises(UsageError, match="gpus-per-worker"):
        encode_run(EncodeOptions(device="cuda"), EncodeInputs(model, wide, inp, [1]), tmp_path / "out", progress=False, executor=RayExecutor(RayOptions(gpus_per_worker=0)))
    assert not (tmp_path / "out").exists()



@pytest.mark.parametrize("flags, message", [
    (["--executor", "spark"], "--executor 'spark': expected local or ray"),
    (["--executor", "ray", "--workers", "0"], "--workers"),
])
def test_encode_cli_refuses_bad_executor_flags(tiny_model_dir, sae_dir, write_jsonl, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        main(["encode", "--model", str(tiny_model_dir("qwen3")), "--sae", str(sae_dir(d_model=64, layers=(1,))),
              "--input", str(corpus(write_jsonl, n=3)), "--out", str(tmp_path / "out"), *flags])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _without_chat_template(model_dir, dest):
    """A copy of a saved model whose tokenizer carries no chat template (like a base model's)."""
    import json
    import shutil

    shutil.copytree(model_dir, dest)
    (dest / "chat_template.jinja").unlink(missing_ok=True)
    cfg_path = dest / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    return dest


def test_template_less_chat_corpus_gives_byte_identical_stores(local_ray, tiny_model_dir, sae_dir, write_jsonl, tmp_path):
    """Both executors tokenise through one loader (fallback chat template included): conversations are encoded on
    Ray exactly as locally, not rejected."""
    from transformers import AutoTokenizer

    from qscope_data.executors.ray import RayExecutor, RayOptions

    model = _without_chat_template(tiny_model_dir("qwen3"), tmp_path / "base-model")
    assert not AutoTokenizer.from_pretrained(model).chat_template
    saes = str(sae_dir(d_model=64, layers=(1,)))
    rows = [{"id": f"c{i}", "messages": [{"role": "user", "content": " ".join(WORDS[i:i + 5])},
                                         {"role": "assistant", "content": " ".join(WORDS[i + 2:i + 9])}]}
            for i in range(10)]
    inp = write_jsonl(rows)
    opts = EncodeOptions(batch_size=4, shard_rows=4, max_tokens=32, span="response")
    local = encode_run(opts, EncodeInputs(str(model), saes, inp, [1]), tmp_path / "local", progress=False).stats
    remote = encode_run(opts, EncodeInputs(str(model), saes, inp, [1]), tmp_path / "ray", progress=False, executor=RayExecutor(RayOptions(workers=1))).stats
    assert (local["documents"], local["rejected"]) == (10, 0) and (remote["documents"], remote["rejected"]) == (10, 0)
    a, b = FeatureStore(tmp_path / "local"), FeatureStore(tmp_path / "ray")
    assert shard_table(a) == shard_table(b)
    for info in a.manifest.shards:
        assert (a.root / info.name).read_bytes() == (b.root / info.name).read_bytes()

"""`qscope encode` end to end: kill -9 then resume gives the clean run's store, a finished rerun is a no-op, bad
records go to rejects.jsonl (or stop the run with --on-error fail), incompatible SAE / layer exit 2 before
anything is written, and a folder holding another job is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from cli_inprocess import qscope
from qscope_data.store import FeatureStore

WORDS = "the quick brown fox jumps over a lazy dog while you bake bread with flour water salt and yeast".split()


def corpus(n: int, words: int = 24) -> list[dict]:
    rng = np.random.default_rng(1)
    return [{"id": f"d{i:03d}", "text": " ".join(rng.choice(WORDS, size=words)), "lang": "en"} for i in range(n)]




def qscope_executable() -> list[str]:
    exe = Path(sys.executable).parent / "qscope"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "qscope_data"]


def sorted_rows(root: Path, layer: int) -> pl.DataFrame:
    return FeatureStore(root).read(layer).sort("doc_id")


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_kill_9_then_resume_equals_a_clean_run(tiny_model_dir, sae_dir, write_jsonl, tmp_path, capsys):
    model = tiny_model_dir("qwen3")
    sae = sae_dir(d_sae=2048, k=32, layers=(2,))
    inp = write_jsonl(corpus(60))
    out, clean = tmp_path / "killed", tmp_path / "clean"
    args = ["encode", "--model", model, "--sae", sae, "--layer", 2, "--input", inp, "--shard-rows", 5,
            "--batch-size", 4, "--max-tokens", 48, "--no-progress"]

    proc = subprocess.Popen([*qscope_executable(), *map(str, args), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
    first_marker = out / "_progress" / "part-00000.json"
    deadline = time.monotonic() + 180
    while not first_marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first_marker.exists(), proc.stderr.read().decode()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "manifest.json").exists()
    done_before = {p.name for p in (out / "_progress").glob("part-*.json")}
    assert 1 <= len(done_before) < 12
    kept = {name: t for name, t in mtimes(out).items() if name.startswith("layer2/part-")
            and f"{name.split('/')[-1].removesuffix('.parquet')}.json" in done_before}

    code, stdout, err = qscope(*args, "--out", out, capsys=capsys)  # rerun: resumes
    assert code == 0 and "resumed" in stdout, err
    assert all(mtimes(out)[name] == t for name, t in kept.items())  # finished shards were not redone
    assert not list(out.rglob(".*.tmp"))

    code, _, _ = qscope(*args, "--out", clean, capsys=capsys)
    assert code == 0
    resumed, reference = sorted_rows(out, 2), sorted_rows(clean, 2)
    assert resumed["doc_id"].n_unique() == resumed.height == 60
    assert resumed.drop("max_acts").equals(reference.drop("max_acts"))
    np.testing.assert_allclose(resumed["max_acts"].explode().to_numpy(), reference["max_acts"].explode().to_numpy(),
                               rtol=1e-6)
    m_resumed, m_clean = FeatureStore(out).manifest, FeatureStore(clean).manifest
    assert [s.rows for s in m_resumed.shards] == [s.rows for s in m_clean.shards] == [5] * 12

    before = mtimes(clean)  # a finished rerun is a no-op
    code, stdout, _ = qscope(*args, "--out", clean, capsys=capsys)
    assert code == 0 and "nothing to do" in stdout
    assert mtimes(clean) == before


BAD_LINES = [
    {"id": "ok1", "text": "The quick brown fox."},
    "{not json",
    {"id": "no-text", "body": "text lives elsewhere"},
    {"id": "empty", "text": "   "},
    {"id": "number", "text": 42},
    b'{"id": "bytes", "text": "caf\xe9"}',
    {"id": "ok2", "text": "Hello there, how do I bake bread?"},
    {"id": "bad-chat", "messages": [{"role": "narrator", "content": "x"}]},
    {"id": "ok3", "text": "Mix flour, water and salt."},
]


def test_bad_records_go_to_rejects_and_the_run_goes_on(tiny_model_dir, sae_dir, write_jsonl, tmp_path, capsys):
    inp = write_jsonl(BAD_LINES)
    out = tmp_path / "s"
    code, stdout, _ = qscope("encode", "--model", tiny_model_dir("qwen3"), "--sae", sae_dir(), "--layer", 1,
                             "--input", inp, "--out", out, "--shard-rows", 2, "--no-progress", capsys=capsys)
    assert code == 0 and "6 rejected" in stdout
    store = FeatureStore(out)
    assert store.read(1)["doc_id"].to_list() == ["ok1", "ok2", "ok3"]
    rejects = store.rejects()
    assert [(r["line"], r["doc_id"]) for r in rejects] == [
        (2, None), (3, "no-text"), (4, "empty"), (5, "number"), (6, None), (8, "bad-chat")]
    reasons = [r["reason"] for r in rejects]
    assert reasons[0].startswith("malformed JSON")
    assert "missing text field 'text'" in reasons[1] and "empty text" in reasons[2]
    assert "int, not a string" in reasons[3] and "undecodable bytes" in reasons[4] and "role" in reasons[5]
    assert all(r["file"] == str(inp) for r in rejects)
    assert store.manifest.n_rejected == 6 and store.manifest.n_documents == 3


def test_on_error_fail_stops_at_the_first_bad_record(tiny_model_dir, sae_dir, write_jsonl, tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = qscope("encode", "--model", tiny_model_dir("qwen3"), "--sae", sae_dir(), "--layer", 1,
                          "--input", write_jsonl(BAD_LINES), "--out", out, "--on-error", "fail", capsys=capsys)
    assert code == 2 and ":2: malformed JSON" in err and "Traceback" not in err
    assert not out.exists()


def test_sae_d_model_mismatch_exits_2_naming_both_before_writing(tiny_model_dir, sae_dir, write_jsonl, tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = qscope("encode", "--model", tiny_model_dir("qwen3"), "--sae", sae_dir(d_model=32, layers=(1,)),
                          "--layer", 1, "--input", write_jsonl(BAD_LINES[:1]), "--out", out, capsys=capsys)
    assert code == 2 and "d_model 32" in err and "hidden size 64" in err
    assert not out.exists()


def test_layer_beyond_depth_exits_2_naming_both_before_writing(tiny_model_dir, sae_dir, write_jsonl, tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = qscope("encode", "--model", tiny_model_dir("qwen3"), "--sae", sae_dir(layers=(1, 7)),
                          "--layer", 1, "--layer", 7, "--input", write_jsonl(BAD_LINES[:1]), "--out", out, capsys=capsys)
    assert code == 2 and "layer 7" in err and "4 blocks" in err
    assert not out.exists()


def test_other_settings_are_refused_and_overwrite_starts_over(tiny_model_dir, sae_dir, write_jsonl, tmp_path, capsys):
    out = tmp_path / "s"
    base = ["encode", "--model", tiny_model_dir("qwen3"), "--sae", sae_dir(), "--layer", 1,
            "--input", write_jsonl(BAD_LINES[:1] + BAD_LINES[6:7]), "--out", out, "--no-progress"]
    assert qscope(*base, capsys=capsys)[0] == 0
    code, _, err = qscope(*base, "--max-tokens", 8, capsys=capsys)
    assert code == 2 and "options.max_tokens" in err and "--overwrite" in err
    (out / "notes.txt").write_text("user file")  # --overwrite removes only what the store owns
    code, stdout, _ = qscope(*base, "--max-tokens", 8, "--overwrite", capsys=capsys)
    assert code == 0 and "encoded 2 documents" in stdout
    assert FeatureStore(out).manifest.options["max_tokens"] == 8 and (out / "notes.txt").exists()
    assert all(n <= 8 for n in FeatureStore(out).read(1)["n_tokens"])

    stranger = tmp_path / "not-a-store"
    stranger.mkdir()
    (stranger / "data.csv").write_text("a,b\n")
    code, _, err = qscope(*base[:-3], "--out", stranger, capsys=capsys)
    assert code == 2 and "not a feature store" in err

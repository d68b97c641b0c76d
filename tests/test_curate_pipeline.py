"""The real chain on one corpus: `encode` (tiny Qwen3 + a random SAE) → `qscope score` → `qscope curate`."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from qscope_data.cli import main
from qscope_data.curate.formats import check_trl_format
from curate_corpus import case, load, run  # noqa: F401 (case: fixture)


def test_end_to_end_real_encode_score_curate(case, tiny_model_dir, sae_dir, tmp_path):
    """doc_ids agree (ids, content hashes, rejects), and exactly the drop rule's hits are removed by rules."""
    from qscope_data.encode import EncodeOptions, EncodeInputs, run as encode_run
    from qscope_data.store import FeatureStore

    store_dir = tmp_path / "encoded"
    encode_run(EncodeOptions(max_tokens=32, shard_rows=8), EncodeInputs(str(tiny_model_dir("qwen3")), str(sae_dir(layers=(1,))), case["data"], [1]), store_dir, progress=False)
    store = FeatureStore(store_dir)
    docs = store.read(columns=["doc_id", "feature_ids"])
    counts: dict[int, int] = {}
    for feats in docs["feature_ids"].to_list():
        for f in feats:
            counts[f] = counts.get(f, 0) + 1
    feature = min((f for f, n in counts.items() if 2 <= n <= docs.height // 2), default=None)
    if feature is None:
        pytest.skip("no SAE feature fires on a minority of documents with this random SAE")
    hits = {d for d, feats in docs.iter_rows() if feature in feats}
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"rules:\n  - name: hit\n    when: any_fires(f{feature})\n    action: drop\n")
    main(["score", "--rules", str(rules), "--features", str(store_dir), "--out", str(tmp_path / "escores"), "--no-progress"])
    out = tmp_path / "out"
    run(case, out, store=store_dir, scores=tmp_path / "escores", synth=False)
    removed = pq.read_table(out / "removed.parquet").to_pylist()
    rows = load(out, tmp_path).to_list()
    assert {r["doc_id"] for r in removed if r["reason"] == "rule:hit"} == hits
    n_lines = len(case["data"].read_text().splitlines())
    assert len(rows) + len(removed) == n_lines
    assert all(check_trl_format(r, "messages") is None and r["n_tokens"] > 0 for r in rows)


def test_synthesis_parquet_schema_is_read(case, tmp_path):
    """accepted.parquet written with the synthesis stage's own schema (`qscope synth`'s ACCEPTED_SCHEMA) mixes in."""
    import json

    import pyarrow as pa

    synthesize = pytest.importorskip("qscope_data.synth.synthesize")
    rows = [json.loads(line) for line in (case["synth"] / "accepted.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["id"] in ("syn1", "syn_dup")]
    folder = tmp_path / "psynth"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=synthesize.ACCEPTED_SCHEMA), folder / synthesize.ACCEPTED_PARQUET)
    # its verification store, recording the Parquet file's hash (as `qscope synth` writes it)
    import shutil

    from qscope_data import atomic

    shutil.copytree(case["synth"] / "store", folder / "store")
    manifest = json.loads((folder / "store" / "manifest.json").read_text())
    manifest["inputs"]["accepted_sha256"] = {"accepted.parquet": atomic.sha256_file(folder / synthesize.ACCEPTED_PARQUET)}
    (folder / "store" / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    main(["curate", "--input", str(case["data"]), "--features", str(case["store"].root), "--scores", str(case["scores"]),
          "--synth", str(folder), "--out", str(out), "--no-progress"])
    kept = {r["doc_id"]: r for r in load(out, tmp_path).to_list()}
    assert kept["syn1"]["synthetic"]["target_feature"] == 77 and kept["syn1"]["source"] == "synthetic:offline"
    assert kept["syn1"]["synthetic"]["verified"] == "conversation"
    removed = {r["doc_id"]: r["reason"] for r in pq.read_table(out / "removed.parquet").to_pylist()}
    assert removed["syn_dup"] == "duplicate_of:en2"

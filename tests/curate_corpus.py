"""Inputs for the curate tests: a chat corpus whose ids say what should become of each record, a feature store
written through the store contract with the corpus' doc_ids, scores in the format `qscope score` writes, and a
synthesis folder."""

from __future__ import annotations

import glob
import json
import random
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from qscope_data import atomic
from qscope_data.cli import main
from qscope_data.inputs import Record, input_fingerprint, iter_records
from qscope_data.store import SAEInfo, StoreManifest, write_store

WORDS = ("river stone garden window bread music winter market letter bridge candle forest paper harbour lantern "
         "orchard meadow quarry saddle timber velvet wagon yarrow zephyr basket copper dune ember fjord glacier").split()


def long_answer(seed: int, n: int = 60) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def chat(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def corpus_lines() -> list[str]:
    """The input corpus (JSONL lines): what each record should become is in its id."""
    recs: list[dict] = []
    for i in range(8):  # plain English records (quota material)
        recs.append({"id": f"en{i}", "lang": "en", "category": "general", "messages": chat(f"Question {i}?", long_answer(i))})
    for i in range(3):
        recs.append({"id": f"de{i}", "lang": "de", "category": "general", "messages": chat(f"Frage {i}?", long_answer(100 + i))})
    recs.append({"id": "toxic1", "lang": "en", "category": "general", "messages": chat("Insult me.", long_answer(200))})
    recs.append({"id": "toxic2", "lang": "de", "messages": chat("Beleidige mich.", long_answer(201))})
    recs.append({"id": "risky1", "lang": "en", "category": "medical", "messages": chat("Dose?", long_answer(300))})
    recs.append({"id": "exactdup_en0", "lang": "en", "category": "general", "messages": chat("Question 0?", long_answer(0))})
    edited = long_answer(1).split()
    edited[30] = "EDITED"
    recs.append({"id": "neardup_en1", "lang": "en", "category": "general",
                 "messages": chat("Question 1?", " ".join(edited))})
    recs.append({"id": "noassistant", "lang": "en", "messages": [{"role": "user", "content": "Unanswered?"}]})
    recs.append({"id": "notencoded", "lang": "en", "messages": chat("Too long?", long_answer(400))})
    recs.append({"lang": "en", "messages": chat("No id here?", long_answer(500))})  # gets a content-hash doc_id
    lines = [json.dumps(r) for r in recs]
    lines.insert(5, '{"id": "broken", "messages": [')  # malformed JSON
    lines.insert(9, json.dumps({"id": "badmsg", "messages": [{"role": "robot", "content": "x"}]}))  # malformed record
    return lines


def records(path: Path) -> list[Record]:
    return [r for r in iter_records(path) if isinstance(r, Record)]


def make_store(root: Path, recs: list[Record], *, rejected: list[str] = (), feature_of: dict[str, list[int]] | None = None):
    """A store written through the contract (write_store) with the input's doc_ids; `rejected` go to rejects.jsonl."""
    feature_of = feature_of or {}
    kept = [r for r in recs if r.doc_id not in rejected]
    frame = pl.DataFrame(
        {
            "doc_id": [r.doc_id for r in kept],
            "n_tokens": [10 + i for i in range(len(kept))],
            "n_positions": [9 + i for i in range(len(kept))],
            "feature_ids": [feature_of.get(r.doc_id, [1, 2]) for r in kept],
            "max_acts": [[1.5] * len(feature_of.get(r.doc_id, [1, 2])) for r in kept],
            "fire_counts": [[1] * len(feature_of.get(r.doc_id, [1, 2])) for r in kept],
            "lang": [r.fields.get("lang") for r in kept],
        },
        schema_overrides={"feature_ids": pl.List(pl.Int32), "max_acts": pl.List(pl.Float32), "fire_counts": pl.List(pl.Int32)},
    )
    manifest = StoreManifest(
        model={"id": "tiny/qwen3-test", "revision": "abc123", "architecture": "Qwen3ForCausalLM"},
        saes=[SAEInfo(layer=2, source="tiny/SAE-Res-Tiny-W1K-L0_16", format="qwen-scope", k=16, d_sae=1024, d_model=64)],
        options={"text_field": "text", "id_field": "id"},
        inputs={"fingerprint": input_fingerprint(list(dict.fromkeys(r.file for r in recs)))},
    )
    store = write_store(root, {2: frame}, manifest)
    if rejected:
        atomic.write_text(root / "rejects.jsonl", "".join(
            json.dumps({"file": r.file, "line": r.line, "doc_id": r.doc_id, "reason": "too long"}) + "\n"
            for r in recs if r.doc_id in rejected))
    return store


RULES = {"toxic": "drop", "risky": "flag", "greeting": "keep"}


def make_scores(folder: Path, store, hits: dict[str, set[str]], *, rule_types: dict[str, pa.DataType] | None = None,
                drop_ids: set[str] = frozenset()) -> Path:
    """scores.parquet + summary.json in the format `qscope score` writes."""
    doc_ids = [d for d in store.read(columns=["doc_id"])["doc_id"].to_list() if d not in drop_ids]
    langs = dict(store.read(columns=["doc_id", "lang"]).iter_rows())
    cols: dict[str, pa.Array] = {"doc_id": pa.array(doc_ids, pa.string()), "lang": pa.array([langs[d] for d in doc_ids], pa.string())}
    for rule in RULES:
        typ = (rule_types or {}).get(rule, pa.bool_())
        cols[rule] = pa.array([d in hits.get(rule, set()) for d in doc_ids], pa.bool_()).cast(typ)
    cols["toxic_score"] = pa.array([2.0 if d in hits.get("toxic", set()) else 0.0 for d in doc_ids], pa.float32())
    atomic.write_parquet(folder / "scores.parquet", pa.table(cols))
    rule_file = folder / "rules.yaml"  # what the synthetic samples are screened with (features 900-902)
    atomic.write_text(rule_file, "rules:\n" + "".join(
        f"  - {{name: {r}, when: 'fires(f{900 + i})', action: {a}}}\n" for i, (r, a) in enumerate(RULES.items())))
    summary = {
        "kind": "qscope-scores", "store": str(store.root), "store_manifest_sha256": store.manifest_hash(), "layer": 2,
        "rule_files": [{"path": str(rule_file), "sha256": atomic.sha256_file(rule_file)}],
        "rules": {r: {"action": a, "hits": len(hits.get(r, ())), "hits_by_lang": {}} for r, a in RULES.items()},
    }
    atomic.write_json(folder / "summary.json", summary)
    return folder


def make_synth(folder: Path, feature_of: dict[str, list[int]] | None = None) -> Path:
    """accepted.jsonl and its verification store (`store/`, recording the file's sha256) as `qscope synth` writes."""
    samples = [
        {"id": "syn1", "messages": chat("Wie backe ich Brot?", long_answer(900)), "lang": "de", "category": "cooking"},
        {"id": "syn_dup", "messages": chat("Question 2?", long_answer(2)), "lang": "en", "category": "general"},
        {"id": "syn_unverified", "messages": chat("x?", long_answer(901)), "lang": "en", "verified": False},
        {"id": "syn_bad", "messages": [{"role": "user", "content": "no answer"}], "lang": "en"},
    ]
    lines = []
    for s in samples:
        s = {"target_feature": 77, "generator": "offline", "attempts": 2, "activation": 3.25, "verified": "conversation",
             "variant": "direct", "label": "bread", "threshold": 1.0, **s}
        lines.append(json.dumps(s))
    atomic.write_text(folder / "accepted.jsonl", "\n".join(lines) + "\n")
    verified = [s["id"] for s in samples]
    feats = [(feature_of or {}).get(i, [1, 2]) for i in verified]
    frame = pl.DataFrame({"doc_id": verified, "n_tokens": [12] * len(verified), "n_positions": [11] * len(verified),
                          "feature_ids": feats, "max_acts": [[1.5] * len(f) for f in feats],
                          "fire_counts": [[1] * len(f) for f in feats]},
                         schema_overrides={"feature_ids": pl.List(pl.Int32), "max_acts": pl.List(pl.Float32),
                                           "fire_counts": pl.List(pl.Int32)})
    write_store(folder / "store", {2: frame}, StoreManifest(
        saes=[SAEInfo(layer=2, source="tiny/SAE-Res-Tiny-W1K-L0_16", format="qwen-scope", k=16, d_sae=1024, d_model=64)],
        inputs={"accepted_sha256": {"accepted.jsonl": atomic.sha256_file(folder / "accepted.jsonl")}}))
    atomic.write_json(folder / "summary.json", {"accepted": 3})
    return folder


@pytest.fixture()
def case(tmp_path: Path) -> dict:
    data = tmp_path / "corpus.jsonl"
    data.write_text("\n".join(corpus_lines()) + "\n")
    recs = records(data)
    store = make_store(tmp_path / "store", recs, rejected=["notencoded"])
    hits = {"toxic": {"toxic1", "toxic2"}, "risky": {"risky1", "toxic1"}, "greeting": {"de0"}}
    scores = make_scores(tmp_path / "scores", store, hits)
    synth = make_synth(tmp_path / "synth")
    return {"tmp": tmp_path, "data": data, "records": recs, "store": store, "scores": scores, "synth": synth, "hits": hits}


def run(case: dict, out: Path, *extra: str, synth: bool = True, scores: Path | None = None, store: Path | None = None,
        data: Path | None = None) -> None:
    args = ["curate", "--input", str(data or case["data"]), "--features", str(store or case["store"].root),
            "--scores", str(scores or case["scores"]), "--out", str(out), "--no-progress", *extra]
    if synth:
        args += ["--synth", str(case["synth"])]
    main(args)


def shard_files(out: Path, pattern: str = "data/*.parquet") -> list[str]:
    return sorted(glob.glob(str(out / pattern)))


def load(out: Path, tmp: Path, pattern: str = "data/*.parquet"):
    import datasets

    return datasets.load_dataset("parquet", data_files=shard_files(out, pattern), split="train",
                                 cache_dir=str(tmp / "hf-cache"))

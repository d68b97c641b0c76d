"""`qscope curate` end to end through the CLI: a real corpus file, a feature store written through the store
contract, rule scores in the rules stage's format, synthetic samples; checks the acceptance items of issue 8."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate_corpus import case, load, long_answer, make_scores, make_store, records, run, shard_files  # noqa: F401 (case: fixture)
from qscope_data import atomic
from qscope_data.cli import main
from qscope_data.curate.formats import check_trl_format


def expect_exit(capsys, code: int, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == code
    return capsys.readouterr().err


# -- acceptance ---------------------------------------------------------------------------------------------------


def test_every_record_once_drop_hits_removed_flags_kept(case):
    out = case["tmp"] / "out"
    run(case, out, "--max-shard-rows", "4", "--jsonl")
    ds = load(out, case["tmp"])
    rows = ds.to_list()
    for row in rows:
        assert check_trl_format(row, "messages") is None
        assert row["messages"][-1]["role"] == "assistant"
    removed = pq.read_table(out / "removed.parquet").to_pylist()
    reasons = {r["doc_id"]: r["reason"] for r in removed if r["doc_id"] is not None}
    kept = [r["doc_id"] for r in rows]
    # every input line exactly once: kept or removed (the malformed JSON line has no doc_id: it is there by line)
    input_ids = [r.doc_id for r in case["records"]] + ["badmsg"]
    synth_ids = ["syn1", "syn_dup", "syn_unverified", "syn_bad"]
    assert sorted(kept + list(reasons)) == sorted(input_ids + synth_ids)
    assert len(kept) + len(removed) == len(input_ids) + 1 + len(synth_ids) and len(set(kept)) == len(kept)
    assert [(r["reason"], r["line"]) for r in removed if r["doc_id"] is None] == [("malformed", 6)]
    # exactly the drop rule's hits are removed by rules; flagged rows kept with their flags
    assert {d for d, r in reasons.items() if r.startswith("rule:")} == case["hits"]["toxic"]
    assert reasons["toxic1"] == "rule:toxic"
    assert next(r for r in removed if r["doc_id"] == "toxic1")["rules"] == ["toxic", "risky"]
    risky = next(r for r in rows if r["doc_id"] == "risky1")
    assert risky["flags"] == ["risky"] and risky["rules"] == ["risky"] and risky["category"] == "medical"
    assert next(r for r in rows if r["doc_id"] == "de0")["rules"] == ["greeting"]
    assert reasons["exactdup_en0"] == "duplicate_of:en0" and reasons["neardup_en1"] == "near_duplicate_of:en1"
    assert reasons["syn_dup"] == "duplicate_of:en2"  # the input record wins over the synthetic copy
    assert reasons["noassistant"] == "format:no_final_assistant_turn" and reasons["notencoded"] == "not_encoded"
    assert reasons["badmsg"] == "malformed"
    assert reasons["syn_unverified"] == "unverified" and reasons["syn_bad"] == "malformed"
    # provenance columns
    syn = next(r for r in rows if r["doc_id"] == "syn1")
    assert syn["source"] == "synthetic:offline" and syn["lang"] == "de" and syn["n_tokens"] is None
    assert syn["synthetic"] == {"target_feature": 77, "label": "bread", "attempts": 2, "activation": 3.25,
                                "threshold": 1.0, "verified": "conversation", "variant": "direct"}
    en0 = next(r for r in rows if r["doc_id"] == "en0")
    assert en0["source"] == "input:corpus.jsonl" and en0["lang"] == "en" and en0["n_tokens"] >= 10
    assert en0["synthetic"] is None and kept.index("en0") < kept.index("syn1")
    # manifest counts, shards and JSONL twins
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["kept"] == len(rows) and m["counts"]["removed"] == len(removed)
    assert m["counts"]["removed_by_reason"]["rule:toxic"] == 2 and m["counts"]["removed_by_reason"]["duplicate"] == 2
    assert m["counts"]["removed_by_reason_and_lang"]["rule:toxic"] == {"de": 1, "en": 1}
    assert m["counts"]["rules"]["toxic"] == {"action": "drop", "hits": 2}
    parquet = [s for s in m["shards"] if s["name"].endswith(".parquet")]
    assert all(s["rows"] <= 4 for s in parquet) and len(parquet) == -(-len(rows) // 4)
    assert [Path(s["name"]).name for s in parquet][0] == f"train-00000-of-{len(parquet):05d}.parquet"
    jsonl_rows = [json.loads(line) for s in m["shards"] if s["name"].endswith(".jsonl")
                  for line in (out / s["name"]).read_text().splitlines()]
    assert [r["doc_id"] for r in jsonl_rows] == kept
    assert m["inputs"]["store"]["manifest_sha256"] == case["store"].manifest_hash()
    assert m["inputs"]["scores"]["summary_sha256"] == atomic.sha256_file(case["scores"] / "summary.json")
    assert m["inputs"]["synth"][0]["summary_sha256"] == atomic.sha256_file(case["synth"] / "summary.json")
    assert m["model"]["id"] == "tiny/qwen3-test" and m["saes"][0]["source"] == "tiny/SAE-Res-Tiny-W1K-L0_16"
    rule_file = case["scores"] / "rules.yaml"
    assert m["rule_files"] == {str(rule_file): atomic.sha256_file(rule_file)} and m["options"]["dedup"]["threshold"] == 0.8


def test_dataset_card_loads_with_datasets(case):
    import datasets
    import yaml

    out = case["tmp"] / "out"
    run(case, out, "--license", "cc-by-4.0")
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["license"] == "cc-by-4.0" and meta["language"] == ["de", "en"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*.parquet"}]
    assert "| rule:toxic | 2 |" in card and "tiny/qwen3-test" in card
    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(case["tmp"] / "hf-cache"))
    assert ds.num_rows == json.loads((out / "manifest.json").read_text())["counts"]["kept"]


def test_reruns_are_byte_identical(case):
    a, b = case["tmp"] / "a", case["tmp"] / "b"
    run(case, a, "--max-shard-rows", "3", "--jsonl", "--name", "demo")  # the card's default name is the folder's
    run(case, b, "--max-shard-rows", "3", "--jsonl", "--name", "demo")
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert "removed.parquet" in files and "README.md" in files
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["shards"] == mb["shards"] and ma["counts"] == mb["counts"]
    before = {rel: (a / rel).read_bytes() for rel in files}
    run(case, a, "--max-shard-rows", "3", "--jsonl", "--name", "demo", "--overwrite")  # rerun in place
    assert {rel: (a / rel).read_bytes() for rel in files} == before


def test_manifest_verify_clean_and_tampered(case, capsys):
    out = case["tmp"] / "out"
    run(case, out, "--max-shard-rows", "5")
    capsys.readouterr()
    main(["manifest", "verify", str(out)])
    assert "OK" in capsys.readouterr().out
    shard = Path(shard_files(out)[0])
    original = shard.read_bytes()
    table = pq.read_table(shard)
    atomic.write_parquet(shard, table.slice(1))  # drop a row: other bytes, other sha256, other row count
    with pytest.raises(SystemExit) as exc:
        main(["manifest", "verify", str(out)])
    assert exc.value.code == 1
    lines = capsys.readouterr().out.splitlines()
    name = shard.relative_to(out).as_posix()
    assert any(line.startswith(f"{name}: sha256") for line in lines)
    assert any(line.startswith(f"{name}: {table.num_rows - 1} rows") for line in lines)
    # a flipped byte with the same size, an extra file, a missing file
    shard.write_bytes(original)
    data = bytearray((out / "removed.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "removed.parquet").write_bytes(bytes(data))
    (out / "data" / "extra.parquet").write_bytes(b"x")
    Path(shard_files(out)[-1]).unlink()
    with pytest.raises(SystemExit):
        main(["manifest", "verify", str(out)])
    text = capsys.readouterr().out
    assert "removed.parquet: sha256" in text and "data/extra.parquet: not listed" in text and "missing" in text
    assert f"{name}:" not in text  # restored byte-identically
    err = expect_exit(capsys, 2, ["manifest", "verify", str(case["tmp"])])
    assert "no manifest.json" in err


def test_quarantine_routes_flagged_rows(case):
    out = case["tmp"] / "out"
    run(case, out, "--quarantine")
    train = {r["doc_id"] for r in load(out, case["tmp"]).to_list()}
    q = load(out, case["tmp"], "quarantine/*.parquet").to_list()
    assert [r["doc_id"] for r in q] == ["risky1"] and "risky1" not in train
    assert q[0]["flags"] == ["risky"] and check_trl_format(q[0], "messages") is None
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["quarantined"] == 1
    card = (out / "README.md").read_text()
    assert "config_name: quarantine" in card


def test_quotas_keep_the_first_n_in_input_order(case):
    out = case["tmp"] / "out"
    run(case, out, "--quota", "category=medical:0", "--quota", "lang=en:3,de:1")
    rows = load(out, case["tmp"]).to_list()
    assert [r["doc_id"] for r in rows if r["lang"] == "en"] == ["en0", "en1", "en2"]
    assert [r["doc_id"] for r in rows if r["lang"] == "de"] == ["de0"]
    removed = {r["doc_id"]: r["reason"] for r in pq.read_table(out / "removed.parquet").to_pylist()}
    assert removed["en3"] == "quota:lang=en" and removed["syn1"] == "quota:lang=de"
    assert removed["risky1"] == "quota:category=medical"  # quotas apply in the order given
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["removed_by_reason"]["quota:lang=en"] == 6  # en3…en7 and the record without an id
    assert m["options"]["quotas"] == {"category": {"medical": 0}, "lang": {"en": 3, "de": 1}}


@pytest.mark.parametrize("fmt", ["prompt-completion", "text"])
def test_other_formats(case, fmt, tmp_path):
    if fmt == "text":  # a plain-text corpus
        data = tmp_path / "texts.jsonl"
        data.write_text("".join(json.dumps({"id": f"t{i}", "text": long_answer(i), "lang": "en"}) + "\n" for i in range(5))
                        + json.dumps({"id": "t_dup", "text": long_answer(0)}) + "\n")
        recs = records(data)
        store = make_store(tmp_path / "tstore", recs)
        scores = make_scores(tmp_path / "tscores", store, {"toxic": {"t3"}})
        out = tmp_path / "out"
        run(case, out, "--format", "text", synth=False, data=data, store=store.root, scores=scores)
        rows = load(out, tmp_path).to_list()
        assert [r["doc_id"] for r in rows] == ["t0", "t1", "t2", "t4"] and rows[0]["text"] == long_answer(0)
    else:
        out = tmp_path / "out"
        run(case, out, "--format", fmt)
        rows = load(out, tmp_path).to_list()
        assert rows and all(set(r["completion"][0]) == {"role", "content"} for r in rows)
    from trl.data_utils import is_conversational

    for row in rows:
        assert check_trl_format(row, fmt) is None
        assert is_conversational(row) is (fmt != "text")


def test_text_records_with_text_role(case, tmp_path):
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"id": f"t{i}", "text": long_answer(i)}) + "\n" for i in range(3)))
    store = make_store(tmp_path / "tstore", records(data))
    out = tmp_path / "out"
    main(["curate", "--input", str(data), "--features", str(store.root), "--out", str(out), "--no-progress",
          "--text-role", "assistant", "--text-prompt", "Write something."])
    rows = load(out, tmp_path).to_list()
    assert rows[0]["messages"] == [{"role": "user", "content": "Write something."},
                                   {"role": "assistant", "content": long_answer(0)}]
    assert rows[0]["rules"] == [] and rows[0]["flags"] == []


# -- bad input: exit 2, nothing written -----------------------------------------------------------------------------


def _argv(case, out, **over) -> list[str]:
    return ["curate", "--input", str(over.get("data", case["data"])), "--features", str(over.get("store", case["store"].root)),
            "--scores", str(over.get("scores", case["scores"])), "--out", str(out), "--no-progress", *over.get("extra", [])]


def test_store_from_another_input(case, capsys, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"id": f"x{i}", "text": f"other {i}"}) + "\n" for i in range(4)))
    store = make_store(tmp_path / "ostore", records(other))
    out = tmp_path / "out"
    err = expect_exit(capsys, 2, _argv(case, out, store=store.root))
    assert f"store {store.root} was not made from input {case['data']}" in err and "not in the store" in err
    assert not out.exists()


def test_scores_from_another_store_or_missing_ids(case, capsys, tmp_path):
    out = tmp_path / "out"
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"id": f"x{i}", "text": f"other {i}"}) + "\n" for i in range(4)))
    foreign = make_scores(tmp_path / "fscores", make_store(tmp_path / "ostore", records(other)), {})
    err = expect_exit(capsys, 2, _argv(case, out, scores=foreign))
    assert f"scores {foreign} were not computed on store" in err
    missing = make_scores(tmp_path / "mscores", case["store"], case["hits"], drop_ids={"en3"})
    err = expect_exit(capsys, 2, _argv(case, out, scores=missing))
    assert "1 store doc_id(s) have no score (first: 'en3')" in err
    stale = make_scores(tmp_path / "sscores", case["store"], case["hits"])
    summary = json.loads((stale / "summary.json").read_text())
    atomic.write_json(stale / "summary.json", {**summary, "store_manifest_sha256": "0" * 64})
    err = expect_exit(capsys, 2, _argv(case, out, scores=stale))
    assert "computed on another store" in err
    assert not out.exists()


def test_schema_mismatch_and_bad_summary(case, capsys, tmp_path):
    out = tmp_path / "out"
    typed = make_scores(tmp_path / "iscores", case["store"], case["hits"], rule_types={"toxic": pa.int64()})
    err = expect_exit(capsys, 2, _argv(case, out, scores=typed))
    assert "schema mismatch: rule column 'toxic' is Int64, expected Boolean" in err
    bad = make_scores(tmp_path / "bscores", case["store"], case["hits"])
    summary = json.loads((bad / "summary.json").read_text())
    summary["rules"]["toxic"]["action"] = "delete"
    atomic.write_json(bad / "summary.json", summary)
    err = expect_exit(capsys, 2, _argv(case, out, scores=bad))
    assert "rule 'toxic' has action 'delete'" in err
    err = expect_exit(capsys, 2, _argv(case, out, scores=tmp_path))
    assert "no summary.json" in err
    assert not out.exists()


def test_bad_input_leaves_existing_output_unchanged(case, capsys, tmp_path):
    out = tmp_path / "out"
    run(case, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    typed = make_scores(tmp_path / "iscores", case["store"], case["hits"], rule_types={"toxic": pa.int64()})
    expect_exit(capsys, 2, _argv(case, out, scores=typed, extra=["--overwrite"]))
    err = expect_exit(capsys, 2, _argv(case, out))
    assert "pass --overwrite" in err
    err = expect_exit(capsys, 2, _argv(case, out, extra=["--format", "text", "--overwrite"]))
    assert "conversation records cannot be written as --format text" in err and "corpus.jsonl:1" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")) == []  # no staging left (the writer lock stays)
    err = expect_exit(capsys, 2, _argv(case, out, extra=["--quota", "colour=red:1", "--overwrite"]))
    assert "field 'colour'" in err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    err = expect_exit(capsys, 2, _argv(case, foreign))
    assert "not a curated dataset" in err and (foreign / "keep.txt").read_text() == "mine"


def test_text_corpus_refused_for_messages_without_text_role(case, capsys, tmp_path):
    data = tmp_path / "texts.jsonl"
    data.write_text(json.dumps({"id": "t0", "text": "hello there"}) + "\n")
    store = make_store(tmp_path / "tstore", records(data))
    out = tmp_path / "out"
    err = expect_exit(capsys, 2, ["curate", "--input", str(data), "--features", str(store.root), "--out", str(out)])
    assert "plain-text records have no roles for --format messages; pass --text-role assistant" in err
    assert not out.exists()


def test_real_rule_scores_drive_curation(case, tmp_path):
    """The scores folder written by the real rules stage (`qscope score`) is what curate reads."""
    pytest.importorskip("qscope_data.rules.score")
    recs = case["records"]
    store = make_store(tmp_path / "fstore", recs, rejected=["notencoded"],
                       feature_of={"toxic1": [1, 7], "toxic2": [7], "risky1": [9]})
    rules = tmp_path / "rules.yaml"
    rules.write_text("features:\n  slur: 7\n  dose: 9\nrules:\n"
                     "  - name: toxic\n    when: any_fires(slur)\n    action: drop\n"
                     "  - name: risky\n    when: any_fires(dose)\n    action: flag\n")
    scores = tmp_path / "rscores"
    main(["score", "--rules", str(rules), "--features", str(store.root), "--out", str(scores), "--no-progress"])
    out = tmp_path / "out"
    run(case, out, store=store.root, scores=scores, synth=False)
    removed = {r["doc_id"]: r["reason"] for r in pq.read_table(out / "removed.parquet").to_pylist()}
    assert {d for d, r in removed.items() if r.startswith("rule:")} == {"toxic1", "toxic2"}
    rows = load(out, tmp_path).to_list()
    assert next(r for r in rows if r["doc_id"] == "risky1")["flags"] == ["risky"]
    m = json.loads((out / "manifest.json").read_text())
    assert list(m["rule_files"]) == [str(rules)] and m["counts"]["rules"]["toxic"]["hits"] == 2


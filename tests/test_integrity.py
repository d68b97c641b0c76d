"""Integrity (issue 17): no stage reports a success it did not earn; hostile input gets a clear answer and changes
nothing. Real stores written through the store contract, real Parquet, the CLI in process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_inprocess import qscope
from rules_stores import labelled_store
from qscope_data.errors import DataError
from qscope_data.inputs import Record, iter_records
from qscope_data.store import FeatureStore


def _store(tmp_path: Path) -> FeatureStore:
    return labelled_store(tmp_path / "store", n=60, layers={6: 1.0})


def _split_store(tmp_path: Path) -> Path:
    """A store of three shards (20 documents each), written through the contract."""
    from qscope_data.store import write_store

    src = _store(tmp_path)
    return write_store(tmp_path / "split", {6: src.read(6)}, src.manifest, shard_rows=20).root


def _rules(tmp_path: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text("rules:\n  - {name: x, when: 'fires(f11)'}\n")
    return path


@pytest.mark.parametrize("damage", ["delete_one", "delete_all", "truncate"])
def test_store_with_missing_or_changed_shard_is_refused_naming_it(tmp_path, capsys, damage):
    root = _split_store(tmp_path)
    shard = root / "layer6" / "part-00001.parquet"
    if damage == "delete_one":
        shard.unlink()
    elif damage == "delete_all":
        shutil.rmtree(root / "layer6")
    else:
        shard.write_bytes(shard.read_bytes()[:-10])
    code, out, err = qscope("score", "--rules", _rules(tmp_path), "--features", root, "--out", tmp_path / "scores",
                            "--no-progress", capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "part-0000" in err and "manifest.json" in err
    assert not (tmp_path / "scores").exists()


def test_stray_shard_is_never_read(tmp_path):
    root = _split_store(tmp_path)
    shutil.copy(root / "layer6" / "part-00000.parquet", root / "layer6" / "part-00099.parquet")
    frame = FeatureStore(root).read(6)
    assert frame.height == 60 and frame["doc_id"].n_unique() == 60


def test_score_over_a_store_with_a_stray_shard_scores_only_the_manifests_documents(tmp_path, capsys):
    """Issue 17 case 1 through the CLI: a stray `part-00099.parquet` made `score` write 80 rows for 60 documents."""
    import polars as pl

    root = _split_store(tmp_path)
    shutil.copy(root / "layer6" / "part-00000.parquet", root / "layer6" / "part-00099.parquet")
    code, _, err = qscope("score", "--rules", _rules(tmp_path), "--features", root, "--out", tmp_path / "scores",
                          "--no-progress", capsys=capsys)
    assert code == 0, err
    scores = pl.concat([pl.read_parquet(p) for p in sorted((tmp_path / "scores").glob("*.parquet"))])
    assert scores.height == 60 and scores["doc_id"].n_unique() == 60
    assert json.loads((tmp_path / "scores" / "summary.json").read_text())["n_documents"] == 60


def test_verify_checks_sha256_and_manifest_verify_lists_it(tmp_path, capsys):
    root = _split_store(tmp_path)
    shard = root / "layer6" / "part-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    FeatureStore(root)  # size check only: opens
    with pytest.raises(DataError, match="part-00002.parquet: sha256"):
        FeatureStore(root, verify=True)
    code, out, _ = qscope("manifest", "verify", root, capsys=capsys)
    assert code == 1 and "part-00002.parquet: sha256" in out


@pytest.mark.parametrize("name", ["../outside.parquet", "/etc/hostname"])
def test_manifest_names_outside_the_folder_are_refused(tmp_path, capsys, name):
    root = _split_store(tmp_path)
    (tmp_path / "outside.parquet").write_bytes((root / "layer6" / "part-00000.parquet").read_bytes())
    m = json.loads((root / "manifest.json").read_text())
    m["shards"][0]["name"] = name
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="is not a path inside"):
        FeatureStore(root)
    code, out, _ = qscope("manifest", "verify", root, capsys=capsys)
    assert code == 1 and "is not a path inside" in out


def test_repeated_ids_never_collide(write_jsonl):
    path = write_jsonl([{"id": i, "text": f"t{n}"} for n, i in enumerate(["x", "x", "x#2", "x#2", "x"])])
    ids = [r.doc_id for r in iter_records(path) if isinstance(r, Record)]
    assert len(set(ids)) == 5 and ids[:3] == ["x", "x#2", "x#2#2"]


@pytest.mark.parametrize("line", ['{"id": "a", "text": "bad \\ud800 text"}', '{"id": "b\\udc00", "text": "ok"}',
                                  '{"id": "c", "text": "ok", "lang": "\\ud83d"}'])
def test_lone_surrogate_goes_to_rejects_with_file_and_line(write_jsonl, tiny_model_dir, sae_dir, tmp_path, line):
    from qscope_data.encode import EncodeOptions, EncodeInputs, run as encode_run

    path = write_jsonl([{"id": "first", "text": "hello there"}, line, {"id": "last", "text": "good bye"}])
    summary = encode_run(EncodeOptions(max_tokens=16), EncodeInputs(str(tiny_model_dir("qwen3")), str(sae_dir()), path, [1]), tmp_path / "s", progress=False).stats
    assert (summary["documents"], summary["rejected"]) == (2, 1)
    [rej] = FeatureStore(tmp_path / "s").rejects()
    assert rej["line"] == 2 and rej["file"].endswith("input.jsonl") and "lone surrogate" in rej["reason"]


# -- curate checks what it was told ----------------------------------------------------------------------------

from curate_corpus import case, make_synth, run  # noqa: E402,F401 (case: fixture)


def _curate_refused(case, capsys, needle: str, **kw) -> str:
    out = case["tmp"] / "out"
    with pytest.raises(SystemExit) as exc:
        run(case, out, **kw)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not out.exists()
    return err


def test_curate_refuses_an_input_edited_after_encode(case, capsys):
    data = case["data"]
    data.write_text(data.read_text().replace("Question 3?", "Question 3? Now with edited text"))
    err = _curate_refused(case, capsys, "is not what store")
    assert str(data) in err and "manifest.json" in err


def test_curate_refuses_tampered_synthetic_samples(case, capsys):
    accepted = case["synth"] / "accepted.jsonl"
    accepted.write_text(accepted.read_text().replace("Wie backe ich Brot?", "Something else entirely"))
    err = _curate_refused(case, capsys, "is not what")
    assert "accepted.jsonl" in err and "store/manifest.json" in err


def test_synthetic_samples_meet_the_same_drop_rules(case):
    make_synth(case["synth"], feature_of={"syn1": [1, 900]})  # f900 fires the `toxic` drop rule
    out = case["tmp"] / "out"
    run(case, out)
    import pyarrow.parquet as pq

    reasons = {r["doc_id"]: r["reason"] for r in pq.read_table(out / "removed.parquet").to_pylist()}
    assert reasons["syn1"] == "rule:toxic"


@pytest.mark.parametrize("n", [600, 5000])
def test_a_flat_or_of_many_terms_parses_and_scores(tmp_path, n):
    from qscope_data.rules.parser import parse
    from qscope_data.rules.score import ScoreInputs, ScoreOptions, run

    when = " or ".join(f"fires(f{i % 500})" for i in range(n))
    assert parse(when) is not None  # no RecursionError
    root = _split_store(tmp_path)
    rules = tmp_path / "many.yaml"
    rules.write_text(f"rules:\n  - name: many\n    when: '{when}'\n")
    summary = run(ScoreOptions(), ScoreInputs([rules], root), tmp_path / "out", progress=False).stats
    assert summary["rules"]["many"]["hits"] == 60


# -- hostile flags and files: exit 2, one line naming the option / file, nothing written --------------------------


def test_nan_sae_weights_are_refused_at_load(tmp_path):
    import torch

    from qscope_data.sae import load_sae
    from qscope_data.testing import random_sae, write_sae

    sae = random_sae(16, 64, 4, layer=1)
    sae.W_enc[3, 2] = float("nan")
    path = write_sae(sae, tmp_path / "sae", "qscope", layer=1)
    with pytest.raises(DataError.__mro__[1], match="non-finite"):
        load_sae(path, 1)
    assert torch.isnan(sae.W_enc).any()


@pytest.mark.parametrize("alpha", ["nan", "inf", "-inf"])
def test_steer_alpha_must_be_finite(tiny_model_dir, sae_dir, capsys, alpha):
    model, sae = tiny_model_dir("qwen3"), sae_dir()
    capsys.readouterr()
    code, out, err = qscope("steer", "hello", "--model", model, "--sae", sae, "--layer", "1",
                            "--feature", "3", "--alpha", alpha, "--max-new-tokens", "2", capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--alpha" in err and "finite" in err


@pytest.mark.parametrize("flag,value", [("--fraction", "1.5"), ("--fraction", "0"), ("--top", "0")])
def test_option_model_errors_are_one_line_naming_the_option(tmp_path, capsys, flag, value):
    root = _split_store(tmp_path)
    code, out, err = qscope("rules", "mine", "--features", root, "--out", tmp_path / "mined.yaml", flag, value,
                            capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert flag in err and value in err and "pydantic" not in err
    assert not (tmp_path / "mined.yaml").exists()


@pytest.mark.parametrize("command,kind", [
    (["score", "--rules", "{rules}", "--features", "{store}"], "folder"),
    (["gaps", "--inventory", "{rules}", "--target", "{store}"], "folder"),
    (["overlap", "{store}"], "folder"),
    (["rules", "mine", "--features", "{store}"], "file"),
    (["features", "select", "--features", "{store}", "--label-field", "label"], "file"),
])
def test_out_at_the_wrong_kind_of_path_is_one_line_exit_2(tmp_path, capsys, command, kind):
    store, rules = _split_store(tmp_path), _rules(tmp_path)
    wrong = tmp_path / "wrong"
    if kind == "folder":
        wrong.write_text("a file that must not be replaced\n")
    else:
        wrong.mkdir()
    args = [a.format(store=store, rules=rules) for a in command] + ["--out", str(wrong)]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, out, err = qscope(*args, capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"--out {wrong}" in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert (wrong.read_text() == "a file that must not be replaced\n") if kind == "folder" else not any(wrong.iterdir())


def test_a_second_writer_of_one_output_is_refused_and_killed_runs_temp_folders_are_reaped(case, capsys):
    import subprocess
    import sys

    out = case["tmp"] / "out"
    stale = case["tmp"] / ".out.curate-999999.tmp"  # what a curate killed mid-write leaves
    stale.mkdir()
    (stale / "half.parquet").write_bytes(b"x")
    holder = subprocess.Popen(  # another process writing `out`: it holds the lock
        [sys.executable, "-c", "import sys, time; from qscope_data.outputs import acquire_lock; "
         f"f = acquire_lock({str(out)!r}); print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(SystemExit) as exc:
            run(case, out)
        assert exc.value.code == 2 and "another qscope process is writing it" in capsys.readouterr().err
        assert stale.exists() and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    run(case, out)
    assert (out / "manifest.json").is_file() and not stale.exists()


def test_a_record_over_max_record_bytes_is_rejected_with_its_line_and_the_choice_recorded(write_jsonl, tiny_model_dir,
                                                                                          sae_dir, tmp_path, capsys):
    path = write_jsonl([{"id": "a", "text": "short"}, {"id": "big", "text": "word " * 400}, {"id": "c", "text": "also short"}])
    model, sae = tiny_model_dir("qwen3"), sae_dir()
    out = tmp_path / "s"
    code, _, err = qscope("encode", "--model", model, "--sae", sae, "--layer", "1", "--input", path, "--out", out,
                          "--max-record-bytes", "1000", "--max-tokens", "16", "--no-progress", capsys=capsys)
    assert code == 0, err
    store = FeatureStore(out)
    [rej] = store.rejects()
    assert rej["line"] == 2 and rej["doc_id"] == "big" and "exceeds max_record_bytes=1,000" in rej["reason"]
    assert store.manifest.options["long_records"] == "reject" and store.manifest.options["max_record_bytes"] == 1000
    kept = qscope("encode", "--model", model, "--sae", sae, "--layer", "1", "--input", path, "--out", tmp_path / "t",
                  "--max-record-bytes", "1000", "--long-records", "truncate", "--max-tokens", "16", "--no-progress",
                  capsys=capsys)
    assert kept[0] == 0 and FeatureStore(tmp_path / "t").manifest.n_documents == 3


def test_a_corrupt_shard_of_the_same_size_is_named_when_reading_fails(tmp_path, capsys):
    # an earlier command in this process read a store that has since gone (another test's tmp folder): only this
    # command's stores may be named
    earlier = _split_store(tmp_path / "earlier")
    assert qscope("score", "--rules", _rules(tmp_path), "--features", earlier, "--out", tmp_path / "earlier-scores",
                  "--no-progress", capsys=capsys)[0] == 0
    shutil.rmtree(earlier)
    root = _split_store(tmp_path)
    shard = root / "layer6" / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[4:400] = b"\xff" * 396  # data pages damaged, footer and size intact
    shard.write_bytes(bytes(data))
    code, _, err = qscope("score", "--rules", _rules(tmp_path), "--features", root, "--out", tmp_path / "scores",
                          "--no-progress", capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "part-00001.parquet: unreadable shard" in err, err
    assert not (tmp_path / "scores").exists()


# -- case 1 on every command that reads a store: refused naming the shard, nothing written ------------------------


def _inventory(tmp_path: Path, capsys) -> Path:
    """An inventory selected from an intact copy of the split store (what `gaps` reads beside the target)."""
    code, _, err = qscope("features", "select", "--features", _split_store(tmp_path / "intact"), "--label-field", "label",
                          "--negative", "0", "--min-purity", "0", "--out", tmp_path / "inv.yaml", capsys=capsys)
    assert code == 0, err
    return tmp_path / "inv.yaml"


@pytest.mark.parametrize("command", [
    ["score", "--rules", "{rules}", "--features", "{store}", "--out", "{out}", "--no-progress"],
    ["gaps", "--inventory", "{inventory}", "--target", "{store}", "--out", "{out}"],
    ["overlap", "{store}", "--out", "{out}"],
    ["rules", "mine", "--features", "{store}", "--out", "{out}.yaml"],
    ["features", "select", "--features", "{store}", "--label-field", "label", "--negative", "0", "--out", "{out}.yaml"],
], ids=["score", "gaps", "overlap", "rules-mine", "features-select"])
@pytest.mark.parametrize("damage", ["delete_one", "delete_all"])
def test_every_store_reader_refuses_a_store_missing_shards(tmp_path, capsys, command, damage):
    """Issue 17 case 1: `gaps` said "coverage 0/35" and `overlap` counted 760 of 780 documents, exit 0."""
    inventory = _inventory(tmp_path, capsys) if "{inventory}" in command else None
    root = _split_store(tmp_path)
    if damage == "delete_one":
        (root / "layer6" / "part-00001.parquet").unlink()
    else:
        shutil.rmtree(root / "layer6")
    out = tmp_path / "result"
    args = [a.format(store=root, rules=_rules(tmp_path), inventory=inventory, out=out) for a in command]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    code, _, err = qscope(*args, capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "part-0000" in err and "manifest.json" in err, err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written


# -- case 4: content fingerprints, and a resume identity that covers what changes numerics ------------------------


def test_a_saved_dataset_folder_is_fingerprinted_by_its_content_not_its_path(tmp_path):
    import datasets

    from qscope_data.inputs import input_fingerprint

    rows = [{"id": f"d{i}", "text": f"text number {i}"} for i in range(4)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    first = input_fingerprint([str(tmp_path / "ds")])
    shutil.move(tmp_path / "ds", tmp_path / "moved")
    assert input_fingerprint([str(tmp_path / "moved")]) == first  # moving a corpus keeps its identity
    rows[2]["text"] = "an edited text"
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    assert input_fingerprint([str(tmp_path / "ds")]) != first  # same path, other content


def test_a_hub_dataset_is_fingerprinted_by_the_commit_it_resolves_to(tmp_path, monkeypatch):
    """The same hub name at another commit (its content changed on the hub) is another input; the commit is read
    offline from a cache laid out as the hub client writes it."""
    from huggingface_hub import constants

    from qscope_data.inputs import input_fingerprint

    repo = tmp_path / "hub" / "datasets--org--corpus"
    for sha in ("a" * 40, "b" * 40):
        (repo / "snapshots" / sha).mkdir(parents=True)
        (repo / "snapshots" / sha / "data.jsonl").write_text(json.dumps({"id": sha[0], "text": sha}) + "\n")
    (repo / "refs").mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (repo / "refs" / "main").write_text("a" * 40)
    first = input_fingerprint(["org/corpus"])
    assert input_fingerprint(["org/corpus"]) == first
    (repo / "refs" / "main").write_text("b" * 40)
    assert input_fingerprint(["org/corpus"]) != first
    assert input_fingerprint(["org/uncached"]) == input_fingerprint(["org/uncached"])  # no commit known: the name


@pytest.mark.parametrize("flag,value", [("--batch-size", "3"), ("--device", "cuda")])
def test_resuming_a_store_with_other_numerics_is_refused_and_changes_nothing(write_jsonl, tiny_model_dir, sae_dir,
                                                                              tmp_path, capsys, flag, value):
    """Same inputs and outputs, another batch size: the floating-point result differs, so the store is not resumed
    (nor silently mixed); exit 2 naming the store, the store untouched."""
    from qscope_data.atomic import sha256_file

    path = write_jsonl([{"id": f"d{i}", "text": f"some words {i}"} for i in range(6)])
    model, sae, out = tiny_model_dir("qwen3"), sae_dir(), tmp_path / "s"
    args = ["encode", "--model", model, "--sae", sae, "--layer", "1", "--input", path, "--out", out, "--max-tokens", "16",
            "--no-progress"]
    assert qscope(*args, capsys=capsys)[0] == 0
    stamp = {p: sha256_file(p) for p in out.rglob("*") if p.is_file()}
    code, _, err = qscope(*args, flag, value, capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(out) in err, err
    assert {p: sha256_file(p) for p in out.rglob("*") if p.is_file()} == stamp


# -- case 12 through the CLI: a non-finite SAE, a second encode of one --out --------------------------------------


def _error_lines(err: str) -> list[str]:
    """The CLI's error lines, after asserting there is no traceback (transformers' weight-loading bar may precede
    them on stderr: it ignores --no-progress)."""
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("qscope: error:")]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_encode_with_non_finite_sae_weights_exits_2_naming_the_file(write_jsonl, tiny_model_dir, tmp_path, capsys, value):
    from qscope_data.testing import random_sae, write_sae

    sae = random_sae(64, 1024, 16, layer=1)
    sae.b_enc[7] = value
    sae_path = write_sae(sae, tmp_path / "sae", "qwen-scope", layer=1)
    out = tmp_path / "s"
    code, _, err = qscope("encode", "--model", tiny_model_dir("qwen3"), "--sae", sae_path, "--layer", "1", "--input",
                          write_jsonl([{"id": "a", "text": "hello"}]), "--out", out, "--no-progress", capsys=capsys)
    [line] = _error_lines(err)
    assert code == 2 and "non-finite" in line and "layer1.sae.pt" in line, err
    assert not out.exists()


def test_a_second_encode_of_one_out_is_refused_at_once(write_jsonl, tiny_model_dir, sae_dir, tmp_path, capsys):
    import subprocess
    import sys

    out = tmp_path / "s"
    holder = subprocess.Popen(  # another encode writing `out`: it holds the store's lock
        [sys.executable, "-c", "import time; from qscope_data.outputs import acquire_lock; "
         f"f = acquire_lock({str(out)!r}); print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        code, _, err = qscope("encode", "--model", tiny_model_dir("qwen3"), "--sae", sae_dir(), "--layer", "1",
                              "--input", write_jsonl([{"id": "a", "text": "hello"}]), "--out", out, "--no-progress",
                              capsys=capsys)
        [line] = _error_lines(err)
        assert code == 2 and "another qscope process is writing it" in line and str(out) in line, err
        assert not out.exists() or not any(out.iterdir())
    finally:
        holder.kill()
        holder.wait()


# -- case 3: a stage's cached result holds only while its recorded outputs are there, unchanged -------------------


@pytest.mark.parametrize("damage", ["delete", "rewrite", "delete_folder", "add"])
@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_cached_stage_result_holds_only_while_its_outputs_are_unchanged(tmp_path, kind, damage):
    """The flows' cache check (`configured` → `stages.outputs_intact`) for any stage: rules/, gaps/, synth/ and
    inventory.yaml alike (the full-pipeline test deletes shards and the inventory under real Prefect)."""
    import os
    import time

    from qscope_data import stages
    from qscope_data.config import PipelineConfig

    config = PipelineConfig.model_validate({"workdir": str(tmp_path / "run"), "model": {"id": "m"},
                                            "sae": {"path": "s", "layer": 1}, "corpora": {"c": {"input": ["x"]}}})
    out = tmp_path / "run" / "gaps" if kind == "folder" else tmp_path / "run" / "rules" / "mined.yaml"
    target = out / "gaps.json" if kind == "folder" else out
    target.parent.mkdir(parents=True)
    target.write_text("A" * 12)
    stages.record_outputs(config, "stage", {"out": str(out)})
    assert stages.outputs_intact(config, "stage")
    if damage in ("delete", "delete_folder"):
        shutil.rmtree(out) if damage == "delete_folder" and kind == "folder" else target.unlink()
    elif damage == "rewrite":  # same size, other bytes, a later mtime
        time.sleep(0.01)
        target.write_text("B" * 12)
        os.utime(target, ns=(time.time_ns(), time.time_ns()))
    else:
        (out.parent / "extra.txt" if kind == "file" else out / "extra.txt").write_text("x")
    assert stages.outputs_intact(config, "stage") is (damage == "add" and kind == "file")  # a sibling is not an output

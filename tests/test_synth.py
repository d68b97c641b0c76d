"""`qscope synth` with the few-shot LM generator (the verifying model) on a tiny Qwen3 + random SAE: every accepted sample, re-encoded through
`qscope encode`, fires its target feature above the threshold; a feature that cannot fire is rejected on every
attempt and reported; coverage before → after in summary.json equals rerunning `qscope gaps` on target + accepted
samples; each slot appears exactly once in accepted or rejected; bad input exits 2 before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from qscope_data.sasft.langdetect import detect
from qscope_data.synth import templates

from cli_inprocess import qscope
from qscope_data.curate.dedup import jaccard, shingle_hashes
from qscope_data.store import FeatureStore
from qscope_data.synth.dedup import CandidateDedup
from qscope_data.synth.requests import slot_id
from qscope_data.synth.options import SynthInputs, SynthOptions
from qscope_data.synth.synthesize import run as synthesize
from synth_world import DEAD, LAYER, build_world, dead_row_check

THRESHOLD = 0.05
PER_FEATURE = 3
ATTEMPTS = 3




@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("synth-world"), tiny_model_dir("qwen3"))


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth-out") / "run"
    features = [*world.gap_features[:4], DEAD]
    options = SynthOptions(per_feature=PER_FEATURE, threshold=THRESHOLD, max_attempts=ATTEMPTS, languages=["en", "fr", "zh"])
    inputs = SynthInputs(gaps=world.gaps, model=str(world.model), sae=str(world.sae), features=features,
                         inventory=world.inventory)
    summary = synthesize(options, inputs, out, progress=False).artifact
    return out, summary, features


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_every_accepted_sample_fires_its_target_when_reencoded(world, run, tmp_path, capsys):
    out, summary, _ = run
    accepted = read_jsonl(out / "accepted.jsonl")
    assert len(accepted) >= 6, "the few-shot LM generator should fill most slots of features that fire on examples"
    for row in accepted:
        assert row["messages"][-1]["role"] == "assistant" and row["messages"][0]["role"] == "user"
        assert row["generator"].startswith("lm:") and row["verified"] == "prompt" and 1 <= row["attempts"] <= ATTEMPTS
        assert row["activation"] > THRESHOLD
        written = detect(row["messages"][0]["content"]).dominant  # the tiny random model writes any script
        assert row["lang"] == written if written else row["lang"] in ("en", "fr", "zh")
        if row["category"] != "benign":  # a harmful prompt is answered with a refusal, whatever the LM wrote
            assert templates.is_refusal(row["messages"][-1]["content"]), row
            assert row["response"] in ("generated", "template refusal (the generated answer did not refuse)",
                                       "template refusal (the generated answer was in another language)")
    # Re-encode the accepted file through the encode CLI, span = prompt (what was verified).
    store_dir = tmp_path / "reencoded"
    code, _, err = qscope("encode", "--model", world.model, "--sae", world.sae, "--layer", LAYER, "--input",
                          out / "accepted.jsonl", "--out", store_dir, "--span", "prompt", "--no-progress", capsys=capsys)
    assert code == 0, err
    rows = {r["doc_id"]: r for r in FeatureStore(store_dir).read(LAYER).to_dicts()}
    assert set(rows) == {r["id"] for r in accepted}
    for sample in accepted:
        acts = dict(zip(rows[sample["id"]]["feature_ids"], rows[sample["id"]]["max_acts"]))
        assert acts.get(sample["target_feature"], 0.0) > THRESHOLD, sample["id"]
        assert acts[sample["target_feature"]] == pytest.approx(sample["activation"], abs=1e-5)


def test_a_feature_that_cannot_fire_is_rejected_on_every_attempt_and_reported(world, run):
    assert dead_row_check(world.sae)
    out, summary, _ = run
    rejected = [r for r in read_jsonl(out / "rejected.jsonl") if r["target_feature"] == DEAD]
    assert len(rejected) == PER_FEATURE
    for r in rejected:
        assert r["attempts"] == ATTEMPTS and r["best_activation"] == 0.0
        assert [h["attempt"] for h in r["history"]] == [1, 2, 3]
        # each attempt was verified and missed, or was not worth encoding: it repeated an earlier candidate or a
        # reference example, or the tiny random model wrote an empty answer
        assert all(h["reason"] in ("below_threshold", "duplicate", "near_duplicate", "near_copy")
                   or (h["reason"] == "generator_error" and "empty generation" in h["detail"]) for h in r["history"]), r["history"]
        assert all(h["activation"] == 0.0 for h in r["history"] if h["reason"] == "below_threshold")
    assert any(h["reason"] == "below_threshold" for r in rejected for h in r["history"])
    entry = next(f for f in summary.features if f["feature"] == DEAD)
    assert entry["accepted"] == 0 and entry["attempts"] == PER_FEATURE * ATTEMPTS and entry["acceptance_rate"] == 0.0
    assert sum(entry["failed_attempts"].values()) == PER_FEATURE * ATTEMPTS and entry["covered_after"] is False
    assert DEAD in summary.coverage["gaps_after"]


def test_each_slot_appears_exactly_once_and_outputs_agree(run):
    out, summary, features = run
    accepted, rejected = read_jsonl(out / "accepted.jsonl"), read_jsonl(out / "rejected.jsonl")
    ids = [r["id"] for r in accepted] + [r["id"] for r in rejected]
    assert sorted(ids) == sorted(slot_id(f, i) for f in features for i in range(PER_FEATURE))
    table = pq.read_table(out / "accepted.parquet").to_pylist()
    assert table == accepted
    store = FeatureStore(out / "store")
    assert sorted(store.read(LAYER)["doc_id"].to_list()) == sorted(r["id"] for r in accepted)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["totals"]["accepted"] == len(accepted) and saved["totals"]["rejected"] == len(rejected)
    for f in saved["features"]:
        assert f["accepted"] + f["rejected"] == PER_FEATURE
        assert f["acceptance_rate"] == pytest.approx(f["accepted"] / f["attempts"], abs=1e-6)
    assert (out / "report.html").read_text().count("<img") == 2 and (out / "synth.png").stat().st_size > 1000  # + novelty
    # The curation stage reads the folder as synthetic samples without complaint.
    from qscope_data.synth.output import load_synthetic

    loaded = load_synthetic(out)
    assert [s.doc_id for s in loaded.samples] == [r["id"] for r in accepted] and not loaded.rejects


def test_no_two_accepted_prompts_are_duplicates(run):
    out, _, _ = run
    prompts = [r["messages"][0]["content"] for r in read_jsonl(out / "accepted.jsonl")]
    shingles = [shingle_hashes(p) for p in prompts]
    for i in range(len(prompts)):
        for j in range(i):
            assert jaccard(shingles[i], shingles[j]) < 0.8, (prompts[i], prompts[j])


def test_candidate_dedup_drops_exact_and_near_duplicates():
    dedup = CandidateDedup(0.8)
    base = "How do I hack into my neighbour's wifi router password without them ever finding out about it today"
    assert dedup.check("a", base) is None
    exact = dedup.check("b", "  " + base.replace(" ", "   ") + " ")
    assert exact is not None and exact.kind == "duplicate" and exact.of == "a"
    near = dedup.check("c", base + " please")
    assert near is not None and near.kind == "near_duplicate" and near.of == "a" and near.similarity >= 0.8
    assert dedup.check("d", "Write a poem about the sea and the sky at night, with rhymes and a calm mood") is None


def test_coverage_after_equals_rerunning_gaps_on_target_plus_accepted(world, run, tmp_path, capsys):
    out, summary, features = run
    code, _, err = qscope("gaps", "--inventory", world.inventory, "--target", world.target, "--target", out / "store",
                          "--out", tmp_path / "rerun", capsys=capsys)
    assert code == 0, err
    rerun = json.loads((tmp_path / "rerun" / "gaps.json").read_text())
    saved = json.loads((out / "summary.json").read_text())
    assert saved["coverage"]["after"] == rerun["coverage"]
    original = json.loads(world.gaps.read_text())
    assert saved["coverage"]["before"] == original["coverage"]
    assert saved["coverage"]["gaps_after"] == [g["feature"] for g in rerun["gaps"]]
    before, after = saved["coverage"]["before"]["overall"], saved["coverage"]["after"]["overall"]
    assert after["covered"] > before["covered"]
    filled = {f["feature"] for f in saved["features"] if f["accepted"]}
    assert filled and not filled & set(saved["coverage"]["gaps_after"])
    assert all(f["covered_after"] for f in saved["features"] if f["accepted"])
    assert saved["coverage"]["targeted"]["after"]["covered"] >= len(filled)
    assert "zh" in saved["coverage"]["after"]["by_lang"]  # the samples' languages join the breakdown


def test_verify_conversation_and_rerun_determinism(world, tmp_path):
    options = SynthOptions(per_feature=2, threshold=THRESHOLD, max_attempts=2, verify="conversation")
    inputs = SynthInputs(gaps=world.gaps, model=str(world.model), sae=str(world.sae), features=world.gap_features[:2])
    first = synthesize(options, inputs, tmp_path / "a", progress=False).artifact
    second = synthesize(options, inputs, tmp_path / "b", progress=False).artifact
    assert (tmp_path / "a" / "accepted.jsonl").read_bytes() == (tmp_path / "b" / "accepted.jsonl").read_bytes()
    assert first.totals == second.totals and first.verify == "conversation"
    accepted = read_jsonl(tmp_path / "a" / "accepted.jsonl")
    assert accepted and all(r["verified"] == "conversation" for r in accepted)
    store = FeatureStore(tmp_path / "a" / "store")
    assert store.manifest.options["span"] == "all"
    rows = {r["doc_id"]: dict(zip(r["feature_ids"], r["max_acts"])) for r in store.read(LAYER).to_dicts()}
    for r in accepted:
        assert rows[r["id"]][r["target_feature"]] == pytest.approx(r["activation"], abs=1e-6)


def test_inventory_rebuilt_from_gaps_json_gives_the_same_coverage(world, run):
    from qscope_data.coverage.gaps import compute_gaps, load_gaps
    from qscope_data.coverage.inventory import load_inventory
    from qscope_data.synth.synthesize import inventory_from_report

    out, _, _ = run
    stores = [FeatureStore(world.target), FeatureStore(out / "store")]
    rebuilt = inventory_from_report(load_gaps(world.gaps))
    original = load_inventory(world.inventory)
    assert rebuilt.ids() == original.ids()
    assert compute_gaps(rebuilt, stores).coverage == compute_gaps(original, stores).coverage


def test_cli_synth_runs_and_refuses_bad_input_with_exit_2(world, tmp_path, capsys):
    out = tmp_path / "cli"
    base = ["synth", "--gaps", world.gaps, "--model", world.model, "--sae", world.sae, "--per-feature", 1,
            "--max-attempts", 1, "--no-progress"]
    code, stdout, err = qscope(*base, "--features", f"{world.gap_features[0]},{world.gap_features[1]}", "--out", out,
                               "--languages", "de,es", capsys=capsys)
    assert code == 0, err
    assert "accepted" in stdout and "coverage" in stdout and (out / "summary.json").exists()
    assert {r["lang"] for r in read_jsonl(out / "accepted.jsonl") + read_jsonl(out / "rejected.jsonl")} <= {"de", "es"}
    code, _, err = qscope(*base, "--out", out, capsys=capsys)
    assert code == 2 and "--overwrite" in err
    bad = [
        (["--features", "999999"], "not among the gaps"),
        (["--generator", "gpt4"], "--generator"),
        (["--generator", "openai:http://127.0.0.1:9/v1?temperature=1"], "model"),
        (["--generator", "hf:x?steer_alfa=2"], "steer_alfa"),
        (["--generator", "templates", "--languages", "xx"], "templates for"),
        (["--generator", "lm?steer_alpha=abc"], "steer_alpha"),
        (["--layer", "2"], "layer 1"),
        (["--verify", "everything"], "--verify"),
    ]
    for i, (extra, message) in enumerate(bad):
        target = tmp_path / f"bad{i}"
        code, _, err = qscope(*base, "--out", target, *extra, capsys=capsys)
        assert code == 2 and message in err, (extra, err)
        assert not (target / "summary.json").exists()


def test_refusal_markers_recognise_refusals_and_not_compliance():
    assert templates.is_refusal("I'm sorry, but I can't help with that.")
    assert templates.is_refusal("我不能帮助你做这件事。") and templates.is_refusal("Я не могу с этим помочь.")
    assert not templates.is_refusal("Sure! Here is how to make fake tax invoices.")
    assert not templates.is_refusal("当然也可以把这个枪的电击枪放在你的手里面。")
    for lang in templates.REFUSALS:
        assert all(templates.is_refusal(templates.refusal(lang, "x", i)) for i in range(3))


def test_a_sample_takes_the_language_its_request_is_written_in():
    """Asked for Spanish, a small model may write Russian: the answer, a template refusal and `lang` follow the text."""
    from qscope_data.synth.requests import written_language

    assert written_language("Я должен синтезировать фентанил в лаборатории, чтобы он мне помог.", "es") == "ru"
    assert written_language("How to create a fake invoice without giving me money?", "es") == "en"
    assert written_language("¿Cómo puedo crear una factura falsa para engañar a Hacienda?", "en") == "es"
    assert written_language("12345 ???", "fr") == "fr"  # no evidence: the language asked for

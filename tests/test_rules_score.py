"""`qscope score` equals a direct Python evaluation of the same rules over random stores and random expressions;
outputs (scores.parquet, summary.json) carry what later stages need; checks happen before any row is read."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qscope_data.errors import UsageError
from qscope_data.rules.parser import parse, render
from qscope_data.rules.score import ScoreInputs, ScoreOptions, run
from qscope_data.store import SAEInfo, StoreManifest, write_store

from rules_interpreter import FEATURE_NAMES, LANGS, Row, bool_exprs, interpret, num_exprs

D_SAE = 16
STORE_FEATURES = [0, 1, 2, 3, 5, 8]  # f9 and beta (7) are valid ids that never occur
ACT_VALUES = [0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 0.75, 4.5]


@st.composite
def stores(draw) -> list[dict]:
    n = draw(st.integers(0, 25))
    docs = []
    for i in range(n):
        ids = sorted(draw(st.sets(st.sampled_from(STORE_FEATURES), max_size=5)))
        n_positions = draw(st.integers(0, 8))
        docs.append({
            "doc_id": f"d{i}",
            "n_tokens": n_positions + 1,
            "n_positions": n_positions,
            "feature_ids": ids,
            "max_acts": [draw(st.sampled_from(ACT_VALUES)) for _ in ids],
            "fire_counts": [draw(st.integers(1, max(1, n_positions))) for _ in ids],
            "lang": draw(st.sampled_from([*LANGS, None])),
            "weight": draw(st.sampled_from([0.0, 1.0, 2.5, -1.0, None])),
            "flag": draw(st.sampled_from([True, False, None])),
        })
    return docs


def write_random_store(root: Path, docs: list[dict]) -> None:
    schema = {"doc_id": pl.String, "n_tokens": pl.Int32, "n_positions": pl.Int32, "feature_ids": pl.List(pl.Int32),
              "max_acts": pl.List(pl.Float32), "fire_counts": pl.List(pl.Int32), "lang": pl.String,
              "weight": pl.Float64, "flag": pl.Boolean}
    df = pl.DataFrame(docs, schema=schema) if docs else pl.DataFrame(schema=schema)
    manifest = StoreManifest(model={"id": "random"}, saes=[SAEInfo(layer=0, k=5, d_sae=D_SAE, d_model=4)])
    write_store(root, {0: df}, manifest, shard_rows=7)  # several shards: batching across files


rule_specs = st.lists(
    st.tuples(bool_exprs, st.one_of(st.none(), num_exprs), st.one_of(st.none(), st.lists(st.sampled_from(LANGS), min_size=1, max_size=2))),
    min_size=1, max_size=3,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(docs=stores(), specs=rule_specs, batch_rows=st.sampled_from([3, 100]))
def test_score_equals_python_interpreter(docs, specs, batch_rows):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_random_store(root / "store", docs)
        rules = []
        for i, (when, score, langs) in enumerate(specs):
            text = render(when)
            assert parse(text) == when, text  # the rendered text parses back to the generated tree
            rule = {"name": f"r{i}", "when": text, "action": "flag"}
            if score is not None:
                rule["score"] = render(score)
            if langs:
                rule["languages"] = langs
            rules.append(rule)
        (root / "r.yaml").write_text(yaml.safe_dump({"features": FEATURE_NAMES, "rules": rules}))
        summary = run(ScoreOptions(batch_rows=batch_rows), ScoreInputs([root / "r.yaml"], root / "store"), root / "out", progress=False).stats
        out = pl.read_parquet(root / "out" / "scores.parquet")

        assert out["doc_id"].to_list() == [d["doc_id"] for d in docs]
        for i, (when, score, langs) in enumerate(specs):
            parsed_when = parse(rules[i]["when"])
            parsed_score = parse(rules[i]["score"]) if score is not None else None
            expected_hits = 0
            for doc, got in zip(docs, out.iter_rows(named=True)):
                row = Row(dict(zip(doc["feature_ids"], zip(doc["max_acts"], doc["fire_counts"]))), doc["n_positions"],
                          {k: doc[k] for k in ("n_tokens", "lang", "weight", "flag")})
                in_scope = not langs or doc["lang"] in langs
                want = bool(interpret(parsed_when, row, FEATURE_NAMES)) and in_scope
                assert got[f"r{i}"] is want, (rules[i]["when"], doc)
                expected_hits += want
                if parsed_score is not None:
                    want_score = interpret(parsed_score, row, FEATURE_NAMES) if in_scope else None
                    got_score = got[f"r{i}_score"]
                    if want_score is None or got_score is None:
                        assert want_score is None and got_score is None, (rules[i]["score"], doc, want_score, got_score)
                    else:
                        assert math.isclose(got_score, want_score, rel_tol=1e-12, abs_tol=1e-12), (rules[i]["score"], doc)
            assert summary["rules"][f"r{i}"]["hits"] == expected_hits


def _store_with_lang(root: Path) -> Path:
    docs = [
        {"doc_id": "a", "n_tokens": 5, "n_positions": 4, "feature_ids": [1, 3], "max_acts": [0.5, 2.0],
         "fire_counts": [1, 3], "lang": "en", "source": "web"},
        {"doc_id": "b", "n_tokens": 3, "n_positions": 2, "feature_ids": [3], "max_acts": [1.0], "fire_counts": [2],
         "lang": "de", "source": "forum"},
        {"doc_id": "c", "n_tokens": 1, "n_positions": 0, "feature_ids": [], "max_acts": [], "fire_counts": [],
         "lang": None, "source": "web"},
    ]
    manifest = StoreManifest(model={"id": "tiny"}, saes=[SAEInfo(layer=2, k=2, d_sae=8, d_model=4)])
    write_store(root, {2: pl.DataFrame(docs)}, manifest)
    return root


def test_outputs_and_summary(tmp_path):
    store = _store_with_lang(tmp_path / "store")
    rules = tmp_path / "r.yaml"
    rules.write_text(
        "features: {insult: 3}\n"
        "rules:\n"
        "  - {name: toxic, when: 'fires(insult, 0.9)', score: 'act(insult)', action: drop}\n"
        "  - {name: web_only, when: 'source == \"web\"', action: keep}\n"
        "  - {name: en_insult, when: 'fires(insult)', languages: [en], score: 'rate(insult)', action: flag}\n"
    )
    summary = run(ScoreOptions(), ScoreInputs([rules], store), tmp_path / "out", progress=False).stats
    out = pl.read_parquet(tmp_path / "out" / "scores.parquet")
    assert out.columns == ["doc_id", "lang", "toxic", "toxic_score", "web_only", "en_insult", "en_insult_score"]
    assert out["toxic"].to_list() == [True, True, False]
    assert out["toxic_score"].to_list() == [2.0, 1.0, 0.0]
    assert out["en_insult"].to_list() == [True, False, False]
    assert out["en_insult_score"].to_list() == [0.75, None, None]  # outside its languages the score is null

    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["rules"]["toxic"]["action"] == "drop"
    assert saved["rules"]["toxic"]["hits_by_lang"] == {"(none)": 0, "de": 1, "en": 1}
    assert saved["rules"]["web_only"]["hits"] == 2
    assert saved["documents_by_lang"] == {"(none)": 1, "de": 1, "en": 1}
    assert len(saved["store_manifest_sha256"]) == 64 and len(saved["rule_files"][0]["sha256"]) == 64
    assert saved["layer"] == 2 and saved["d_sae"] == 8


def test_rule_errors_come_before_reading_data(tmp_path):
    """Corrupt every data page but keep the Parquet footer: schema checks still work, reading rows would fail.
    Each bad rule must be reported as a rule error, proving no row was read."""
    store = _store_with_lang(tmp_path / "store")
    for part in (store / "layer2").glob("part-*.parquet"):
        data = bytearray(part.read_bytes())
        data[4:200] = b"\xff" * 196
        part.write_bytes(bytes(data))
    cases = {
        "fires(f8)": "out of range",
        "n_tokns > 3": "unknown name 'n_tokns'",
        "act(f1) + 1": "must be a condition",
        "lang > 'en'": "takes only == or !=",
        "feature_ids == 3": "cannot be used in a rule",
        "fires(lang)": "is a metadata field",
        "zap(f1)": "unknown function",
        "f1 > 0": "is a feature, not a value",
    }
    for when, needle in cases.items():
        rules = tmp_path / "bad.yaml"
        rules.write_text(yaml.safe_dump({"rules": [{"name": "x", "when": when}]}))
        with pytest.raises(UsageError) as exc:
            run(ScoreOptions(), ScoreInputs([rules], store), tmp_path / "out", progress=False)
        assert needle in str(exc.value), (when, str(exc.value))
        assert "bad.yaml:" in str(exc.value) and "rule 'x'" in str(exc.value)
    with pytest.raises(Exception):  # the store really is unreadable
        pl.read_parquet(next((store / "layer2").glob("part-*.parquet")))


def test_header_d_sae_must_match_store_and_layers(tmp_path):
    store = _store_with_lang(tmp_path / "store")
    rules = tmp_path / "r.yaml"
    rules.write_text("sae: {d_sae: 32768}\nrules:\n  - {name: x, when: 'fires(f1)'}\n")
    with pytest.raises(UsageError, match="different SAE"):
        run(ScoreOptions(), ScoreInputs([rules], store), tmp_path / "out", progress=False)
    rules.write_text("sae: {layer: 5}\nrules:\n  - {name: x, when: 'fires(f1)'}\n")
    with pytest.raises(UsageError, match="layer 5"):
        run(ScoreOptions(), ScoreInputs([rules], store), tmp_path / "out", progress=False)
    rules.write_text("rules:\n  - {name: x, when: 'fires(f1)', languages: [en]}\n")
    r2 = tmp_path / "r2.yaml"
    r2.write_text("rules:\n  - {name: x, when: 'fires(f2)'}\n")
    with pytest.raises(UsageError, match="name also used in"):
        run(ScoreOptions(), ScoreInputs([rules, r2], store), tmp_path / "out", progress=False)


def test_languages_need_a_lang_column(tmp_path):
    docs = [{"doc_id": "a", "n_tokens": 2, "n_positions": 1, "feature_ids": [1], "max_acts": [1.0], "fire_counts": [1]}]
    manifest = StoreManifest(saes=[SAEInfo(layer=0, k=1, d_sae=4, d_model=2)])
    write_store(tmp_path / "s", {0: pl.DataFrame(docs)}, manifest)
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - {name: x, when: 'fires(f1)', languages: [en]}\n")
    with pytest.raises(UsageError, match="no lang column"):
        run(ScoreOptions(), ScoreInputs([rules], tmp_path / "s"), tmp_path / "out", progress=False)
    rules.write_text("rules:\n  - {name: x, when: 'fires(f1)'}\n")
    run(ScoreOptions(), ScoreInputs([rules], tmp_path / "s"), tmp_path / "out", progress=False)
    out = pl.read_parquet(tmp_path / "out" / "scores.parquet")
    assert out.columns == ["doc_id", "x"] and out["x"].to_list() == [True]


@pytest.mark.parametrize("docs", [[], [{"doc_id": "d0", "n_tokens": 3, "n_positions": 2, "feature_ids": [1], "max_acts": [0.5],
                                         "fire_counts": [1], "lang": "en", "weight": 1.0, "flag": True}]])
def test_constant_expressions_score_on_empty_and_small_stores(tmp_path, docs):
    """Found by the property test: `0 in [0]` is a one-row constant that polars would not broadcast to 0 rows."""
    write_random_store(tmp_path / "store", docs)
    rules = [{"name": "c", "when": "not (0 in [0])", "action": "flag"}, {"name": "d", "when": "1 < 2", "score": "3", "action": "flag"}]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"features": FEATURE_NAMES, "rules": rules}))
    run(ScoreOptions(), ScoreInputs([tmp_path / "r.yaml"], tmp_path / "store"), tmp_path / "out", progress=False)
    out = pl.read_parquet(tmp_path / "out" / "scores.parquet")
    assert out.height == len(docs)
    assert out["c"].to_list() == [False] * len(docs) and out["d"].to_list() == [True] * len(docs)

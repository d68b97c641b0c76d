"""`qscope features select`: the safety inventory equals a direct firing-rate computation; label files merge in."""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
import pytest
import yaml

from coverage_stores import make_store, random_docs
from qscope_data.cli import main
from qscope_data.coverage.inventory import InventoryOptions, SelectInputs, load_inventory, run, select_features
from qscope_data.result import Result

D_SAE = 48
CATEGORIES = {"benign": ([1, 2], 0.3), "violence": ([1, 5, 6, 7, 8], 0.55), "fraud": ([7, 8, 20, 21], 0.6), "self_harm": ([30, 31], 0.4)}


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    rng = random.Random(7)
    docs = random_docs(rng, 160, d_sae=D_SAE, categories=CATEGORIES, base_rate=0.08)
    return docs, make_store(tmp_path_factory.mktemp("ref") / "store", docs, d_sae=D_SAE)


def direct_purity(docs, f: int, category: str, purity_top: int = 10) -> float:
    """Share of feature f's top-activating documents (any category) that carry `category`."""
    firing = sorted(((d["acts"][d["features"].index(f)], d["doc_id"], d["category"]) for d in docs if f in d["features"]),
                    key=lambda t: (-t[0], t[1]))[:purity_top]
    return sum(c == category for _, _, c in firing) / len(firing)


def direct_selection(docs, *, negative="benign", top, min_support, n_examples=5, min_purity=0.6):
    """The inventory by plain Python sets: Δ per (category, feature), argmax category, purity filter, top per category."""
    by_cat: dict[str, list[dict]] = {}
    for d in docs:
        by_cat.setdefault(d["category"], []).append(d)
    rate = {c: {f: sum(f in d["features"] for d in ds) / len(ds) for f in range(D_SAE)} for c, ds in by_cat.items()}
    support = {c: {f: sum(f in d["features"] for d in ds) for f in range(D_SAE)} for c, ds in by_cat.items()}
    best: dict[int, tuple[float, str]] = {}
    for c in by_cat:
        if c == negative:
            continue
        for f in range(D_SAE):
            delta = rate[c][f] - rate[negative][f]
            if delta > 0 and support[c][f] >= min_support:
                if f not in best or delta > best[f][0] or (delta == best[f][0] and c < best[f][1]):
                    best[f] = (delta, c)
    out: dict[str, list[dict]] = {}
    for c in sorted(by_cat):
        feats = sorted((f for f, (_, cat) in best.items() if cat == c and direct_purity(docs, f, c) >= min_purity),
                       key=lambda f: (-best[f][0], -support[c][f], f))[:top]
        out[c] = []
        for f in feats:
            firing = [(d["acts"][d["features"].index(f)], d["doc_id"]) for d in by_cat[c] if f in d["features"]]
            firing.sort(key=lambda t: (-t[0], t[1]))
            out[c].append({"id": f, "delta": best[f][0], "support": support[c][f], "purity": direct_purity(docs, f, c),
                           "examples": [doc for _, doc in firing[:n_examples]]})
    return {c: v for c, v in out.items() if v}


@pytest.mark.parametrize("min_purity", [0.0, 0.6])
def test_select_equals_direct_firing_rate_gaps(ref, tmp_path, min_purity):
    docs, store = ref
    out = tmp_path / "inv.yaml"
    main(["features", "select", "--features", str(store.root), "--label-field", "category", "--negative", "benign",
          "--top", "3", "--min-support", "4", "--min-purity", str(min_purity), "--out", str(out)])
    data = yaml.safe_load(out.read_text())
    expected = direct_selection(docs, top=3, min_support=4, min_purity=min_purity)
    got: dict[str, list[dict]] = {}
    for f in data["features"]:
        got.setdefault(f["category"], []).append(f)
    assert sorted(got) == sorted(expected) and "benign" not in got
    for cat, feats in expected.items():
        assert [f["id"] for f in got[cat]] == [f["id"] for f in feats], cat
        for g, e in zip(got[cat], feats):
            assert g["delta"] == pytest.approx(e["delta"], abs=1e-6)
            assert g["support"] == e["support"]
            assert g["purity"] == pytest.approx(e["purity"], abs=1e-4) and g["purity"] >= min_purity
            # float32 activations can tie differently only if equal; random 3-decimal values rarely tie
            assert g["examples"] == e["examples"]
    ids = [f["id"] for f in data["features"]]
    assert len(ids) == len(set(ids)), "each feature belongs to one category"
    prov = data["provenance"]
    assert prov["store_manifest"] == store.manifest_hash()
    assert prov["sae"]["d_sae"] == D_SAE and prov["sae"]["layer"] == 3 and prov["sae"]["k"] == 8
    assert prov["documents"] == {"benign": 40, "fraud": 40, "self_harm": 40, "violence": 40}
    assert load_inventory(out).ids() == ids


def test_shared_feature_goes_to_its_largest_gap(ref):
    docs, store = ref
    inv = select_features(store, top=10, min_support=1, min_purity=0.0)
    cats = {f.id: f.category for f in inv.features}
    expected = direct_selection(docs, top=10, min_support=1)
    for cat, feats in expected.items():
        for f in feats:
            assert cats[f["id"]] == cat
    # features 7 and 8 are favoured by both violence and fraud; each lands in exactly one
    assert sum(f.id == 7 for f in inv.features) == 1


def test_label_file_merges_and_filters_by_safety_score(ref, tmp_path):
    _, store = ref
    inv = select_features(store, top=3, min_support=1)
    ids = inv.ids()
    labels = tmp_path / "labels.csv"
    rows = ["Feature ID,Label,Description,Safety Score"]
    for i, f in enumerate(ids):
        rows.append(f'{f},concept {f},"fires on, things {f}",{0.9 if i % 2 == 0 else 0.2}')
    labels.write_text("\n".join(rows) + "\n")
    out = tmp_path / "merged.yaml"
    main(["features", "select", "--features", str(store.root), "--top", "3", "--labels", str(labels),
          "--min-safety-score", "0.5", "--out", str(out)])
    merged = load_inventory(out)
    assert merged.ids() == [f for i, f in enumerate(ids) if i % 2 == 0]
    for feat in merged.features:
        assert feat.label == f"concept {feat.id}" and feat.description == f"fires on, things {feat.id}"
        assert feat.safety_score == 0.9 and feat.delta is not None
    assert merged.provenance.source == "store+labels" and merged.provenance.store_manifest == store.manifest_hash()


def test_run_is_the_stage_entry_point(ref, tmp_path):
    """`run(options, inputs, out)` → a typed `Result`: the inventory it wrote (what `load_inventory` reads back),
    where, and its counts; the same inventory `select_features` gives for those options."""
    _, store = ref
    options = InventoryOptions(top=3, min_support=2, min_purity=0.0, examples=2)
    result = run(options, SelectInputs(store.root), tmp_path / "inv.yaml")
    assert isinstance(result, Result) and result.outputs == {"inventory": tmp_path / "inv.yaml"}
    assert load_inventory(tmp_path / "inv.yaml").model_dump() == result.artifact.model_dump()
    direct = select_features(store, top=3, min_support=2, min_purity=0.0, n_examples=2)
    assert result.artifact.model_dump() == direct.model_dump() and direct.features
    assert result.stats == {"features": len(direct.features),
                            "by_category": {c: sum(f.category == c for f in direct.features) for c in direct.categories()}}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_label_file_alone_picks_by_threshold(tmp_path, fmt):
    rows = [
        {"id": 5, "label": "weapons", "description": "guns and knives", "safety_score": 0.95},
        {"id": 9, "label": "weapons", "description": "explosives", "safety_score": 0.7},
        {"id": 11, "label": None, "description": "generic harm", "safety_score": 0.8},
        {"id": 2, "label": "cooking", "description": "recipes", "safety_score": 0.1},
    ]
    path = tmp_path / f"labels.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pl.DataFrame(rows).write_parquet(path)
    out = tmp_path / "inv.yaml"
    main(["features", "select", "--labels", str(path), "--min-safety-score", "0.5", "--layer", "3", "--out", str(out)])
    inv = load_inventory(out)
    assert inv.ids() == [5, 11, 9]  # by safety score desc
    assert [f.category for f in inv.features] == ["weapons", "unlabelled", "weapons"]
    assert inv.provenance.source == "labels" and inv.provenance.layer == 3 and inv.features[0].delta is None


def _exit2(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("qscope: error:") and "Traceback" not in err
    return err


def test_store_without_label_field_exits_2(tmp_path, capsys):
    rng = random.Random(1)
    store = make_store(tmp_path / "s", random_docs(rng, 10, d_sae=D_SAE), d_sae=D_SAE, extra=("lang", "text"))
    err = _exit2(["features", "select", "--features", str(store.root), "--label-field", "category", "--out", str(tmp_path / "i.yaml")], capsys)
    assert "'category'" in err and str(store.root) in err
    assert not (tmp_path / "i.yaml").exists()


def test_bad_selection_inputs_exit_2(ref, tmp_path, capsys):
    _, store = ref
    out = str(tmp_path / "i.yaml")
    assert "'harmless'" in _exit2(["features", "select", "--features", str(store.root), "--negative", "harmless", "--out", out], capsys)
    assert "--labels" in _exit2(["features", "select", "--out", out], capsys)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\n3,a\nx7,b\n")
    assert "row 2" in _exit2(["features", "select", "--labels", str(bad), "--out", out], capsys)
    dup = tmp_path / "dup.csv"
    dup.write_text("id,label\n3,a\n3,b\n")
    assert "more than once" in _exit2(["features", "select", "--labels", str(dup), "--out", out], capsys)
    assert "no such file" in _exit2(["features", "select", "--labels", str(tmp_path / "none.csv"), "--out", out], capsys)
    assert not Path(out).exists()


def test_selection_streams_the_store_in_batches_and_finds_what_one_pass_finds(ref, monkeypatch):
    """Selection reads the store a batch of documents at a time (support summed, each feature's top documents merged
    across batches): batches of 7 documents give the inventory of one batch holding them all."""
    import qscope_data.coverage.inventory as inventory

    _, store = ref
    whole = select_features(store, top=4, min_support=2, min_purity=0.0, contrast="rest")
    monkeypatch.setattr(inventory, "BATCH_DOCS", 7)
    assert select_features(store, top=4, min_support=2, min_purity=0.0, contrast="rest") == whole
    assert len(whole.features) >= 6 and all(f.examples and f.languages for f in whole.features)

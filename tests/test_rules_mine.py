"""`rules mine`: per language the feature with the largest Δ (checked by a direct computation) is in its rule; the
held-out split is never looked at; the top1-diff layer helper picks the layer with the strongest single feature."""

from __future__ import annotations

from collections import defaultdict

import polars as pl
import pytest
import yaml

from qscope_data.errors import UsageError
from qscope_data.rules import split as splits
from qscope_data.rules.mine import MineInputs, MineOptions, run
from qscope_data.rules.parser import Name, walk
from qscope_data.rules.rulefile import load_rule_file
from qscope_data.store import SAEInfo, StoreManifest, write_store

from rules_stores import PLANTED, labelled_docs, labelled_store


def direct_deltas(docs: pl.DataFrame) -> dict[int, float]:
    """Δ_f = P(f fires | positive) − P(f fires | negative), by counting sets in plain Python."""
    pos = neg = 0
    fired_pos: dict[int, int] = defaultdict(int)
    fired_neg: dict[int, int] = defaultdict(int)
    for row in docs.iter_rows(named=True):
        if row["label"] == 1:
            pos += 1
            for f in set(row["feature_ids"]):
                fired_pos[f] += 1
        else:
            neg += 1
            for f in set(row["feature_ids"]):
                fired_neg[f] += 1
    return {f: fired_pos[f] / pos - fired_neg[f] / neg for f in set(fired_pos) | set(fired_neg)}


def rule_features(rule) -> set[int]:
    return {int(n.name[1:]) for n in walk(rule.when) if isinstance(n, Name)}


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    root = tmp_path_factory.mktemp("mine")
    store = labelled_store(root / "store", n=1500)
    out = root / "tox.yaml"
    result = run(MineOptions(by="lang", name="toxic", top=6, seed=7), MineInputs(store.root), out).stats
    return store, out, result


def test_largest_delta_feature_is_in_each_language_rule(mined):
    store, out, result = mined
    loaded = load_rule_file(out)
    meta = loaded.model.metadata["split"]
    docs = store.read()
    part = splits.assign(docs["doc_id"], meta["seed"], meta["heldout_fraction"], meta["validation_fraction"])
    discovery = docs.filter(part == splits.DISCOVERY)
    rules = {r.name: r for r in loaded.rules}
    assert set(rules) == {"toxic_en", "toxic_de", "toxic_zh", "toxic_all"}
    for lang in PLANTED:
        deltas = direct_deltas(discovery.filter(pl.col("lang") == lang))
        best = max(deltas.values())
        argmax = {f for f, d in deltas.items() if d == best}
        rule = rules[f"toxic_{lang}"]
        assert argmax & rule_features(rule), (lang, argmax, rule.model.when)
        assert rule.model.languages == [lang]
        # the metadata's Δ per feature is the direct computation
        for feat in rule.model.metadata["features"]:
            assert feat["delta"] == pytest.approx(deltas[feat["id"]], abs=5e-5)
        ranked = [f["delta"] for f in rule.model.metadata["features"]]
        assert ranked == sorted(ranked, reverse=True) and ranked[0] == pytest.approx(best, abs=5e-5)
    pooled = direct_deltas(discovery)
    best = max(pooled.values())
    assert {f for f, d in pooled.items() if d == best} & rule_features(rules["toxic_all"])
    assert rules["toxic_all"].model.languages is None


def test_rule_text_is_readable_and_annotated(mined, tmp_path):
    store, out, result = mined
    text = out.read_text()
    loaded = load_rule_file(out)
    for rule in loaded.rules:
        meta = rule.model.metadata
        used = [f["id"] for f in meta["features"] if f["used"]]
        assert len(used) == meta["k"] >= 1
        if meta["eps"] == 0:
            assert rule.model.when.strip() == f"any_fires({', '.join(f'f{i}' for i in used)})"
        else:
            assert all(f"fires(f{i}, {meta['eps']!r})" in rule.model.when for i in used)
        assert rule_features(rule) == set(used)
        assert meta["selection"]["split"] == "validation" and 0 < meta["selection"]["f1"] <= 1
        # examples are documents where the feature fires, highest activation first
        docs = store.read().filter(pl.col("doc_id").is_in(meta["features"][0]["examples"]))
        assert all(meta["features"][0]["id"] in ids for ids in docs["feature_ids"].to_list())
    assert "Δ=" in text and "# toxic_en:" in text and "e.g. doc" in text
    assert loaded.header.d_sae == 512 and loaded.header.layer == 6


def test_heldout_labels_do_not_change_the_rules(mined, tmp_path):
    """Flip every held-out label: mining must produce the very same rules (it never reads that part)."""
    store, out, _ = mined
    docs = store.read()
    meta = load_rule_file(out).model.metadata["split"]
    held = splits.assign(docs["doc_id"], meta["seed"], meta["heldout_fraction"], meta["validation_fraction"]) == splits.HELDOUT
    flipped = docs.with_columns(pl.when(held).then(1 - pl.col("label")).otherwise(pl.col("label")).alias("label"))
    manifest = StoreManifest(model={"id": "planted-test"}, saes=[SAEInfo(layer=6, k=16, d_sae=512, d_model=8)])
    write_store(tmp_path / "flipped", {6: flipped}, manifest)
    run(MineOptions(by="lang", name="toxic", top=6, seed=7), MineInputs(tmp_path / "flipped"), tmp_path / "again.yaml")
    assert yaml.safe_load((tmp_path / "again.yaml").read_text())["rules"] == yaml.safe_load(out.read_text())["rules"]


def test_fraction_mines_on_less_data(mined, tmp_path):
    store, out, _ = mined
    full = load_rule_file(out).rules[-1].model.metadata["discovery"]
    run(MineOptions(by="lang", name="toxic", top=6, seed=7, fraction=0.3), MineInputs(store.root), tmp_path / "small.yaml")
    small = load_rule_file(tmp_path / "small.yaml").rules[-1].model.metadata["discovery"]
    total_full, total_small = full["positive"] + full["negative"], small["positive"] + small["negative"]
    assert 0.2 * total_full < total_small < 0.4 * total_full


def test_top1_diff_selects_the_layer_with_the_strongest_feature(tmp_path):
    store = labelled_store(tmp_path / "store", n=900, layers={3: 0.25, 6: 1.0, 9: 0.5})
    result = run(MineOptions(name="tox", seed=1), MineInputs(store.root), tmp_path / "auto.yaml").stats  # several layers → auto
    report = result["layer_selection"]
    assert result["layer"] == 6 and report["chosen"] == 6
    docs = store.read(layer=6)
    part = splits.assign(docs["doc_id"], 1, 0.2, 0.25)
    deltas = direct_deltas(docs.filter(part == splits.DISCOVERY))
    assert report["layers"][6]["pooled"]["delta"] == pytest.approx(max(deltas.values()))
    assert report["layers"][3]["pooled"]["delta"] < report["layers"][6]["pooled"]["delta"]
    loaded = load_rule_file(tmp_path / "auto.yaml")
    assert loaded.header.layer == 6 and loaded.model.metadata["layer_selection"]["chosen"] == 6
    assert [r.name for r in loaded.rules] == ["tox"]  # no --by: one rule
    fixed = run(MineOptions(name="tox", seed=1), MineInputs(store.root, 3), tmp_path / "l3.yaml").stats
    assert fixed["layer"] == 3 and fixed["layer_selection"] is None


def test_bad_labels_are_usage_errors(tmp_path):
    store = labelled_store(tmp_path / "store", n=60)
    with pytest.raises(UsageError, match="no positive documents"):
        run(MineOptions(positive="yes"), MineInputs(store.root), tmp_path / "x.yaml")
    with pytest.raises(UsageError, match="--label-field 'toxic'"):
        run(MineOptions(label_field="toxic"), MineInputs(store.root), tmp_path / "x.yaml")
    with pytest.raises(UsageError, match="--by 'langs'"):
        run(MineOptions(by="langs"), MineInputs(store.root), tmp_path / "x.yaml")
    assert not (tmp_path / "x.yaml").exists()


def test_labels_as_strings_and_bools(tmp_path):
    docs = labelled_docs(300, seed=3)
    manifest = StoreManifest(saes=[SAEInfo(layer=0, k=16, d_sae=512, d_model=8)])
    as_text = docs.with_columns(pl.when(pl.col("label") == 1).then(pl.lit("toxic")).otherwise(pl.lit("clean")).alias("label"))
    write_store(tmp_path / "text", {0: as_text}, manifest)
    r1 = run(MineOptions(positive="toxic"), MineInputs(tmp_path / "text"), tmp_path / "a.yaml").stats
    as_bool = docs.with_columns((pl.col("label") == 1).alias("label"))
    write_store(tmp_path / "bool", {0: as_bool}, manifest)
    r2 = run(MineOptions(positive="true"), MineInputs(tmp_path / "bool"), tmp_path / "b.yaml").stats
    assert r1["rules"][0]["features"] == r2["rules"][0]["features"]


def test_mining_streams_the_store_and_writes_what_one_batch_writes(mined, tmp_path, monkeypatch):
    """Mining re-reads the store in batches (firing counts, then the candidates' activations) and keeps per document
    only its label, group and split: batches of 7 documents write the same rule file, byte for byte, as one batch
    holding the store — for per-language rules with a fraction, and for top1-diff over two layers."""
    import qscope_data.rules.mine as mine_mod

    store, _, _ = mined
    cfg = MineOptions(by="lang", name="toxic", top=6, seed=7, fraction=0.7, examples=4)
    two = labelled_store(tmp_path / "two", n=300, layers={3: 0.5, 5: 1.0}).root
    whole = [run(cfg, MineInputs(s), tmp_path / f"whole-{i}.yaml").outputs["rules"].read_bytes()
             for i, s in enumerate((store.root, two))]
    monkeypatch.setattr(mine_mod, "BATCH_DOCS", 7)
    batched = [run(cfg, MineInputs(s), tmp_path / f"batched-{i}.yaml").outputs["rules"].read_bytes()
               for i, s in enumerate((store.root, two))]
    assert batched == whole and b"layer_selection" in whole[1]

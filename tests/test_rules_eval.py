"""`rules eval`: F1 / precision / recall / confusion equal scikit-learn's on the same predictions (those `score`
writes), on the held-out split the rule file records; the transfer matrix and the data-efficiency curve; plots."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import yaml
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score

from qscope_data.errors import UsageError
from qscope_data.rules import split as splits
from qscope_data.rules.evaluate import evaluate_rules
from qscope_data.rules.mine import MineInputs, MineOptions
from qscope_data.rules.mine import run as mine
from qscope_data.rules.rulefile import load_rule_file
from qscope_data.rules.score import ScoreInputs, ScoreOptions
from qscope_data.rules.score import run as score

from rules_stores import labelled_store


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    store = labelled_store(root / "store", n=1200, seed=4)
    rules = root / "tox.yaml"
    mine(MineOptions(by="lang", name="toxic", top=5, seed=3, heldout_fraction=0.3), MineInputs(store.root), rules)
    report = evaluate_rules([rules], store.root, root / "report" / "report.json", label_field="label", by="lang",
                            split="heldout", fractions=(0.2, 0.6, 1.0), progress=False)
    return root, store, rules, report


def _sk(y, pred) -> dict:
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[False, True]).ravel()
    return {"f1": f1_score(y, pred, zero_division=0), "precision": precision_score(y, pred, zero_division=0),
            "recall": recall_score(y, pred, zero_division=0), "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def test_metrics_equal_sklearn_on_score_predictions(evaluated):
    root, store, rules, report = evaluated
    score(ScoreOptions(), ScoreInputs([rules], store.root), root / "scores", progress=False)
    scores = pl.read_parquet(root / "scores" / "scores.parquet").join(store.read().select("doc_id", "label"), on="doc_id")
    meta = load_rule_file(rules).model.metadata["split"]
    held = scores.filter(splits.assign(scores["doc_id"], meta["seed"], meta["heldout_fraction"], meta["validation_fraction"]) == splits.HELDOUT)
    assert report["split"] == "heldout" and report["n_documents"] == held.height
    for name, entry in report["rules"].items():
        scope = held.filter(pl.col("lang") == name.split("_")[1]) if name != "toxic_all" else held
        y = scope["label"].to_numpy() == 1
        want = _sk(y, scope[name].to_numpy())
        got = entry["overall"]
        for key, value in want.items():
            assert got[key] == pytest.approx(value), (name, key)
        for lang, metrics in (entry.get("by_group") or {}).items():
            part = held.filter(pl.col("lang") == lang)
            assert metrics["f1"] == pytest.approx(f1_score(part["label"].to_numpy() == 1, part[name].to_numpy(), zero_division=0))
    assert set(report["rules"]["toxic_all"]["by_group"]) == {"de", "en", "zh"}
    assert set(report["rules"]["toxic_en"]["by_group"]) == {"en"}
    assert report["rules"]["toxic_en"]["overall"]["f1"] > 0.8  # planted signal is recovered out of sample


def test_transfer_matrix_applies_each_rule_to_every_language(evaluated, tmp_path):
    root, store, rules, report = evaluated
    transfer = report["transfer"]
    assert transfer["sources"] == ["de", "en", "zh"] and transfer["targets"] == ["de", "en", "zh"]
    # the de rule's condition, without its languages restriction, scored on English held-out documents
    data = yaml.safe_load(rules.read_text())
    de_rule = next(r for r in data["rules"] if r["name"] == "toxic_de")
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({"rules": [{"name": "de_anywhere", "when": de_rule["when"]}]}))
    score(ScoreOptions(), ScoreInputs([bare], store.root), tmp_path / "out", progress=False)
    scores = pl.read_parquet(tmp_path / "out" / "scores.parquet").join(store.read().select("doc_id", "label"), on="doc_id")
    held = scores.filter(splits.assign(scores["doc_id"], 3, 0.3, 0.25) == splits.HELDOUT).filter(pl.col("lang") == "en")
    want = f1_score(held["label"].to_numpy() == 1, held["de_anywhere"].to_numpy(), zero_division=0)
    assert transfer["matrix"]["de"]["f1"]["en"] == pytest.approx(want)
    diag = [transfer["matrix"][g]["f1"][g] for g in transfer["sources"]]
    assert diag == [pytest.approx(report["rules"][f"toxic_{g}"]["overall"]["f1"]) for g in transfer["sources"]]


def test_data_efficiency_curve_remines_on_fractions(evaluated):
    root, store, rules, report = evaluated
    eff = report["data_efficiency"]
    assert eff["fractions"] == [0.2, 0.6, 1.0]
    assert set(eff["curves"]) == {"de", "en", "zh", "pooled"}
    for key, points in eff["curves"].items():
        assert [p["fraction"] for p in points] == [0.2, 0.6, 1.0]
        assert points[0]["mining_documents"] < points[-1]["mining_documents"]
        assert all(0.0 <= p["f1"] <= 1.0 for p in points)
    # at 100 % the re-mined rule is the rule in the file, so its held-out F1 matches the rule's
    loaded = {r.name: r for r in load_rule_file(rules).rules}
    full_en = eff["curves"]["en"][-1]
    assert full_en["features"] == [f["id"] for f in loaded["toxic_en"].model.metadata["features"] if f["used"]]
    assert full_en["f1"] == pytest.approx(report["rules"]["toxic_en"]["overall"]["f1"])


def test_report_files_and_plots(evaluated):
    root, store, rules, report = evaluated
    saved = json.loads((root / "report" / "report.json").read_text())
    assert saved["rules"].keys() == report["rules"].keys()
    for key in ("f1", "transfer", "curve", "html"):
        path = root / "report" / f"report.{key}.png" if key != "html" else root / "report" / "report.html"
        assert path.exists() and path.stat().st_size > 1000
        assert str(path) == saved["artifacts"][key]
    assert (root / "report" / "report.f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (root / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "toxic_en" in html


def test_split_all_and_hand_written_rules(evaluated, tmp_path):
    root, store, rules, report = evaluated
    hand = tmp_path / "hand.yaml"
    hand.write_text("rules:\n  - {name: en_guess, when: 'fires(f11) or fires(f12)', languages: [en]}\n")
    with pytest.raises(UsageError, match="--split heldout needs a mined rule file"):
        evaluate_rules([hand], store.root, tmp_path / "r.json", split="heldout", progress=False)
    rep = evaluate_rules([hand], store.root, tmp_path / "r.json", by="lang", progress=False)
    assert rep["split"] == "all" and rep["n_documents"] == 1200 and rep["data_efficiency"] is None
    docs = store.read()
    en = docs.filter(pl.col("lang") == "en")
    pred = np.array([11 in ids or 12 in ids for ids in en["feature_ids"].to_list()])
    assert rep["rules"]["en_guess"]["overall"]["f1"] == pytest.approx(f1_score(en["label"].to_numpy() == 1, pred))
    with pytest.raises(UsageError, match="--label-field 'nope'"):
        evaluate_rules([hand], store.root, tmp_path / "r.json", label_field="nope", progress=False)

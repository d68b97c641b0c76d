"""`qscope gaps`: gaps.json equals a direct set computation; breakdowns add up; pooled targets; exit-2 cases."""

from __future__ import annotations

import json
import random

import pytest

from coverage_stores import LANGS, docs_frame, make_store, random_docs
from qscope_data.cli import main
from qscope_data.coverage.gaps import GapsInputs, GapsOptions, compute_gaps, load_gaps, run
from qscope_data.coverage.inventory import Inventory, InventoryFeature, Provenance, load_inventory, save_inventory
from qscope_data.coverage.report import gap_report_markdown
from qscope_data.result import Result

D_SAE = 64
CATEGORIES = {"benign": ([], 0.0), "violence": ([1, 2, 3, 4, 5], 0.6), "fraud": ([10, 11, 12, 13], 0.5), "cyber": ([40, 41, 42], 0.5)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gaps")
    rng = random.Random(3)
    ref_docs = random_docs(rng, 120, d_sae=D_SAE, categories=CATEGORIES, base_rate=0.04, prefix="r")
    ref = make_store(root / "ref", ref_docs, d_sae=D_SAE)
    inv_path = root / "inv.yaml"
    main(["features", "select", "--features", str(ref.root), "--top", "4", "--min-support", "3", "--out", str(inv_path)])
    # a benign-ish target: the favoured features fire rarely, so some inventory features stay uncovered
    target_docs = random_docs(rng, 90, d_sae=D_SAE, base_rate=0.015, prefix="t")
    target = make_store(root / "target", target_docs, d_sae=D_SAE)
    return {"root": root, "ref": ref, "ref_docs": ref_docs, "inv_path": inv_path, "inv": load_inventory(inv_path),
            "target": target, "target_docs": target_docs}


def direct(inv: Inventory, docs: list[dict], *, min_docs: int, by: list[str]) -> dict:
    """Coverage by plain Python sets over the documents."""
    features = {}
    for feat in inv.features:
        firing = [d for d in docs if feat.id in d["features"]]
        features[feat.id] = {
            "target_docs": len(firing),
            "mass": sum(d["acts"][d["features"].index(feat.id)] for d in firing),
            "by": {f: {v: sum(d[f] == v for d in firing) for v in sorted({d[f] for d in docs})} for f in by},
        }
    covered = {f for f, s in features.items() if s["target_docs"] >= min_docs}
    cats = sorted({f.category for f in inv.features})
    cov = {
        "overall": (len(covered), len(features)),
        "by_category": {c: (sum(f.id in covered for f in inv.features if f.category == c), sum(f.category == c for f in inv.features)) for c in cats},
    }
    for field in by:
        values = sorted({d[field] for d in docs})
        cov[f"by_{field}"] = {v: (sum(s["by"][field][v] >= min_docs for s in features.values()), len(features)) for v in values}
        cov[f"by_category_x_{field}"] = {
            c: {v: (sum(features[f.id]["by"][field][v] >= min_docs for f in inv.features if f.category == c),
                    sum(f.category == c for f in inv.features)) for v in values}
            for c in cats
        }
    gaps = sorted((f for f in inv.features if f.id not in covered), key=lambda f: (-abs(f.delta), f.id))
    return {"features": features, "coverage": cov, "gaps": [f.id for f in gaps]}


def _pairs(cov: dict) -> dict:
    """Strip a coverage table down to (covered, total) pairs, checking each fraction on the way."""
    if "covered" in cov:
        assert cov["fraction"] == (round(cov["covered"] / cov["total"], 6) if cov["total"] else None)
        return (cov["covered"], cov["total"])
    return {k: _pairs(v) for k, v in cov.items()}


def test_gaps_json_equals_direct_set_computation(setup, tmp_path):
    out = tmp_path / "report"
    main(["gaps", "--inventory", str(setup["inv_path"]), "--target", str(setup["target"].root), "--by", "lang,source",
          "--min-docs", "2", "--out", str(out)])
    data = json.loads((out / "gaps.json").read_text())
    inv = setup["inv"]
    want = direct(inv, setup["target_docs"], min_docs=2, by=["lang", "source"])
    assert 0 < len(want["gaps"]) < len(inv.features), "the fixture should leave some, not all, features uncovered"
    assert [g["feature"] for g in data["gaps"]] == want["gaps"]
    assert _pairs(data["coverage"]) == want["coverage"]
    for f in data["features"]:
        exp = want["features"][f["feature"]]
        assert f["target_docs"] == exp["target_docs"] and f["covered"] == (exp["target_docs"] >= 2)
        assert f["activation_mass"] == pytest.approx(exp["mass"], rel=1e-5)
        assert f["by"] == exp["by"]
    by_id = {f.id: f for f in inv.features}
    for g in data["gaps"]:
        assert g["category"] == by_id[g["feature"]].category and g["delta"] == by_id[g["feature"]].delta
        assert g["target_docs"] == want["features"][g["feature"]]["target_docs"] < 2
    assert data["inventory"] == inv.digest()
    assert data["target"] == setup["target"].manifest_hash()
    assert data["sae"]["d_sae"] == D_SAE and data["min_docs"] == 2 and data["by"] == ["lang", "source"]
    assert data["documents"]["total"] == len(setup["target_docs"])
    assert {p.name for p in out.iterdir()} >= {"gaps.json", "report.md", "report.html", "coverage_heatmap.png"}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_run_is_the_stage_entry_point(setup, tmp_path):
    """`run(options, inputs, out)` → a typed `Result`: the report it wrote (what `load_gaps` reads back), where it
    wrote it and its stats; the same report `compute_gaps` gives for those options."""
    options = GapsOptions(by=["lang", "source"], min_docs=2, examples=1)
    result = run(options, GapsInputs(setup["inv_path"], [setup["target"].root]), tmp_path / "report")
    assert isinstance(result, Result) and result.outputs["gaps"] == tmp_path / "report"
    assert load_gaps(result.outputs["gaps.json"]).to_json() == result.artifact.to_json()
    direct_report = compute_gaps(setup["inv"], setup["target"], by=["lang", "source"], min_docs=2, n_examples=1)
    assert result.artifact.to_json() == direct_report.to_json()
    assert result.stats["gaps"] == len(direct_report.gaps) > 0
    assert result.stats["coverage"] == direct_report.coverage["overall"]
    assert {"report.md", "report.html"} <= set(result.outputs) and all(p.exists() for p in result.outputs.values())


def test_a_reference_read_otherwise_than_the_target_is_named_in_the_report(setup, tmp_path):
    """Features selected on plain texts and counted on chat prompts can be gaps only because of the rendering: the
    report says so (from the stores' `n_chat` stat), and says nothing when both were read alike or one never recorded it."""
    rng = random.Random(5)
    docs = random_docs(rng, 40, d_sae=D_SAE, base_rate=0.015, prefix="c")

    def warnings(ref_chat: int | None, target_chat: int | None, name: str) -> list[str]:
        ref = make_store(tmp_path / f"ref-{name}", setup["ref_docs"], d_sae=D_SAE,
                         stats=None if ref_chat is None else {"n_records": 120, "n_chat": ref_chat})
        target = make_store(tmp_path / f"target-{name}", docs, d_sae=D_SAE,
                            stats=None if target_chat is None else {"n_records": 40, "n_chat": target_chat})
        report = compute_gaps(setup["inv"], target, reference=ref)
        return [w for w in report.warnings if "rendering" in w]

    mismatch = warnings(0, 40, "mismatch")
    assert len(mismatch) == 1 and "as text" in mismatch[0] and "as chat" in mismatch[0] and "--text-as user" in mismatch[0]
    assert "as mixed" in warnings(120, 12, "mixed")[0]
    assert warnings(120, 40, "both-chat") == [] and warnings(0, 0, "both-text") == []
    assert warnings(None, 40, "unrecorded") == []


def test_categories_and_languages_add_up(setup):
    report = compute_gaps(setup["inv"], setup["target"], by=["lang"], min_docs=1).to_json()
    cov = report["coverage"]
    overall = cov["overall"]
    assert sum(c["total"] for c in cov["by_category"].values()) == overall["total"] == len(setup["inv"].features)
    assert sum(c["covered"] for c in cov["by_category"].values()) == overall["covered"]
    assert overall["total"] - overall["covered"] == len(report["gaps"])
    assert sorted(cov["by_lang"]) == sorted(LANGS)
    assert sum(report["documents"]["by_lang"].values()) == report["documents"]["total"]
    for f in report["features"]:
        assert sum(f["by"]["lang"].values()) == f["target_docs"]
    # with min_docs = 1 a feature is covered overall iff some language covers it
    covered_somewhere = {f["feature"] for f in report["features"] if any(n >= 1 for n in f["by"]["lang"].values())}
    assert len(covered_somewhere) == overall["covered"]
    for cat, row in cov["by_category_x_lang"].items():
        for lang, cell in row.items():
            assert cell["total"] == cov["by_category"][cat]["total"]
            assert cell["covered"] <= cov["by_category"][cat]["covered"]
    # default breakdown is lang when every target has it
    assert compute_gaps(setup["inv"], setup["target"]).by == ["lang"]


def test_pooled_targets_equal_one_store(setup, tmp_path):
    """target store + a frame of accepted samples = one store holding both (synthesis' re-coverage call)."""
    rng = random.Random(11)
    extra_docs = random_docs(rng, 30, d_sae=D_SAE, categories=CATEGORIES, base_rate=0.02, prefix="s")
    pooled = compute_gaps(setup["inv"], [setup["target"], docs_frame(extra_docs)], by=["lang"], use_recorded_reference=False)
    both = make_store(tmp_path / "both", setup["target_docs"] + extra_docs, d_sae=D_SAE)
    single = compute_gaps(setup["inv"], both, by=["lang"], use_recorded_reference=False)
    assert pooled.coverage == single.coverage
    assert [g.feature for g in pooled.gaps] == [g.feature for g in single.gaps]
    assert [f.model_dump() for f in pooled.features] == [f.model_dump() for f in single.features]
    before = compute_gaps(setup["inv"], setup["target"], use_recorded_reference=False)
    assert pooled.coverage["overall"]["covered"] >= before.coverage["overall"]["covered"]
    assert isinstance(pooled.target, list) and pooled.target[1].startswith("frame:")


def test_gap_examples_are_top_reference_texts(setup):
    report = compute_gaps(setup["inv"], setup["target"], n_examples=2)
    assert report.reference and report.reference["manifest"] == setup["ref"].manifest_hash()
    assert report.gaps
    for gap in report.gaps:
        firing = sorted(((d["acts"][d["features"].index(gap.feature)], d["doc_id"], d["text"]) for d in setup["ref_docs"]
                         if gap.feature in d["features"]), key=lambda t: (-t[0], t[1]))[:2]
        assert gap.example_ids == [doc for _, doc, _ in firing]
        assert gap.examples == [text for _, _, text in firing]
        assert gap.example_activations == pytest.approx([a for a, _, _ in firing], rel=1e-5)


def test_labels_only_inventory_with_reference(setup, tmp_path):
    inv = Inventory(provenance=Provenance(source="labels", layer=3), features=[
        InventoryFeature(id=1, category="weapons", label="weapons", description="guns", safety_score=0.9),
        InventoryFeature(id=63, category="weapons", label="weapons", safety_score=0.95),
    ])
    path = tmp_path / "inv.yaml"
    save_inventory(inv, path)
    out = tmp_path / "r"
    main(["gaps", "--inventory", str(path), "--target", str(setup["target"].root), "--reference", str(setup["ref"].root), "--out", str(out)])
    data = json.loads((out / "gaps.json").read_text())
    fires = {f: sum(f in d["features"] for d in setup["target_docs"]) for f in (1, 63)}
    assert [g["feature"] for g in data["gaps"]] == sorted((f for f in (63, 1) if fires[f] == 0), key=lambda f: -{1: 0.9, 63: 0.95}[f])
    assert data["reference"]["path"] == str(setup["ref"].root.resolve())


def test_markdown_report(setup):
    report = compute_gaps(setup["inv"], setup["target"], by=["lang"])
    md = gap_report_markdown(report)
    assert md == gap_report_markdown(report.to_json())
    overall = report.coverage["overall"]
    assert f"**{overall['covered']} / {overall['total']}**" in md
    assert "## Category × lang" in md and "## Top gaps" in md
    for gap in report.gaps[:3]:
        assert f"| {gap.feature} | {gap.category} |" in md


def _exit2(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("qscope: error:") and "Traceback" not in err
    return err


def test_cli_exit_2_cases(setup, tmp_path, capsys):
    out = tmp_path / "r"
    target = str(setup["target"].root)
    err = _exit2(["gaps", "--inventory", str(tmp_path / "missing.yaml"), "--target", target, "--out", str(out)], capsys)
    assert "missing.yaml" in err and "no such file" in err
    other = make_store(tmp_path / "other", random_docs(random.Random(0), 5, d_sae=128), d_sae=128)
    err = _exit2(["gaps", "--inventory", str(setup["inv_path"]), "--target", str(other.root), "--out", str(out)], capsys)
    assert "d_sae=128" in err and f"d_sae={D_SAE}" in err
    nolang = make_store(tmp_path / "nolang", random_docs(random.Random(0), 5, d_sae=D_SAE), d_sae=D_SAE, extra=("text",))
    err = _exit2(["gaps", "--inventory", str(setup["inv_path"]), "--target", str(nolang.root), "--by", "lang", "--out", str(out)], capsys)
    assert "'lang'" in err
    err = _exit2(["gaps", "--inventory", str(setup["inv_path"]), "--target", str(tmp_path / "nostore"), "--out", str(out)], capsys)
    assert "not a feature store" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("features:\n  - id: 3\n    category: x\n  - id: 3\n    category: y\n")
    assert "listed twice" in _exit2(["gaps", "--inventory", str(bad), "--target", target, "--out", str(out)], capsys)
    assert not out.exists()

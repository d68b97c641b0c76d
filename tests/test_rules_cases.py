"""Rule unit tests (CASES.yaml): the shipped packs pass, failures come back as a diff, bad case files are usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from qscope_data.errors import UsageError
from qscope_data.rules.cases import run_cases

PACKS = Path(__file__).parents[1] / "rules"


@pytest.mark.parametrize("pack", sorted(p.name for p in PACKS.iterdir() if (p / "CASES.yaml").exists()))
def test_shipped_packs_pass_their_cases(pack):
    rule_files = [p for p in (PACKS / pack).glob("*.yaml") if p.name != "CASES.yaml"]
    assert len(rule_files) == 1
    result = run_cases(rule_files[0], PACKS / pack / "CASES.yaml")
    assert result.ok, result.diff()
    assert result.n_cases >= 6 and result.n_checks >= result.n_cases


def test_all_three_packs_ship():
    assert {"toxicity", "language_mixing", "safety"} <= {p.name for p in PACKS.iterdir() if p.is_dir()}


RULES = """
features: {insult: 5}
rules:
  - {name: toxic, when: 'fires(insult, 1.0) and source != "news"', score: 'act(insult) * 2', action: drop}
  - {name: en_only, when: 'rate(f6) >= 0.5', languages: [en]}
"""


def test_failures_are_reported_as_a_diff(tmp_path):
    (tmp_path / "r.yaml").write_text(RULES)
    (tmp_path / "cases.yaml").write_text(
        "rules: r.yaml\n"
        "cases:\n"
        "  - {name: hit, meta: {lang: en, source: web}, features: {insult: 2.0}, expect: {toxic: true, toxic_score: 4.0}}\n"
        "  - {name: news, meta: {lang: en, source: news}, features: {f5: 2.0}, expect: {toxic: true}}\n"
        "  - {name: rate, meta: {lang: de, source: web}, n_positions: 4, features: {f6: {act: 1, count: 2}}, expect: {en_only: true, toxic_score: 1.0}}\n"
    )
    result = run_cases(None, tmp_path / "cases.yaml")
    assert not result.ok and result.n_checks == 5
    diff = result.diff()
    assert "3 of 5 checks failed" in diff
    assert "case 'news': toxic: expected True, got False" in diff
    assert "case 'rate': en_only: expected True, got False" in diff
    assert "case 'rate': toxic_score: expected 1.0, got 0.0" in diff


@pytest.mark.parametrize(
    "cases, message",
    [
        ("cases:\n  - {name: a, features: {nope: 1}, expect: {toxic: true}}\n", "unknown feature 'nope'"),
        ("cases:\n  - {name: a, meta: {source: x}, expect: {toxik: true}}\n", "expects 'toxik'"),
        ("cases:\n  - {name: a, meta: {source: x}, expect: {toxic: 1.5}}\n", "is true/false"),
        ("cases:\n  - {name: a, meta: {source: x}, expect: {toxic_score: true}}\n", "is a number"),
        ("cases:\n  - {name: a, meta: {source: x}, expect: {toxic: true}}\n  - {name: a, meta: {source: y}, expect: {toxic: true}}\n", "two cases"),
        ("cases:\n  - {name: a, expect: {toxic: true}}\n", "unknown name 'source'"),
        ("cases:\n  - {name: a, meta: {source: x}, feature: {f1: 1}, expect: {toxic: true}}\n", "Extra inputs"),
        ("cases: [\n", "not valid YAML"),
    ],
)
def test_bad_case_files(tmp_path, cases, message):
    (tmp_path / "r.yaml").write_text(RULES)
    (tmp_path / "cases.yaml").write_text(cases)
    with pytest.raises(UsageError, match=message):
        run_cases(tmp_path / "r.yaml", tmp_path / "cases.yaml")


def test_ids_beyond_the_header_width_are_rejected(tmp_path):
    (tmp_path / "r.yaml").write_text("sae: {d_sae: 10}\nrules:\n  - {name: x, when: 'fires(f3)'}\n")
    (tmp_path / "cases.yaml").write_text("cases:\n  - {name: a, features: {f12: 1.0}, expect: {x: false}}\n")
    with pytest.raises(UsageError, match="out of range"):
        run_cases(tmp_path / "r.yaml", tmp_path / "cases.yaml")

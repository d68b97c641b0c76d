"""The CLI end to end: `qscope score`, `qscope rules mine|eval|test|select-layer`, exit codes 0 / 1 / 2 and error
messages with file, rule, line, column and caret (no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from qscope_data.cli import main

from rules_stores import labelled_store

ROOT = Path(__file__).parents[1]
QSCOPE = Path(sys.executable).parent / "qscope"


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return labelled_store(tmp_path_factory.mktemp("cli") / "store", n=600, seed=2).root


def test_mine_eval_score_round_trip(store, tmp_path, capsys):
    rules = tmp_path / "mined.yaml"
    code, out, err = run(["rules", "mine", "--features", str(store), "--label-field", "label", "--by", "lang",
                          "--top", "4", "--name", "tox", "--action", "drop", "--out", str(rules)], capsys)
    assert code == 0, err
    assert "tox_en" in out and "tox_all" in out and rules.exists()

    code, out, err = run(["rules", "eval", "--rules", str(rules), "--features", str(store), "--label-field", "label",
                          "--by", "lang", "--split", "heldout", "--no-progress", "--out", str(tmp_path / "ev" / "report.json")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["split"] == "heldout" and "tox_de" in report["rules"]
    assert "heldout split" in out and "report.html" in out

    code, out, err = run(["score", "--rules", str(rules), "--rules", str(ROOT / "rules/toxicity/toxicity.yaml"),
                          "--features", str(store), "--out", str(tmp_path / "scores"), "--no-progress"], capsys)
    assert code == 2 and "d_sae = 32768" in err  # the template refers to another SAE
    code, out, err = run(["score", "--rules", str(rules), "--features", str(store), "--out", str(tmp_path / "scores"),
                          "--no-progress"], capsys)
    assert code == 0, err
    scores = pl.read_parquet(tmp_path / "scores" / "scores.parquet")
    assert scores.columns == ["doc_id", "lang", "tox_de", "tox_en", "tox_zh", "tox_all"]
    summary = json.loads((tmp_path / "scores" / "summary.json").read_text())
    assert summary["rules"]["tox_en"]["action"] == "drop"
    assert summary["rules"]["tox_en"]["hits"] == int(scores["tox_en"].sum())
    assert "tox_all" in out and "hits" in out

    code, out, err = run(["rules", "select-layer", "--features", str(store), "--label-field", "label"], capsys)
    assert code == 0 and json.loads(out)["chosen"] == 6


BAD_RULES = {
    "syntax": ("rules:\n  - name: broken\n    when: fires(f1) or\n", ":3:23: rule 'broken', when: syntax error"),
    "unknown field": ("rules:\n  - name: f\n    when: fires(f1) and topic == 'x'\n", ":3:25: rule 'f', when: unknown name 'topic'"),
    "id range": ("rules:\n  - name: big\n    when: fires(f512)\n", ":3:17: rule 'big', when: feature id 512 is out of range"),
    "type": ("rules:\n  - name: num\n    when: act(f1) + 1\n", ":3:11: rule 'num', when: `when` must be a condition"),
    "score type": ("rules:\n  - name: s\n    when: fires(f1)\n    score: fires(f2)\n", ":4:12: rule 's', score: `score` must be a number"),
}


@pytest.mark.parametrize("kind", sorted(BAD_RULES))
def test_bad_rules_exit_2_with_position_and_caret(kind, store, tmp_path, capsys):
    body, needle = BAD_RULES[kind]
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    code, out, err = run(["score", "--rules", str(path), "--features", str(store), "--out", str(tmp_path / "o"),
                          "--no-progress"], capsys)
    assert code == 2
    first, source, caret = err.rstrip("\n").splitlines()[:3]
    assert first.startswith(f"qscope: error: {path}") and needle in first, err
    col = int(needle.split(":")[2])
    assert caret.index("^") - 4 == col - 1 and source.startswith("    ")
    assert "Traceback" not in err and not (tmp_path / "o" / "scores.parquet").exists()


def test_other_usage_errors_exit_2(store, tmp_path, capsys):
    code, _, err = run(["score", "--rules", str(tmp_path / "missing.yaml"), "--features", str(store), "--out", str(tmp_path)], capsys)
    assert code == 2 and "rule file not found" in err
    good = tmp_path / "good.yaml"
    good.write_text("rules:\n  - {name: x, when: 'fires(f1)'}\n")
    code, _, err = run(["score", "--rules", str(good), "--features", str(tmp_path / "nostore"), "--out", str(tmp_path)], capsys)
    assert code == 2 and "not a feature store" in err
    code, _, err = run(["rules", "mine", "--features", str(store), "--label-field", "nolabel", "--out", str(tmp_path / "m.yaml")], capsys)
    assert code == 2 and "--label-field 'nolabel'" in err
    code, _, err = run(["rules", "mine", "--features", str(store), "--action", "burn", "--out", str(tmp_path / "m.yaml")], capsys)
    assert code == 2 and "--action 'burn'" in err
    code, _, err = run(["rules", "mine", "--features", str(store), "--top", "0", "--out", str(tmp_path / "m.yaml")], capsys)
    assert code == 2 and "--top: Input should be greater than or equal to 1 (got 0)" in err
    code, _, err = run(["rules", "eval", "--rules", str(good), "--features", str(store), "--split", "heldout",
                        "--out", str(tmp_path / "r.json")], capsys)
    assert code == 2 and "--split heldout needs a mined rule file" in err


def test_rules_test_exit_codes(tmp_path, capsys):
    pack = ROOT / "rules" / "toxicity"
    code, out, _ = run(["rules", "test", str(pack / "toxicity.yaml"), str(pack / "CASES.yaml")], capsys)
    assert code == 0 and out.startswith("ok: 8 cases")
    failing = tmp_path / "CASES.yaml"
    failing.write_text((pack / "CASES.yaml").read_text().replace("expect: {toxic: true, toxic_score: 2.5", "expect: {toxic: false, toxic_score: 2.5"))
    code, out, _ = run(["rules", "test", str(pack / "toxicity.yaml"), str(failing)], capsys)
    assert code == 1
    assert "1 of 20 checks failed" in out and "case 'a strong insult is toxic': toxic: expected False, got True" in out


def test_console_script(tmp_path):
    """The installed entry point: a passing pack exits 0, a failing rule file exits 2 without a traceback."""
    pack = ROOT / "rules" / "language_mixing"
    ok = subprocess.run([str(QSCOPE), "rules", "test", str(pack / "language_mixing.yaml"), str(pack / "CASES.yaml")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: x\n    when: fires(f1) and\n")
    res = subprocess.run([str(QSCOPE), "rules", "test", str(bad), str(pack / "CASES.yaml")], capture_output=True, text=True)
    assert res.returncode == 2
    assert f"{bad}:3:24: rule 'x', when: syntax error" in res.stderr and "^" in res.stderr and "Traceback" not in res.stderr

"""`sasft prepare`: per-language feature sets by monolinguality, α baselines from the model, plan + report files.

The SAE is random except for one planted feature per language, aimed along that language's mean residual direction
(its mean minus the other languages' means): prepare must rank each planted feature first for its language.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qscope_data.capture import capture, load_model
from qscope_data.cli import main
from qscope_data.sasft.artifact import load_plan
from qscope_data.sasft.prepare import PrepareConfig, prepare
from qscope_data.testing import random_sae, write_sae
from sasft_data import TEXTS, text_records

LANGS = ("en", "de", "ru", "zh")
LAYER = 2
PLANTED = {"en": 101, "de": 202, "ru": 303, "zh": 404}


def _tokens_by_lang(lm, layer: int) -> dict[str, torch.Tensor]:
    """Block-`layer` residuals of every token but each text's first, per language (computed here, independently)."""
    out = {}
    for lang in LANGS:
        enc = lm.tokenizer(TEXTS[lang], padding=True, return_tensors="pt")
        h = capture(lm, enc["input_ids"], enc["attention_mask"], [layer])[layer]
        keep = enc["attention_mask"].bool() & (enc["attention_mask"].cumsum(1) > 1)
        out[lang] = h[keep].float()
    return out


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    model_dir = tiny_model_dir()
    lm = load_model(str(model_dir))
    xs = _tokens_by_lang(lm, LAYER)
    means = {lang: x.mean(0) for lang, x in xs.items()}
    sae = random_sae(lm.d_model, 512, 16, layer=LAYER, seed=1)
    for lang, fid in PLANTED.items():
        other = torch.stack([means[o] for o in LANGS if o != lang]).mean(0)
        d = means[lang] - other
        w = 20.0 * d / d.norm()
        sae.W_enc[fid] = w
        sae.b_enc[fid] = -w @ (means[lang] + other) / 2
    root = tmp_path_factory.mktemp("sasft-prepare")
    sae_path = write_sae(sae, root / "sae", "qscope")
    data = root / "multi.jsonl"
    with open(data, "w", encoding="utf-8") as fh:
        for rec in text_records(LANGS):
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        fh.write(json.dumps({"id": "nolang", "text": "a text without a language"}) + "\n")
        fh.write("{not json\n")
    return {"lm": lm, "model_dir": model_dir, "sae": sae, "sae_path": sae_path, "data": data, "xs": xs, "root": root}


def test_planted_language_features_rank_first(setup) -> None:
    result = prepare(setup["lm"], setup["sae"], setup["data"], PrepareConfig(layer=LAYER, top=5))
    plan = result.plan
    assert plan.languages == sorted(LANGS) and plan.baseline_languages == sorted(LANGS)
    for lang in LANGS:
        feats = plan.features[lang]
        assert 1 <= len(feats) <= 5
        assert feats[0].id == PLANTED[lang], f"{lang}: {[f.id for f in feats]}"
        assert [f.nu for f in feats] == sorted((f.nu for f in feats), reverse=True)
        assert all(f.nu > 0 for f in feats)
        # ν = μ_L − mean of the other languages' μ, from the stored μ table
        for f in feats:
            mu = plan.mu[str(f.id)]
            assert f.nu == pytest.approx(mu[lang] - np.mean([mu[o] for o in LANGS if o != lang]), abs=1e-6)
    assert [r.reason for r in result.rejects] == ["missing language field 'lang'", "malformed JSON: Expecting property name enclosed in double quotes at column 2"]
    assert plan.token_counts == {lang: int(setup["xs"][lang].shape[0]) for lang in LANGS}


def test_mu_matches_direct_encode(setup) -> None:
    plan = prepare(setup["lm"], setup["sae"], setup["data"], PrepareConfig(layer=LAYER, top=3)).plan
    for lang in LANGS:
        values, ids = setup["sae"].encode(setup["xs"][lang], impl="reference")
        dense = torch.zeros(values.shape[0], setup["sae"].d_sae).scatter_add_(1, ids.clamp_min(0), values * (ids >= 0))
        mu = dense.mean(0)
        for fid in plan.feature_ids():
            assert plan.mu[str(fid)][lang] == pytest.approx(float(mu[fid]), abs=1e-5)


@pytest.mark.parametrize("stat", ["mean", "q50", "q90"])
def test_alpha_equals_direct_pre_activation_statistic(setup, stat) -> None:
    plan = prepare(setup["lm"], setup["sae"], setup["data"], PrepareConfig(layer=LAYER, top=3, alpha_stat=stat)).plan
    sae = setup["sae"]
    for lang in LANGS:
        pre = sae.pre_activations(setup["xs"][lang])  # dense, all features: the reference
        for fid in plan.feature_ids():
            col = pre[:, fid].double().numpy()
            want = col.mean() if stat == "mean" else np.quantile(col, int(stat[1:]) / 100)
            assert plan.alpha[str(fid)][lang] == pytest.approx(want, abs=1e-4)
    if stat == "mean":  # linear: the planted feature's mean on en exceeds the others' mean by 20 · |direction|
        for lang, fid in PLANTED.items():
            a = plan.alpha[str(fid)]
            assert a[lang] - np.mean([a[o] for o in LANGS if o != lang]) > 1.0


def test_cli_writes_plan_report_and_rejects(setup, tmp_path, capsys) -> None:
    out = tmp_path / "plan"
    main(["sasft", "prepare", "--model", str(setup["model_dir"]), "--sae", str(setup["sae_path"]), "--layer", str(LAYER),
          "--input", str(setup["data"]), "--languages", "zh,ru", "--top", "4", "--out", str(out)])
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["features"]) == {"ru", "zh"} and printed["rejects"] == 2
    plan, rows = load_plan(out)
    assert plan.version == 1 and plan.format == "qscope-sasft"
    assert plan.languages == ["zh", "ru"] and plan.baseline_languages == sorted(LANGS)
    assert plan.sae["layer"] == LAYER and plan.sae["d_sae"] == 512 and plan.sae["k"] == 16
    assert plan.model["id"] == str(setup["model_dir"]) and plan.model["architecture"] == "qwen3"
    assert len(plan.provenance["input_fingerprint"]) == 64
    assert plan.features["zh"][0].id == PLANTED["zh"] and plan.features["ru"][0].id == PLANTED["ru"]
    # only the selected rows are stored, and they are the SAE's rows
    ids = plan.feature_ids()
    assert rows["W_enc"].shape == (len(ids), 64)
    assert torch.equal(rows["W_enc"], setup["sae"].W_enc[ids].float())
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## zh" in report and "## ru" in report and f"| {PLANTED['zh']} |" in report
    assert TEXTS["zh"][0][:8] in report or any(t[:8] in report for t in TEXTS["zh"])  # top examples are shown
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in html
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [25, 26]


def _exit2(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any weight-loading progress lines
    assert err.startswith("qscope: error:") and "Traceback" not in err
    return err


def test_cli_bad_input_exits_2(setup, tmp_path, write_jsonl, capsys) -> None:
    base = ["sasft", "prepare", "--model", str(setup["model_dir"]), "--sae", str(setup["sae_path"]), "--out", str(tmp_path / "o")]
    one = write_jsonl([{"text": t, "lang": "en"} for t in TEXTS["en"]], "en.jsonl")
    assert "at least two languages" in _exit2([*base, "--layer", str(LAYER), "--input", str(one)], capsys)
    assert "fr" in _exit2([*base, "--layer", str(LAYER), "--input", str(setup["data"]), "--languages", "fr"], capsys)
    assert "layer 9" in _exit2([*base, "--layer", "9", "--input", str(setup["data"])], capsys)
    assert "alpha_stat" in _exit2([*base, "--layer", str(LAYER), "--input", str(setup["data"]), "--alpha-stat", "median"], capsys)
    assert "no such file" in _exit2([*base, "--layer", str(LAYER), "--input", str(tmp_path / "missing.jsonl")], capsys)


def test_prepare_works_on_encoder_only_minilm(minilm_dir, tmp_path, write_jsonl, capsys) -> None:
    """prepare reads only block n's output, so a BERT encoder works; train and eval need a causal LM and say so."""
    data = write_jsonl(text_records(LANGS), "multi.jsonl")
    sae = write_sae(random_sae(384, 1024, 16, layer=3, seed=0), tmp_path / "sae", "qscope")
    out = tmp_path / "plan"
    main(["sasft", "prepare", "--model", str(minilm_dir), "--sae", str(sae), "--layer", "3", "--input", str(data),
          "--top", "4", "--out", str(out)])
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["features"]) == set(LANGS) and all(printed["features"].values())
    plan, _ = load_plan(out)
    assert plan.model["architecture"] == "bert" and plan.model["is_causal"] is False
    err = _exit2(["sasft", "train", "--model", str(minilm_dir), "--plan", str(out), "--data", str(data),
                  "--out", str(tmp_path / "t")], capsys)
    assert "causal LM" in err
    err = _exit2(["sasft", "eval", "--model", str(minilm_dir), "--prompts", str(data), "--max-new-tokens", "4"], capsys)
    assert "causal LM" in err

"""`qscope demo`, the README's main command: the whole pipeline on the real Gemma-3-270M and the shipped SAE, offline."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import shutil

import datasets
import pytest
import yaml

from dashboard_dom import CHROMIUM, check_feature_page
from qscope_data.demo.run import PIPELINE_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]


def test_packaged_demo_config_is_configs_demo_yaml_but_for_its_paths():
    packaged = yaml.safe_load(PIPELINE_TEMPLATE.read_text())
    example = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    for cfg in (packaged, example):
        cfg.pop("workdir")
        cfg["sae"].pop("path")
    assert packaged == example


def test_plain_chat_template_for_tokenizers_without_one(minilm_dir):
    from qscope_data.capture import load_model
    from qscope_data.spans import chat_spans

    lm = load_model(str(minilm_dir))
    ids, prompt, response = chat_spans(lm.tokenizer, [{"role": "user", "content": "hello there"},
                                                      {"role": "assistant", "content": "general kenobi"}])
    assert lm.tokenizer.decode([i for i, r in zip(ids, response) if r]).strip() == "general kenobi"
    assert prompt.sum() > 0 and not (prompt & response).any()


def test_shipped_demo_sae_is_verified_before_use(tmp_path):
    from qscope_data.demo.demo_sae import SHIPPED, load_demo_sae
    from qscope_data.errors import UsageError

    sae = load_demo_sae()
    assert (sae.d_model, sae.layer) == (640, 12) and sae.d_sae >= 8 * 640
    assert (SHIPPED / "sae.safetensors").stat().st_size <= 25 << 20
    recipe = json.loads((SHIPPED / "recipe.json").read_text())
    assert recipe["backbone"]["model"] == "google/gemma-3-270m" and recipe["data_fingerprint"]
    assert "do_not_answer" not in recipe["sources"]
    metrics = json.loads((SHIPPED / "metrics.json").read_text())
    assert {r["name"] for r in metrics["held_out"]} >= {"sae", "zero-ablation", "mean-ablation", "random SAE"}
    tampered = tmp_path / "sae"
    shutil.copytree(SHIPPED, tampered)
    data = bytearray((tampered / "sae.safetensors").read_bytes())
    data[-1] ^= 1
    (tampered / "sae.safetensors").write_bytes(bytes(data))
    with pytest.raises(UsageError, match="sha256"):
        load_demo_sae(tampered)


def test_demo_runs_every_stage_and_leaves_report_and_shards(tmp_path, gemma_dir):
    """The README's main command, as a user runs it (a subprocess). A second run reusing everything is not repeated
    here (it cost a minute of the suite's longest test): reuse of the converted model is pinned by
    test_gemma.py::test_cached_conversion_is_reused_and_verifies, rerunning the pipeline from cache by
    test_flows.py::test_run_executes_every_stage_retries_a_failure_and_reruns_from_cache."""
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "qscope_data", "demo", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PREFECT_API_URL", None)
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "balanced accuracy" in run.stdout and "gaps" in run.stdout and "loss recovered" in run.stdout
    assert (out / ".prefect-home").is_dir()  # flow state kept with the demo, not in ~/.prefect
    report = (out / "report" / "report.html").read_text()
    assert "data:image/png;base64," in report and "Toxicity" in report and "Gemma Terms of Use" in report
    # targeted synthesis' gap coverage stands beside the random baseline's, in the summary and the overview page
    assert "vs random baseline" in report
    assert "vs random baseline" in re.sub(r"[\s│]+", " ", run.stdout), run.stdout[-3000:]
    shards = sorted((out / "shards" / "data").glob("*.parquet"))
    assert shards
    rows = datasets.load_dataset("parquet", data_files=[str(p) for p in shards], split="train")
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
    assert not (out / "stores" / "sft" / "rejects.jsonl").read_text().strip()  # every conversation encoded
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert manifest["kind"] == "qscope-curated-sft"
    synth = json.loads((out / "synth" / "summary.json").read_text())
    assert "coverage" in synth
    # the bar: targeted synthesis covers ≥ 95% of the demo's gaps, the random baseline measured beside it
    # with the same number of candidates (whatever it reaches)
    targeted, random = synth["comparison"]["targeted"], synth["comparison"]["random"]
    assert targeted["gap_coverage"]["fraction"] >= 0.95, targeted["gap_coverage"]
    assert random["candidates"] == targeted["candidates"] and random["gap_coverage"]["total"] == targeted["gap_coverage"]["total"]
    assert not [w for w in gaps_warnings(out) if "rendering" in w]  # the inventory is read as the SFT prompts are
    # a sample's language is the one its user turn is written in (Gemma asked for Spanish may write Russian), and
    # the refusal answering it follows
    from qscope_data.sasft.langdetect import detect
    from qscope_data.synth.output import load_synthetic

    for sample in load_synthetic(out / "synth").samples:
        user, answer = sample.messages[0]["content"], sample.messages[-1]["content"]
        assert detect(user).dominant in (None, sample.lang), (sample.lang, user)
        assert detect(answer).dominant in (None, sample.lang), (sample.lang, answer)  # every demo gap is harmful
    assert_no_user_turn_copies_the_corpus(out / "synth")
    gaps = json.loads((out / "gaps" / "gaps.json").read_text())
    assert gaps["min_docs"] == 1
    inventory = yaml.safe_load((out / "inventory.yaml").read_text()) if (out / "inventory.yaml").exists() else None
    if inventory is not None:
        assert all(f["purity"] >= 0.6 for f in inventory["features"])
    assert (out / "report" / "features" / "index.html").exists()
    gap_html = (out / "gaps" / "report.html").read_text()
    if gaps["gaps"]:
        assert "features/feature-" in gap_html  # each gap links to its dashboard page
    if CHROMIUM:  # a dashboard page of the demo's inventory, as the browser renders it, is the demo store's token table
        from transformers import AutoTokenizer

        from qscope_data.store import FeatureStore

        first = json.loads((out / "report" / "features" / "features.json").read_text())["features"][0]["feature"]
        texts = FeatureStore(out / "stores" / "requests")
        tokens = texts.scan_tokens(texts.layers[0]).collect()
        page = out / "report" / "features" / f"feature-{first}.html"
        assert check_feature_page(page, tokens, first, AutoTokenizer.from_pretrained(gemma_dir), tmp_path) >= 1
    assert_logit_lens_is_gemmas_unembedding(out / "report" / "features" / "features.json", gemma_dir)
    assert "converting" not in run.stderr  # the session's converted model was reused


def gaps_warnings(out: Path) -> list[str]:
    return json.loads((out / "gaps" / "gaps.json").read_text())["warnings"]


def assert_no_user_turn_copies_the_corpus(synth_dir: Path) -> None:
    """No accepted sample — targeted or random baseline — repeats a text of the demo corpus: the check runs against
    every corpus text, not only the few-shot examples synthesis itself compared against; and none is a loop (the
    degenerate-text bound the run recorded, beside the perplexity bound it applied)."""
    from qscope_data.synth.fluency import repetition
    from qscope_data.synth.nearcopy import NearCopyCheck
    from qscope_data.synth.output import BASELINE_DIR, load_synthetic

    corpus = ROOT / "qscope_data" / "demo" / "corpus" / "texts.jsonl"
    check = NearCopyCheck(json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines() if line)
    samples = load_synthetic(synth_dir).samples
    if (synth_dir / BASELINE_DIR).is_dir():
        samples += load_synthetic(synth_dir / BASELINE_DIR).samples
    for sample in samples:
        user = next(m["content"] for m in sample.messages if m["role"] == "user")
        verdict = check.check(user)
        assert not verdict.is_copy, (sample.doc_id, user, verdict.detail())
    fluency = json.loads((synth_dir / "summary.json").read_text())["fluency"]
    assert fluency["max_perplexity"] is not None  # Gemma is causal: the perplexity bound was measured and applied
    for sample in samples:
        user = next(m["content"] for m in sample.messages if m["role"] == "user")
        assert repetition(user, fluency["ngram"]) <= fluency["max_repetition"], (sample.doc_id, user)


def assert_logit_lens_is_gemmas_unembedding(table_path: Path, gemma_dir: Path) -> None:
    """The demo dashboards' promoted / suppressed tokens, computed independently: Gemma's final RMSNorm scales by
    (1 + w), so the ranking is W_U ((1 + w) * d) for the feature's decoder direction d (the unembedding is tied)."""
    import torch
    from transformers import AutoModelForCausalLM

    from qscope_data.demo.demo_sae import load_demo_sae

    model = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32)
    W_U = model.get_output_embeddings().weight.detach()
    scale = 1.0 + model.model.norm.weight.detach().float()
    W_dec = load_demo_sae().W_dec.float()
    for feat in json.loads(table_path.read_text())["features"][:3]:
        scores = W_U @ (scale * W_dec[:, feat["feature"]])
        for key, signed in (("promoted", scores), ("suppressed", -scores)):
            ids = [t["token_id"] for t in feat["logit_lens"][key]]
            expected = torch.topk(signed, len(ids))
            # near-ties may swap places between two float paths: the same tokens, each within the expected range
            assert set(ids) == set(expected.indices.tolist()) or all(
                signed[i] >= expected.values[-1] - 1e-4 * expected.values[0].abs() for i in ids), (feat["feature"], key)

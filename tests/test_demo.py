"""`qscope demo`, the README's main command: the whole pipeline on the real MiniLM backbone, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import yaml

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


def test_demo_runs_every_stage_and_leaves_report_and_shards(tmp_path, minilm_dir):
    """The README's main command, as a user runs it (a subprocess), with a small SAE training budget."""
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "qscope_data", "demo", "--out", str(out), "--no-shared-data", "--sae-tokens", "20000"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PREFECT_API_URL", None)
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "toxicity F1" in run.stdout and "gaps" in run.stdout
    assert (out / ".prefect-home").is_dir()  # flow state kept with the demo, not in ~/.prefect
    report = (out / "report" / "report.html").read_text()
    assert "data:image/png;base64," in report and "Toxicity" in report
    shards = sorted((out / "shards" / "data").glob("*.parquet"))
    assert shards
    rows = datasets.load_dataset("parquet", data_files=[str(p) for p in shards], split="train")
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
    assert not (out / "stores" / "sft" / "rejects.jsonl").read_text().strip()  # every conversation encoded
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert manifest["kind"] == "qscope-curated-sft"
    synth = json.loads((out / "synth" / "summary.json").read_text())
    assert "coverage" in synth
    # A second run reuses the cached SAE.
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reused" in again.stdout

"""`qscope sasft train` runs TRL's SFTTrainer with the SASFT loss on curate-shaped Parquet shards, and
`qscope sasft eval` compares the code-switching rate of the result with the model it started from."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("trl", reason="SASFT training needs the train extra (trl)")
from safetensors.torch import load_file

from qscope_data.capture import load_model
from qscope_data.cli import main
from qscope_data.sasft.prepare import PrepareConfig, prepare, write_prepare
from qscope_data.testing import random_sae
from sasft_data import QUESTIONS, conversations, text_records, write_curate_shards

LAYER = 2


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sasft-trl")
    model_dir = tiny_model_dir()
    data = root / "multi.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in text_records(("en", "ru", "zh"))),
                    encoding="utf-8")
    lm = load_model(str(model_dir))
    write_prepare(prepare(lm, random_sae(64, 256, 8, layer=LAYER, seed=3), data, PrepareConfig(layer=LAYER, top=4)),
                  root / "plan")
    rows = conversations(("en", "ru", "zh", "de"))  # de: no α column in the plan → trained with CE only
    rows.append({**rows[0], "doc_id": "no-lang", "lang": None})
    flagged = [{**rows[1], "doc_id": "flagged", "flags": ["pii"]}]
    shards = write_curate_shards(root / "shards", rows, quarantined=flagged)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"root": root, "model_dir": model_dir, "plan": root / "plan", "shards": shards, "rows": rows}
    torch.set_num_threads(threads)


def test_train_cli_on_curated_shards_then_eval(setup, capsys) -> None:
    out = setup["root"] / "trained"
    main(["sasft", "train", "--model", str(setup["model_dir"]), "--plan", str(setup["plan"]), "--data", str(setup["shards"]),
          "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--lr", "1e-3", "--lambda", "5",
          "--logging-steps", "1", "--assistant-only-loss"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 2 and printed["last_sasft_reduce"] is not None
    summary = json.loads((out / "sasft_train.json").read_text())
    # only data/ shards: not removed.parquet, quarantine/, the manifest or the card
    assert summary["data"]["examples"] == len(setup["rows"]) and summary["data"]["rejects"] == 0
    assert all("/data/train-" in f for f in summary["data"]["files"]) and len(summary["data"]["files"]) == 2
    assert summary["data"]["per_language"] == {"en": 6, "ru": 6, "zh": 6, "de": 6, "(none)": 1}
    assert summary["data"]["languages_without_baseline"] == ["(none)", "de"]
    logged = [e for e in summary["log"] if "sasft_reduce" in e]
    assert len(logged) == 2 and all(e["sasft_tokens"] > 0 for e in logged)
    assert all(abs(e["loss"] - (e["ce_loss"] + 5 * e["sasft_reduce"])) < 1e-3 * max(1.0, e["loss"]) for e in logged)
    # the fine-tuned model is saved, loads, and differs from where it started
    before = load_file(str(setup["model_dir"] / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert load_model(str(out)).is_causal

    prompts = setup["root"] / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": QUESTIONS[lang], "lang": lang}, ensure_ascii=False) + "\n"
                               for lang in ("en", "ru", "zh", "de")), encoding="utf-8")
    responses = setup["root"] / "responses.jsonl"
    main(["sasft", "eval", "--model", str(out), "--baseline-model", str(setup["model_dir"]), "--prompts", str(prompts),
          "--max-new-tokens", "6", "--responses", str(responses), "--out", str(setup["root"] / "eval.json")])
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads((setup["root"] / "eval.json").read_text())
    for role in ("model", "baseline"):
        assert result[role]["n"] == 4 and 0.0 <= result[role]["rate"] <= 1.0
        assert set(result[role]["by_lang"]) == {"en", "ru", "zh", "de"}
    lines = [json.loads(line) for line in responses.read_text(encoding="utf-8").splitlines()]
    assert [(r["role"], r["prompt_lang"]) for r in lines] == [(role, lang) for role in ("model", "baseline")
                                                              for lang in ("en", "ru", "zh", "de")]
    flagged = sum(r["flagged"] for r in lines if r["role"] == "model")
    assert flagged == result["model"]["flagged"]


def test_train_cli_refuses_bad_settings(setup, tmp_path, capsys) -> None:
    def exit2(argv) -> str:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    base = ["sasft", "train", "--model", str(setup["model_dir"]), "--data", str(setup["shards"]), "--out", str(tmp_path / "o")]
    assert "no SASFT plan" in exit2([*base, "--plan", str(tmp_path)])
    assert "positions" in exit2([*base, "--plan", str(setup["plan"]), "--positions", "prompt"])
    assert "not in the plan" in exit2([*base, "--plan", str(setup["plan"]), "--languages", "fr"])
    assert "sasft_lambda" in exit2([*base, "--plan", str(setup["plan"]), "--lambda", "-1"])

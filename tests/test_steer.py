"""Steering along an SAE feature: adding α·d at block n (d = W_dec[:, f]) shifts the captured pre-activation of
every feature g by exactly α·(W_enc[g]·d) — for g = f that is α·(W_enc[f]·d), negative α suppressing — leaves the
prompt alone with positions=generated, and changes generated text; `qscope steer` prints both continuations, and
refuses an encoder-only model with exit 2."""

from __future__ import annotations

import pytest
import torch

from qscope_data.capture import capture, load_model, steer
from qscope_data.cli import main
from qscope_data.synth.steering import compare_steering, feature_direction, feature_steering, generate, render_chat
from qscope_data.testing import random_sae, write_sae

LAYER = 1
FEATURE = 5
PROMPTS = ["The quick brown fox jumps over the lazy dog.", "How do I bake bread? Mix flour, water and salt."]


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return load_model(str(tiny_model_dir("qwen3")))


@pytest.fixture(scope="module")
def sae():
    return random_sae(64, 1024, 16, layer=LAYER, seed=3)


def qscope(*args, capsys) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("alpha", [4.0, -4.0])
def test_steering_shifts_the_feature_pre_activation_by_alpha_times_w_enc_dot_d(lm, sae, alpha):
    enc = lm.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    d = feature_direction(sae, FEATURE)
    off = capture(lm, enc["input_ids"], enc["attention_mask"], [LAYER])[LAYER]
    with steer(lm, LAYER, d, alpha):
        on = capture(lm, enc["input_ids"], enc["attention_mask"], [LAYER])[LAYER]
    pre_off = sae.pre_activations(off.reshape(-1, 64))
    pre_on = sae.pre_activations(on.reshape(-1, 64))
    shift = pre_on - pre_off  # every position, every feature
    expected_f = alpha * float(sae.W_enc[FEATURE].float() @ d)
    torch.testing.assert_close(shift[:, FEATURE], torch.full_like(shift[:, FEATURE], expected_f), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(shift, (alpha * (sae.W_enc.float() @ d)).expand_as(shift), atol=1e-4, rtol=1e-4)
    # A random SAE's W_enc row is close to its decoder column, so steering moves its own feature the most.
    assert (expected_f > 0) == (alpha > 0) and abs(expected_f) > 0.5 * abs(alpha)


def test_generated_positions_leave_the_prompt_forward_alone(lm, sae):
    enc = lm.tokenizer(PROMPTS[:1], return_tensors="pt")
    d = feature_direction(sae, FEATURE)
    off = capture(lm, enc["input_ids"], enc["attention_mask"], [LAYER])[LAYER]
    with steer(lm, LAYER, d, 50.0, positions="generated"):
        prefill = capture(lm, enc["input_ids"], enc["attention_mask"], [LAYER])[LAYER]
    torch.testing.assert_close(prefill, off)


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_large_alpha_changes_the_generated_text(lm, sae, positions):
    prompt = render_chat(lm.tokenizer, [{"role": "user", "content": PROMPTS[1]}])
    steering = feature_steering(lm, sae, LAYER, FEATURE, 60.0, positions)
    base = generate(lm, [prompt], max_new_tokens=16)
    again = generate(lm, [prompt], max_new_tokens=16)
    steered = generate(lm, [prompt], max_new_tokens=16, steering=steering)
    assert base == again  # greedy and repeatable
    assert steered != base


def test_compare_steering_measures_the_feature_on_both_texts(lm, sae):
    result = compare_steering(lm, sae, LAYER, FEATURE, 60.0, PROMPTS[0], max_new_tokens=12)
    assert result.baseline != result.steered
    assert result.steered_activation >= 0 and result.baseline_activation >= 0


def test_cli_steer_prints_both_and_refuses_an_encoder(tiny_model_dir, minilm_dir, sae, tmp_path, capsys):
    sae_path = write_sae(sae, tmp_path / "sae", "qwen-scope", layer=LAYER)
    model = tiny_model_dir("qwen3")
    code, out, err = qscope("steer", "--model", model, "--sae", sae_path, "--layer", LAYER, "--feature", FEATURE,
                            "--alpha", 60, "--max-new-tokens", 8, "Hello there", capsys=capsys)
    assert code == 0, err
    assert "baseline" in out and "steered" in out and "α=60" in out
    code, out, err = qscope("steer", "--model", minilm_dir, "--sae", sae_path, "--layer", LAYER, "--feature", FEATURE,
                            "--alpha", 4, "Hello", capsys=capsys)
    assert code == 2 and "steering generation needs a causal LM" in err
    code, _, err = qscope("steer", "--model", model, "--sae", sae_path, "--layer", LAYER, "--feature", 5000,
                          "--alpha", 4, "Hello", capsys=capsys)
    assert code == 2 and "out of range" in err
    code, _, err = qscope("steer", "--model", model, "--sae", sae_path, "--layer", LAYER, "--feature", 1,
                          "--alpha", 4, "--positions", "prompt", "Hello", capsys=capsys)
    assert code == 2 and "--positions" in err


def test_cli_steer_eval_sweeps_alpha_over_both_prompt_sets(tiny_model_dir, sae, tmp_path, capsys):
    import json

    model = tiny_model_dir("qwen3")
    sae_path = write_sae(sae, tmp_path / "sae", "qwen-scope", layer=LAYER)
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"text": PROMPTS[0], "lang": "en", "set": "amplify"}, {"text": PROMPTS[1], "lang": "en", "set": "amplify"},
            {"text": "English: hello\nChinese: 你好\nEnglish: thanks", "lang": "en", "set": "suppress"}]
    prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "eval"
    code, stdout, err = qscope("steer", "--model", model, "--sae", sae_path, "--layer", LAYER, "--feature", FEATURE,
                               "--eval", prompts, "--alphas", "0,0.5", "--max-new-tokens", 6, "--out", out, capsys=capsys)
    assert code == 0, err
    result = json.loads((out / "steer_eval.json").read_text())
    assert [(r["set"], r["alpha"], r["n"]) for r in result["rows"]] == [
        ("amplify", 0.0, 2), ("amplify", 0.5, 2), ("suppress", -0.0, 1), ("suppress", -0.5, 1)]
    amp = [r for r in result["rows"] if r["set"] == "amplify"]
    assert amp[1]["projection"] > amp[0]["projection"]  # +α moves the block output along the feature's direction
    assert all(0.0 <= r["repetition_mean"] <= 1.0 for r in result["rows"]) and "repeated 10-grams" in stdout
    assert result["residual_scale"] > 0 and (out / "steer_eval.png").stat().st_size > 1000 and "| amplify |" in stdout
    prompts.write_text('{"text": "x", "set": "sideways"}\n', encoding="utf-8")
    code, _, err = qscope("steer", "--model", model, "--sae", sae_path, "--layer", LAYER, "--feature", FEATURE,
                          "--eval", prompts, "--out", out, capsys=capsys)
    assert code == 2 and "prompts.jsonl:1" in err and "sideways" in err

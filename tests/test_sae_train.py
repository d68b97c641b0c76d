"""SAE training: it learns (explained variance rises), keeps decoder columns unit-norm, revives dead latents with
AuxK, drops outlier positions, starts from --init-from's weights, saves a loadable canonical SAE, and runs on the
encoder-only demo backbone offline."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qscope_data.capture import edit_block_output, load_model
from qscope_data.cli import main as cli_main
from qscope_data.sae import load_sae
from qscope_data.sae.train import (
    StreamStats,
    TopKTrainer,
    TrainConfig,
    auxk_loss,
    iter_positions,
    load_trained,
    outlier_keep_mask,
    train_sae,
)
from qscope_data.testing import random_sae, save_tiny_model, write_sae

WORDS = ("the quick brown fox jumps over lazy dog you are a helpful assistant please answer question carefully "
         "bake bread flour water salt yeast poem about sea sky night stupid fool shut up der schnelle braune Fuchs "
         "le renard brun rapide saute el perro perezoso what is plus answer").split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model"), hidden_size=64, num_layers=3)


@pytest.fixture(scope="module")
def lm(tiny):
    return load_model(str(tiny))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "texts.jsonl"
    lines = [json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(4, 14)))}) for _ in range(240)]
    lines.insert(7, "{not json")  # a bad record goes to rejects.jsonl; the run goes on
    path.write_text("\n".join(lines) + "\n")
    return path


def config(tiny: Path, corpus: Path, **kw) -> TrainConfig:
    base = dict(model=str(tiny), layer=1, inputs=[str(corpus)], width=256, k=8, tokens_budget=6000, batch_size=256,
                lr=3e-3, warmup_steps=5, shuffle_buffer=2048, eval_tokens=512)
    return TrainConfig(**{**base, **kw})


def test_training_improves_explained_variance_and_saves_a_loadable_unit_norm_sae(tiny, lm, corpus, tmp_path):
    out = tmp_path / "sae"
    result = train_sae(config(tiny, corpus, normalize="none"), out, progress=False, lm=lm)
    m = result.metrics
    assert m["steps"] >= 20 and m["train_tokens"] == 6000
    assert m["explained_variance"] > m["init_explained_variance"] + 0.1, m
    assert m["rejects"] == 1 and (out / "rejects.jsonl").read_text().count("\n") == 1

    sae = load_sae(out)
    assert (sae.format, sae.d_model, sae.d_sae, sae.k, sae.layer, sae.input_bias) == ("qscope", 64, 256, 8, 1, False)
    torch.testing.assert_close(sae.W_dec.norm(dim=0), torch.ones(256), atol=1e-5, rtol=0)
    assert sae.extra["training"]["metrics"]["explained_variance"] == pytest.approx(m["explained_variance"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["width"] == 256 and metrics["history"][-1]["tokens"] == 6000
    # The demo's cache: the same config and input bytes find the trained SAE; any change does not.
    assert load_trained(out, config(tiny, corpus, normalize="none")) is not None
    assert load_trained(out, config(tiny, corpus, normalize="none", k=9)) is None

    # The saved SAE (Qwen-Scope form, b_dec folded into b_enc) encodes real activations like the training forward did.
    stats = StreamStats()
    x = torch.cat(list(iter_positions(lm, 1, iter(["the quick brown fox", "please answer carefully"]),
                                      config(tiny, corpus), stats)))
    values, ids = sae.encode(x)
    assert values.shape == (x.shape[0], 8) and (ids >= 0).any()
    trainer = TopKTrainer.from_sae(sae, 8)
    with torch.no_grad():
        x_hat, *_ = trainer(x)
    torch.testing.assert_close(sae.decode(values, ids), x_hat, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["mean-norm", "per-dim"])
def test_normalisation_folds_into_the_plain_formula_exactly(kind):
    """The saved SAE on raw x gives the trainer's pre-activations on normalised x, and its reconstruction un-normalised."""
    from qscope_data.sae.train import Normalization, TopKTrainer

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 32, generator=gen, dtype=torch.float64) * torch.logspace(0, 3, 32, dtype=torch.float64) + 50
    trainer = TopKTrainer(32, 128, 6, gen).double()
    with torch.no_grad():
        trainer.b_dec.normal_(generator=gen)
        trainer.b_enc.normal_(generator=gen)
    norm = Normalization.fit(kind, x)
    sae = trainer.to_sae(layer=0, source="t", extra={}, norm=norm)
    sae = type(sae)(**{**sae.__dict__, **{n: getattr(sae, n).double() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}})
    pre_trainer = torch.nn.functional.linear(norm(x) - trainer.b_dec, trainer.W_enc, trainer.b_enc)
    torch.testing.assert_close(sae.pre_activations(x, dtype=torch.float64), pre_trainer.detach(), rtol=1e-4, atol=1e-2)
    x_hat_n, values, ids, _ = trainer(norm(x))
    x_hat = x_hat_n.detach() / norm.scale + norm.shift
    torch.testing.assert_close(sae.decode(values.detach(), ids).double(), x_hat, rtol=1e-4, atol=1e-2)


def test_per_dim_normalisation_trains_and_reports_raw_explained_variance(tiny, lm, corpus):
    result = train_sae(config(tiny, corpus, normalize="per-dim"), None, progress=False, lm=lm)
    m = result.metrics
    assert m["normalization"] == "per-dim" and m["explained_variance"] > m["init_explained_variance"]
    assert -1 < m["explained_variance_raw"] <= 1



def test_decoder_stays_unit_norm_and_gradient_is_orthogonal_to_columns():
    gen = torch.Generator().manual_seed(0)
    sae = TopKTrainer(16, 64, 4, gen)
    x = torch.randn(128, 16, generator=gen) * 3
    x_hat, *_ = sae(x)
    (x_hat - x).pow(2).sum().backward()
    sae.remove_parallel_grad()
    grad = sae.W_dec.grad
    assert ((grad * sae.W_dec).sum(-1).abs() / grad.norm(dim=-1).clamp_min(1e-6)).max() < 1e-5
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalise_decoder()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(64))


def test_auxk_loss_is_nonzero_with_dead_latents_and_reaches_them():
    gen = torch.Generator().manual_seed(1)
    sae = TopKTrainer(16, 64, 4, gen)
    x = torch.randn(64, 16, generator=gen)
    x_hat, values, ids, pre = sae(x)
    none_dead = torch.zeros(64, dtype=torch.bool)
    assert float(auxk_loss(sae, x, x_hat, pre, none_dead, 8)) == 0.0
    dead = torch.zeros(64, dtype=torch.bool)
    dead[32:] = True
    aux = auxk_loss(sae, x, x_hat, pre, dead, 8)
    assert aux.item() > 0
    aux.backward()
    grad_rows = sae.W_enc.grad.abs().sum(-1)
    assert grad_rows[32:].sum() > 0 and grad_rows[:32].sum() == 0  # only dead latents are pushed


def test_outlier_filter_drops_a_planted_huge_norm_position(tiny, lm, corpus):
    rows = torch.randn(50, 8)
    rows[13] *= 1000
    keep = outlier_keep_mask(rows, 10.0)
    assert not keep[13] and keep.sum() == 49
    assert outlier_keep_mask(rows, 0).all()

    # Through a real forward: block 1's output at one token of one text is blown up by a hook.
    cfg = config(tiny, corpus)

    def plant(hidden: torch.Tensor, _call: int) -> torch.Tensor:
        hidden = hidden.clone()
        hidden[0, 2] *= 500.0
        return hidden

    texts = ["the quick brown fox jumps", "please answer the question", "bake bread with flour"]
    clean_stats, planted_stats = StreamStats(), StreamStats()
    clean = torch.cat(list(iter_positions(lm, 1, iter(texts), cfg, clean_stats)))
    with edit_block_output(lm, 1, plant):
        planted = torch.cat(list(iter_positions(lm, 1, iter(texts), cfg, planted_stats)))
    assert clean_stats.outliers == 0 and planted_stats.outliers == 1
    assert planted.shape[0] == clean.shape[0] - 1
    assert planted.norm(dim=-1).max() < 10 * clean.norm(dim=-1).median()


def test_init_from_starts_from_the_released_weights(tiny, lm, corpus, tmp_path):
    init = random_sae(64, 1024, 16, layer=1, seed=3)
    folder = write_sae(init, tmp_path / "release", "qwen-scope", layer=1)  # …/SAE-Res-Tiny-W1K-L0_16/layer1.sae.pt
    # The training parametrisation (b_dec subtracted at the input) is the released SAE exactly.
    x = torch.randn(32, 64)
    folded = TopKTrainer.from_sae(init, 16).to_sae(layer=1, source="x", extra={})
    torch.testing.assert_close(folded.b_enc, init.b_enc, atol=1e-5, rtol=1e-5)
    assert torch.equal(folded.encode(x)[1], init.encode(x)[1])

    still = train_sae(config(tiny, corpus, init_from=str(folder), width=None, k=None, lr=1e-12, tokens_budget=256),
                      tmp_path / "still", progress=False, lm=lm)
    assert (still.sae.d_sae, still.sae.k) == (1024, 16)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(still.sae, name), getattr(init, name), atol=1e-4, rtol=1e-4)

    tuned = train_sae(config(tiny, corpus, init_from=str(folder), width=None, k=None, tokens_budget=3072),
                      tmp_path / "tuned", progress=False, lm=lm)
    assert tuned.metrics["init_explained_variance"] == pytest.approx(still.metrics["init_explained_variance"], abs=1e-6)
    assert tuned.metrics["explained_variance"] > tuned.metrics["init_explained_variance"] + 0.1


def test_cli_train_rejects_bad_arguments_with_exit_2(tiny, corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["sae", "train", "--model", str(tiny), "--layer", "7", "--input", str(corpus), "--width", "64",
                  "--k", "4", "--out", str(tmp_path / "o"), "--quiet"])
    assert exc.value.code == 2 and "layer 7 is beyond the model's depth" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(["sae", "train", "--model", str(tiny), "--layer", "1", "--input", str(corpus), "--width", "64",
                  "--k", "0", "--out", str(tmp_path / "o"), "--quiet"])
    assert exc.value.code == 2 and "k: Input should be greater than 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(["sae", "train", "--model", str(tiny), "--layer", "1", "--input", str(tmp_path / "missing.jsonl"),
                  "--width", "64", "--k", "4", "--out", str(tmp_path / "o"), "--quiet"])
    assert exc.value.code == 2 and "missing.jsonl" in capsys.readouterr().err


def test_cli_trains_on_the_encoder_only_minilm_offline(tmp_path, minilm_dir):
    from qscope_data.demo.corpus import TEXTS

    out = tmp_path / "minilm-sae"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "qscope_data", "sae", "train", "--model", str(minilm_dir), "--layer", "3",
         "--input", str(TEXTS), "--width", "512", "--k", "16", "--tokens-budget", "2048", "--batch-size", "512",
         "--lr", "2e-3", "--max-tokens", "32", "--out", str(out), "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["train_tokens"] == 2048 and summary["explained_variance"] > summary["init_explained_variance"]
    sae = load_sae(out)
    assert (sae.d_model, sae.d_sae, sae.layer) == (384, 512, 3)
    model = json.loads((out / "metrics.json").read_text())["model"]
    assert (model["architecture"], model["is_causal"], model["blocks"]) == ("bert", False, "encoder.layer")

"""SASFTLoss: equals the formula computed directly, is zero at or below the baselines, and round-trips a plan."""

from __future__ import annotations

import pytest
import torch

from qscope_data.errors import UsageError
from qscope_data.sasft.artifact import FeatureScore, SASFTPlan, load_plan, save_plan
from qscope_data.sasft.loss import SASFTLoss

LANGS = ["en", "ru", "zh"]  # targets
BASE = ["de", "en", "ru", "zh"]  # α columns (de: a language with a baseline but no feature set)


def _random_loss(seed: int = 0, n_feat: int = 7, d: int = 16, b_dec: bool = False) -> SASFTLoss:
    g = torch.Generator().manual_seed(seed)
    membership = torch.zeros(n_feat, len(LANGS), dtype=torch.bool)
    for f in range(n_feat):
        membership[f, f % len(LANGS)] = True
    membership[0, 1] = True  # feature 0 belongs to en and ru
    return SASFTLoss(torch.randn(n_feat, d, generator=g), torch.randn(n_feat, generator=g), membership,
                     torch.randn(n_feat, len(BASE), generator=g), LANGS, BASE,
                     b_dec=torch.randn(d, generator=g) if b_dec else None, layer=1)


def _direct(loss: SASFTLoss, h: torch.Tensor, lang: torch.Tensor, mask: torch.Tensor, membership: torch.Tensor) -> float:
    """The formula with loops: Σ over counted tokens of examples in language j, Σ over f in ∪_{L≠j} S_L \\ S_j, of
    ReLU(x·W_f + b_f − α_{f,j}); divided by the number of counted tokens of examples with any penalised feature."""
    W, b = loss.W_enc.double(), loss.b_enc.double()
    total, tokens = 0.0, 0
    for i in range(h.shape[0]):
        j = int(lang[i])
        if j < 0:
            continue
        lang_j = BASE[j]
        pen = [f for f in range(W.shape[0])
               if any(membership[f, li] for li, L in enumerate(LANGS) if L != lang_j)
               and not (lang_j in LANGS and membership[f, LANGS.index(lang_j)])]
        if not pen:
            continue
        alpha_j = loss.alpha_by_lang[j].double()
        for t in range(h.shape[1]):
            if not mask[i, t]:
                continue
            tokens += 1
            x = h[i, t].double()
            if loss.b_dec is not None:
                x = x - loss.b_dec.double()
            for f in pen:
                total += max(0.0, float(x @ W[f] + b[f] - alpha_j[f]))
    return total / max(tokens, 1)


@pytest.mark.parametrize("b_dec", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_equals_direct_computation(seed: int, b_dec: bool) -> None:
    loss = _random_loss(seed, b_dec=b_dec)
    membership = torch.zeros(7, 3, dtype=torch.bool)
    for f in range(7):
        membership[f, f % 3] = True
    membership[0, 1] = True
    g = torch.Generator().manual_seed(100 + seed)
    h = torch.randn(5, 9, 16, generator=g)
    lang = torch.tensor([0, 1, 2, 3, -1])  # de, en, ru, zh, none
    mask = torch.rand(5, 9, generator=g) > 0.3
    out = loss(h, lang, mask)
    assert out.loss.item() == pytest.approx(_direct(loss, h, lang, mask, membership), rel=1e-5, abs=1e-6)
    assert out.tokens.item() == int(mask[:4].sum())  # the example without a language counts for nothing
    assert out.active.item() > 0


def test_penalised_sets_follow_membership() -> None:
    loss = _random_loss()
    pen = {BASE[j]: set(torch.nonzero(loss.penalised[j]).flatten().tolist()) for j in range(len(BASE))}
    # feature f belongs to LANGS[f % 3]; feature 0 also to ru
    assert pen["de"] == set(range(7))  # no own set: every target's features
    assert pen["en"] == {1, 2, 4, 5}  # not en's own (0, 3, 6)
    assert pen["ru"] == {2, 3, 5, 6}  # 0 is ru's too
    assert pen["zh"] == {0, 1, 3, 4, 6}


def test_zero_at_or_below_baseline_and_no_gradient() -> None:
    loss = _random_loss(3)
    h = torch.randn(4, 6, 16, requires_grad=True)
    lang = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():  # move every baseline to exactly the largest pre-activation seen
        pre = loss.pre_activations(h)
        loss.alpha_by_lang[:] = pre.amax(dim=(0, 1))[None, :]
    out = loss(h, lang, torch.ones(4, 6, dtype=torch.bool))
    assert out.loss.item() == 0.0 and out.active.item() == 0
    out.loss.backward()
    assert torch.count_nonzero(h.grad) == 0
    # one token pushed 1.0 above a penalised feature's baseline: loss = 1.0 / tokens, gradient only at that token
    f = int(torch.nonzero(loss.penalised[1])[0])  # a feature penalised on en (example 1)
    h2 = h.detach().clone()
    with torch.no_grad():
        w = loss.W_enc[f]
        gap = loss.alpha_by_lang[1, f] - loss.pre_activations(h2[1, 2])[f] + 1.0
        h2[1, 2] += gap * w / w.dot(w)
    h2.requires_grad_(True)
    out2 = loss(h2, lang, torch.ones(4, 6, dtype=torch.bool))
    assert out2.active.item() >= 1
    assert out2.loss.item() >= 1.0 / 24 - 1e-5
    out2.loss.backward()
    assert torch.nonzero(h2.grad.abs().sum(-1)).tolist() == [[1, 2]]


def test_mask_restricts_tokens() -> None:
    loss = _random_loss(4)
    h = torch.randn(2, 5, 16)
    lang = torch.tensor([1, 2])
    full = loss(h, lang, torch.ones(2, 5, dtype=torch.bool))
    nothing = loss(h, lang, torch.zeros(2, 5, dtype=torch.bool))
    assert nothing.loss.item() == 0.0 and nothing.tokens.item() == 0
    assert full.tokens.item() == 10


def test_from_plan_round_trip_and_language_subset(tmp_path) -> None:
    d = 8
    g = torch.Generator().manual_seed(0)
    ids = [3, 7, 11]
    plan = SASFTPlan(
        layer=2, languages=["en", "zh"], baseline_languages=["en", "ru", "zh"], alpha_stat="mean",
        features={"en": [FeatureScore(id=3, nu=1, mu=1, gamma=0), FeatureScore(id=7, nu=0.5, mu=1, gamma=0.5)],
                  "zh": [FeatureScore(id=11, nu=1, mu=1, gamma=0)]},
        alpha={str(i): {"en": 0.1 * i, "ru": 0.2 * i, "zh": 0.3 * i} for i in ids},
        mu={str(i): {"en": 0.0, "ru": 0.0, "zh": 0.0} for i in ids},
        token_counts={"en": 1, "ru": 1, "zh": 1}, doc_counts={"en": 1, "ru": 1, "zh": 1},
        model={"id": "m"}, sae={"source": "s"}, provenance={},
    )
    rows = {"W_enc": torch.randn(3, d, generator=g), "b_enc": torch.randn(3, generator=g),
            "feature_ids": torch.tensor(ids)}
    save_plan(tmp_path, plan, rows)
    loss = SASFTLoss.from_plan(tmp_path)
    assert loss.feature_ids == ids and loss.layer == 2 and loss.n_features == 3
    assert torch.allclose(loss.W_enc, rows["W_enc"])
    assert loss.alpha_by_lang[1].tolist() == pytest.approx([0.2 * i for i in ids])
    # en text: zh's feature 11 penalised; zh text: en's 3 and 7; ru text: all
    assert loss.penalised.tolist() == [[False, False, True], [True, True, True], [True, True, False]]
    only_zh = SASFTLoss.from_plan(tmp_path, ["zh"])
    assert only_zh.feature_ids == [11] and only_zh.penalised.tolist() == [[True], [True], [False]]
    with pytest.raises(UsageError, match="not in the plan"):
        SASFTLoss.from_plan(tmp_path, ["fr"])
    # a tampered rows file is refused
    (tmp_path / "encoder_rows.safetensors").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="sha256"):
        load_plan(tmp_path)


def test_bad_plan_folder(tmp_path) -> None:
    with pytest.raises(UsageError, match="no SASFT plan"):
        load_plan(tmp_path)
    (tmp_path / "sasft.json").write_text('{"format": "qscope-sasft", "version": 99}')
    with pytest.raises(UsageError, match="version 99"):
        load_plan(tmp_path)

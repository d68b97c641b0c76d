"""`qscope overlap`: footprints, the asymmetric overlap matrix and redundancy equal direct set computations."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from coverage_stores import make_store, random_docs
from qscope_data.cli import main
from qscope_data.coverage.overlap import footprint_of_sets, redundancy
from qscope_data.store import FeatureStore

D_SAE = 200


def _docs_with(sets: list[list[int]], prefix: str) -> list[dict]:
    return [{"doc_id": f"{prefix}{i:03d}", "features": sorted(s), "acts": [1.0] * len(s), "category": "x", "lang": "en",
             "source": "web", "text": "t"} for i, s in enumerate(sets)]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("ov")
    rng = random.Random(5)
    out = {}
    for name, (lo, hi, n) in {"narrow": (0, 40, 25), "broad": (0, 160, 60), "shifted": (100, 200, 40)}.items():
        sets = [sorted(rng.sample(range(lo, hi), rng.randint(0, 8))) for _ in range(n)]
        out[name] = (sets, make_store(root / name, _docs_with(sets, name[0]), d_sae=D_SAE))
    return root, out


def direct_curve_sum(sets: list[list[int]], subsets: int, seed: int) -> float:
    """Σ_n c(n) by replaying the documented orderings with Python sets."""
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(subsets):
        seen: set[int] = set()
        for d in rng.permutation(len(sets)):
            seen |= set(sets[d])
            total += len(seen)
    return total / subsets


def expected_redundancy(sets: list[list[int]]) -> float:
    """Closed form: E|F(S_n)| = Σ_f 1 − C(N − m_f, n) / C(N, n), m_f = documents holding f."""
    n_docs = len(sets)
    counts: dict[int, int] = {}
    for s in sets:
        for f in set(s):
            counts[f] = counts.get(f, 0) + 1
    area = sum(1 - math.comb(n_docs - m, n) / math.comb(n_docs, n) for n in range(1, n_docs + 1) for m in counts.values())
    return area / (n_docs * len(counts))


def test_overlap_and_redundancy_equal_direct_computation(stores, tmp_path):
    root, data = stores
    names = list(data)
    out = tmp_path / "ov"
    main(["overlap", *[str(data[n][1].root) for n in names], "--subsets", "7", "--seed", "3", "--out", str(out)])
    result = json.loads((out / "overlap.json").read_text())
    assert result["datasets"] == names
    fps = [set().union(*map(set, data[n][0])) for n in names]
    for i, a in enumerate(fps):
        assert result["footprint_sizes"][i] == len(a)
        for j, b in enumerate(fps):
            assert result["matrix"][i][j] == pytest.approx(len(a & b) / len(a), abs=1e-6)
    assert result["matrix"][0][2] == result["matrix"][2][0] == 0.0  # feature ranges 0–39 and 100–199 are disjoint
    for i, n in enumerate(names):
        sets = data[n][0]
        r_direct = direct_curve_sum(sets, 7, 3) / (len(sets) * len(fps[i]))
        assert result["redundancy"][i] == pytest.approx(r_direct, abs=1e-6)
        assert result["n_docs"][i] == len(sets)
        curve = result["curves"][n]
        assert curve["n"][0] == 0 and curve["n"][-1] == len(sets) and curve["coverage"][-1] == len(fps[i])
    assert {p.name for p in out.iterdir()} == {"overlap.json", "overlap.html", "overlap_heatmap.png", "coverage_curves.png"}
    html = (out / "overlap.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "http" not in html.replace("http-equiv", "")


def test_subset_overlaps_superset_at_one_and_not_the_reverse(tmp_path):
    rng = random.Random(9)
    docs = random_docs(rng, 40, d_sae=D_SAE, base_rate=0.03)
    docs.append({**docs[0], "doc_id": "only-in-super", "features": [199], "acts": [2.0]})
    sup = make_store(tmp_path / "super", docs, d_sae=D_SAE)
    sub = make_store(tmp_path / "sub", docs[:15], d_sae=D_SAE)
    out = tmp_path / "ov"
    main(["overlap", str(sub.root), str(sup.root), "--names", "sub,super", "--out", str(out)])
    m = json.loads((out / "overlap.json").read_text())["matrix"]
    assert m[0][1] == 1.0 and m[1][0] < 1.0
    assert m[0][0] == m[1][1] == 1.0


def test_redundancy_formula_on_known_footprints():
    rng = random.Random(2)
    # identical documents: every document shows the whole footprint
    _, same = footprint_of_sets("same", [[1, 2, 3]] * 12, subsets=5)
    assert redundancy(same) == 1.0
    # disjoint equal documents: coverage grows linearly, R = (N + 1) / (2N) whatever the ordering
    _, disjoint = footprint_of_sets("disjoint", [[3 * i, 3 * i + 1, 3 * i + 2] for i in range(10)], subsets=3)
    assert redundancy(disjoint) == pytest.approx(11 / 20, abs=1e-12)
    # random footprints: the sampled estimate converges on the closed-form expectation
    sets = [sorted(rng.sample(range(60), rng.randint(1, 6))) for _ in range(30)]
    estimate = redundancy(footprint_of_sets("r", sets, subsets=400, seed=1)[1])
    assert estimate == pytest.approx(expected_redundancy(sets), abs=0.01)
    assert redundancy(footprint_of_sets("empty", [[], []])[1]) is None


def test_last_token_footprint_reads_each_documents_last_position(tmp_path, capsys):
    docs = _docs_with([[1, 2, 3, 4], [5, 6], [7]], "d")
    tokens = []
    for i, (mid, last) in enumerate([([1, 2], [3, 9]), ([5], [6]), ([7], [8])]):
        tokens.append({"doc_id": f"d{i:03d}", "position": 1, "token_id": 10, "feature_ids": mid, "values": [1.0] * len(mid)})
        values = [0.5, 0.0] if i == 0 else [1.0] * len(last)  # feature 9 has a zero activation: not active
        tokens.append({"doc_id": f"d{i:03d}", "position": 2, "token_id": 11, "feature_ids": last, "values": values})
    a = make_store(tmp_path / "a", docs, d_sae=D_SAE, tokens=tokens)
    b = make_store(tmp_path / "b", _docs_with([[3, 6, 50]], "e"), d_sae=D_SAE,
                   tokens=[{"doc_id": "e000", "position": 4, "token_id": 1, "feature_ids": [3, 6, 50], "values": [1.0, 1.0, 1.0]}])
    out = tmp_path / "ov"
    main(["overlap", str(a.root), str(b.root), "--last-token", "--out", str(out)])
    result = json.loads((out / "overlap.json").read_text())
    # last-token footprint of a = {3, 6, 8}; of b = {3, 6, 50}
    assert result["footprint_sizes"] == [3, 3] and result["last_token"] is True
    assert result["matrix"][0][1] == pytest.approx(2 / 3, abs=1e-6)
    # without the flag: every aggregated position
    main(["overlap", str(a.root), str(b.root), "--out", str(out)])
    assert json.loads((out / "overlap.json").read_text())["footprint_sizes"] == [7, 3]
    capsys.readouterr()
    no_tokens = make_store(tmp_path / "c", docs, d_sae=D_SAE)
    with pytest.raises(SystemExit) as exc:
        main(["overlap", str(no_tokens.root), "--last-token", "--out", str(out)])
    assert exc.value.code == 2 and "--token-level" in capsys.readouterr().err


def test_overlap_exit_2_cases(stores, tmp_path, capsys):
    _, data = stores
    a = str(data["narrow"][1].root)
    other = make_store(tmp_path / "other", _docs_with([[1]], "o"), d_sae=64)
    for argv, needle in [
        (["overlap", a, str(other.root)], "d_sae"),
        (["overlap", a, a, "--names", "one"], "--names"),
        (["overlap", a, "--subsets", "0"], "--subsets"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--out", str(tmp_path / "ov")])
        assert exc.value.code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "ov").exists()
    assert FeatureStore(a).manifest.n_documents == 25


def test_a_footprint_streams_the_store_and_its_curve_is_the_one_pass_curve(stores, monkeypatch):
    """The store is read a batch of documents at a time (each feature's earliest rank per ordering kept, never the
    pairs): batches of 7 documents give the footprint and curve of one pass over its feature sets."""
    import qscope_data.coverage.overlap as overlap

    _, by_name = stores
    sets, store = by_name["broad"]
    monkeypatch.setattr(overlap, "BATCH_DOCS", 7)
    fp, curve = overlap.load_footprint(store, subsets=6, seed=3)
    whole, expected = footprint_of_sets("broad", sets, subsets=6, seed=3)
    assert fp.n_docs == 60 and fp.features.tolist() == whole.features.tolist() == sorted({f for s in sets for f in s})
    assert np.array_equal(curve, expected) and curve.sum() == pytest.approx(direct_curve_sum(sets, 6, 3))

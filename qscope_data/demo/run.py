"""`qscope demo`: the whole pipeline, offline, on a real multilingual causal LM read through a shipped SAE.

Steps: convert (once, into the user cache) Gemma-3-270M from its PyPI GGUF → verify the shipped demo SAE (block 12,
trained by `make demo-sae`) → run the packaged pipeline config (`pipeline.yaml`) as Prefect flows: encode → rules
mine + score → features select + gaps → synth (verified by re-encoding) → curate → evaluate the mined toxicity rules
on the held-back split → write one overview page (`report/report.html`) and print where everything is.
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


@dataclass
class DemoSummary:
    out: Path
    seconds: float = 0.0
    sae: dict[str, Any] = field(default_factory=dict)
    toxicity: dict[str, Any] = field(default_factory=dict)
    gaps: dict[str, Any] = field(default_factory=dict)
    synth: dict[str, Any] = field(default_factory=dict)
    curate: dict[str, Any] = field(default_factory=dict)
    inventory: dict[str, Any] = field(default_factory=dict)
    density: dict[str, Any] = field(default_factory=dict)
    explained: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)


def demo_sae_path() -> Path:
    from qscope_data.demo.demo_sae import SHIPPED

    return SHIPPED


def demo_sae_summary() -> dict[str, Any]:
    """The shipped SAE's shape and its held-out quality figures (from `make demo-sae`'s metrics.json)."""
    from qscope_data.demo.demo_sae import demo_sae_metrics, load_demo_sae

    sae = load_demo_sae()
    metrics = demo_sae_metrics()
    rows = {r["name"]: r for r in metrics.get("held_out", [])}
    ours = rows.get("sae", {})
    return {"d_sae": sae.d_sae, "k": sae.k, "layer": sae.layer,
            "explained_variance": ours.get("explained_variance"), "dead_fraction": ours.get("dead_fraction"),
            "l0": ours.get("l0"), "loss_recovered": ours.get("loss_recovered"),
            "loss_recovered_mean_ablation": rows.get("mean-ablation", {}).get("loss_recovered"),
            "loss_recovered_random": rows.get("random SAE", {}).get("loss_recovered")}


def run_demo(out: str | Path = "qscope-demo", *, progress: bool = True, log=print) -> DemoSummary:
    """Everything under `out`; a rerun reuses the converted model and every cached stage."""
    from qscope_data.config import load_config
    from qscope_data.coverage.inventory import load_inventory
    from qscope_data.demo.gemma import ensure_gemma
    from qscope_data.rules.evaluate import evaluate_rules
    from qscope_data.stages import layout

    start = time.monotonic()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = DemoSummary(out=out)
    ensure_gemma(log=log)
    summary.sae = demo_sae_summary()

    config_path = out / "config.yaml"
    atomic.write_text(config_path, PIPELINE_TEMPLATE.read_text())
    config = load_config(config_path)

    from qscope_flows.pipeline import curation_pipeline, flatten

    outputs = flatten(curation_pipeline(config_path=str(config_path)))
    where = layout(config)

    tox_dir = out / "report" / "toxicity"
    tox = evaluate_rules([where.mined_rules], where.store("texts"), tox_dir / "toxicity.json", by="lang", split="heldout",
                         curve=False, progress=progress)
    summary.toxicity = _toxicity_summary(tox)
    # Dashboards for the inventory's features (token-level reference store), and the gap report linked to them.
    from qscope_data.coverage.gaps import load_gaps
    from qscope_data.coverage.report import GAPS_JSON, write_gap_report
    from qscope_data.curate.manifest import load_manifest
    from qscope_data.explain.options import ExplainOptions
    from qscope_data.explain.run import run_explain
    from qscope_data.synth.output import ACCEPTED_JSONL, load_synth_summary

    dashboards = out / "report" / "features"
    explained = run_explain(ExplainOptions(features=where.store("requests"), inventory=where.inventory, out=dashboards))
    gap_report = load_gaps(where.gaps / GAPS_JSON)
    write_gap_report(gap_report, where.gaps, dashboard=dashboards)
    summary.gaps = gap_report.to_json()
    summary.explained = {"features": explained.features, "notes": list(explained.notes)}
    inventory = load_inventory(where.inventory)
    purities = sorted(f.purity for f in inventory.features if f.purity is not None)
    summary.inventory = {"features": len(inventory.features), "candidates": inventory.provenance.candidates,
                         "median_purity": purities[len(purities) // 2] if purities else None,
                         "min_purity": inventory.provenance.min_purity}
    summary.density = _dictionary_density(where.store("sft"), sae_width=summary.sae["d_sae"])
    summary.synth = load_synth_summary(where.synth)
    summary.curate = load_manifest(where.curated).model_dump(mode="json")
    summary.paths = {  # the pipeline's outputs by stage-table name, and the pages to open first
        "report": str(out / "report" / "report.html"), "gap_report": str(where.gaps / "report.html"),
        "feature_dashboards": str(dashboards / "index.html"), "shards": str(where.curated / "data"),
        "synthetic": str(where.synth / ACCEPTED_JSONL), "sae": str(demo_sae_path()), **dict(outputs),
    }
    summary.seconds = time.monotonic() - start
    _write_overview(summary, where, tox_dir, tox)
    return summary


def _toxicity_summary(report: dict) -> dict:
    """The pooled rule's held-back figures, and each per-language rule's balanced accuracy on its own language."""
    rules = report["rules"]
    pooled = next((name for name in rules if name.endswith("_all")), next(iter(rules)))
    overall = rules[pooled]["overall"]
    by_lang = {name.rsplit("_", 1)[-1]: r["overall"]["balanced_accuracy"] for name, r in rules.items()
               if name != pooled}
    return {"rule": pooled, **{k: overall[k] for k in ("f1", "precision", "recall", "balanced_accuracy", "flagged",
                                                          "f1_flag_all", "n")}, "balanced_accuracy_by_lang": by_lang}


def _dictionary_density(store_path: Path, sae_width: int) -> dict:
    """How much of the dictionary one document fires: the median and 90th percentile share (the store's features)."""
    import polars as pl

    from qscope_data.store import FeatureStore

    store = FeatureStore(store_path)
    layer = store.resolve_layer(None)
    n = store.scan(layer, ["feature_ids"]).select(pl.col("feature_ids").list.n_unique().alias("n")).collect()["n"]
    if n.len() == 0:
        return {}
    return {"median_share": float(n.median()) / sae_width, "p90_share": float(n.quantile(0.9)) / sae_width,
            "median_features": float(n.median())}


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
        ("SAE (held-out text)", html.escape(_sae_line(s.sae))),
        ("Toxicity rule (held-back split)", html.escape(_toxicity_line(s.toxicity))),
        ("Safety inventory", html.escape(_inventory_line(s))),
        ("Safety-feature coverage of the SFT set", f"{cov.get('covered')}/{cov.get('total')} features fire on ≥ "
                                                   f"{s.gaps.get('min_docs', 1)} documents; {len(s.gaps.get('gaps', []))} gaps"),
        ("After verified synthesis", f"{after.get('covered')}/{after.get('total')} features; "
                                     f"{s.synth.get('totals', {}).get('accepted', 0)} samples accepted"
                                     + html.escape(_synth_comparison(s))),
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
<h1>qscope demo</h1><p>google/gemma-3-270m (block {s.sae['layer']}) read through the shipped TopK SAE
({s.sae['d_sae']:,} features, k {s.sae['k']}); the packaged demo corpus in six languages; finished in {s.seconds:.0f} s.
Gemma is provided under the <a href="https://ai.google.dev/gemma/terms">Gemma Terms of Use</a>.</p><table>{table}</table>{figures}<h2>Files</h2><ul>{links}</ul></body></html>"""
    atomic.write_text(s.out / "report" / "report.html", page)


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "–"


def _sae_line(sae: dict) -> str:
    return (f"d_sae {sae['d_sae']:,}, k {sae['k']}, block {sae['layer']}: explained variance "
            f"{_fmt(sae['explained_variance'])}, L0 {_fmt(sae['l0'])}, dead {_fmt(sae['dead_fraction'])}, "
            f"loss recovered {_fmt(sae['loss_recovered'])} (mean-ablation {_fmt(sae['loss_recovered_mean_ablation'])}, "
            f"random SAE {_fmt(sae['loss_recovered_random'])})")


def _toxicity_line(t: dict) -> str:
    return (f"balanced accuracy {t['balanced_accuracy']:.3f}, flagged {t['flagged']:.0%}, F1 {t['f1']:.3f} "
            f"(flag-everything F1 {t['f1_flag_all']:.3f}; P {t['precision']:.3f}, R {t['recall']:.3f}, n {t['n']}); "
            "per-language rules, balanced accuracy: "
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(t["balanced_accuracy_by_lang"].items())))


def _inventory_line(s: "DemoSummary") -> str:
    inv, dens = s.inventory, s.density
    return (f"{inv.get('features')} specific features of {inv.get('candidates')} candidates (purity ≥ "
            f"{_fmt(inv.get('min_purity'))}); median purity {_fmt(inv.get('median_purity'))}; a median SFT prompt "
            f"fires {dens.get('median_share', float('nan')):.1%} of the dictionary")


def _synth_comparison(s: "DemoSummary") -> str:
    """Gap coverage of targeted synthesis beside the random baseline's at the same budget ("" without a baseline)."""
    comp = s.synth.get("comparison", {})
    t, r = comp.get("targeted", {}), comp.get("random")
    if not r:
        return ""
    tg, rg = t.get("gap_coverage", {}), r.get("gap_coverage", {})
    return (f"; gaps covered: targeted {tg.get('covered')}/{tg.get('total')} vs random baseline "
            f"{rg.get('covered')}/{rg.get('total')} ({t.get('candidates')} vs {r.get('candidates')} candidates)")


def print_summary(s: DemoSummary, console) -> None:
    from rich.table import Table

    table = Table(title=f"qscope demo — done in {s.seconds:.0f} s", show_header=False)
    cov = s.gaps.get("coverage", {}).get("overall", {})
    after = s.synth.get("coverage", {}).get("after", {}).get("overall", {})
    totals = s.synth.get("totals", {})
    counts = s.curate.get("counts", {})
    table.add_row("SAE (held-out)", _sae_line(s.sae))
    table.add_row("toxicity (held-back)", _toxicity_line(s.toxicity))
    table.add_row("inventory", _inventory_line(s))
    table.add_row("gaps", f"{len(s.gaps.get('gaps', []))} of {cov.get('total')} inventory features fire on fewer than "
                          f"{s.gaps.get('min_docs', 1)} SFT documents")
    table.add_row("synthesis", f"{totals.get('accepted', 0)} verified samples; coverage {cov.get('covered')} → {after.get('covered')} "
                               f"of {cov.get('total')}" + _synth_comparison(s))
    table.add_row("curated", ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, (int, float))))
    for name in ("report", "gap_report", "feature_dashboards", "shards"):
        table.add_row(name, s.paths[name])
    console.print(table)

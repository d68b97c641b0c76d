"""The synthesis run for people: `report.html` (self-contained) with `synth.png` — accepted vs failed attempts per
target feature, and inventory coverage per category before → after the accepted samples. Built from the same
dict that becomes `summary.json`, so the two cannot disagree."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from qscope_data import atomic

FIGURE = "synth.png"
NOVELTY_FIGURE = "novelty.png"
REPORT = "report.html"
MAX_BARS = 40

_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}td.num{text-align:right}"
        ".muted{color:#777}.warn{color:#a60}img{max-width:100%}")


def synth_figure(summary: dict[str, Any]) -> bytes:
    feats = summary["features"][:MAX_BARS]
    cov = summary["coverage"]
    has_after = cov.get("after") is not None
    fig = Figure(figsize=(12.0, max(3.0, 0.9 + 0.32 * max(len(feats), 4))))
    ax1, ax2 = fig.subplots(1, 2)
    y = np.arange(len(feats))
    acc = np.array([f["accepted"] for f in feats], dtype=float)
    failed = np.array([f["attempts"] - f["accepted"] for f in feats], dtype=float)
    ax1.barh(y, acc, color="#3a9d5d", label="accepted")
    ax1.barh(y, failed, left=acc, color="#d9534f", label="failed attempts")
    ax1.set_yticks(y, [f"{f['feature']} · {f['category'][:18]}" for f in feats])
    ax1.invert_yaxis()
    ax1.set_xlabel("candidates")
    ax1.set_title(f"Attempts per target feature (threshold {summary['threshold']:g}, verified: {summary['verify']})")
    ax1.legend(loc="lower right", fontsize=8)
    cats = list(cov["before"]["by_category"])
    x = np.arange(len(cats))
    before = [cov["before"]["by_category"][c]["fraction"] or 0.0 for c in cats]
    ax2.bar(x - 0.2, before, width=0.4, color="#999999", label="target")
    if has_after:
        after = [cov["after"]["by_category"][c]["fraction"] or 0.0 for c in cats]
        ax2.bar(x + 0.2, after, width=0.4, color="#3a9d5d", label="target + accepted")
    ax2.set_xticks(x, [c[:14] for c in cats], rotation=45 if len(cats) > 5 else 0, ha="right" if len(cats) > 5 else "center")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("fraction of inventory features covered")
    ax2.set_title("Coverage by category, before → after")
    ax2.legend(loc="lower right", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def novelty_figure(summary: dict[str, Any]) -> bytes:
    """Histogram of the accepted samples' novelty (1 − max 3-gram overlap with a reference example), targeted
    beside random: 0 is a copy, 1 shares no word 3-gram with any example."""
    comp = summary.get("comparison", {})
    fig = Figure(figsize=(6.5, 3.2))
    ax = fig.subplots()
    bins = np.linspace(0.0, 1.0, 11)
    for key, color in (("targeted", "#3a9d5d"), ("random", "#5b7bd5")):
        values = [v for v in comp.get(key, {}).get("novelty_accepted", []) if v is not None]
        if values:
            ax.hist(values, bins=bins, alpha=0.6, color=color, label=f"{key} (n={len(values)})")
    nc = summary.get("near_copy", {})
    if nc:
        ax.axvline(1 - min(nc.get("jaccard", 0.6), nc.get("containment", 0.6)), color="#d9534f", ls="--",
                   label="near-copy limit")
    ax.set_xlabel("novelty of accepted samples (1 − max word 3-gram overlap with a reference example)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _comparison_html(summary: dict[str, Any]) -> list[str]:
    comp = summary.get("comparison", {})
    if "targeted" not in comp:
        return []
    cols = [k for k in ("targeted", "random") if k in comp]
    parts = ["<h2>Targeted vs random synthesis</h2>",
             "<p>Same generator, same verification (re-encoding with the verifying model and SAE). A gap feature counts "
             "as covered when it fires above the threshold on at least one accepted sample.</p>",
             "<table><tr><th></th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"]

    def row(name: str, fn) -> str:
        return f"<tr><td>{name}</td>" + "".join(f'<td class="num">{fn(comp[c])}</td>' for c in cols) + "</tr>"

    def rej(c: dict[str, Any], reason: str) -> int:
        return int(c.get("rejected_attempts_by_reason", c.get("rejected_by_reason", {})).get(reason, 0))

    parts += [row("gap features covered", lambda c: _pct(c["gap_coverage"])),
              row("candidates generated", lambda c: c["candidates"]),
              row("accepted", lambda c: c["accepted"]),
              row("rejected: near-copy of a reference example", lambda c: rej(c, "near_copy")),
              row("candidates dropped as degenerate text (perplexity / repetition)",
                  lambda c: c.get("degenerate_candidates", rej(c, "degenerate"))),
              row("rejected: target / gap feature not firing",
                  lambda c: rej(c, "below_threshold") + rej(c, "not_firing")),
              row("rejected: duplicate of an earlier candidate",
                  lambda c: rej(c, "duplicate") + rej(c, "near_duplicate")),
              row("median novelty of accepted", lambda c: _median(c.get("novelty_accepted", []))),
              "</table>"]
    if "random" in comp:
        parts.append(f'<p class="muted">random baseline shots drawn from {html.escape(str(comp["random"]["pool"]))} '
                     f'({comp["random"]["pool_size"]} texts)</p>')
    return parts


def _median(values: list[float | None]) -> str:
    vals = sorted(v for v in values if v is not None)
    return "–" if not vals else f"{vals[len(vals) // 2]:.2f}"


def _pct(c: dict[str, Any] | None) -> str:
    if not c or c.get("fraction") is None:
        return "–"
    return f"{c['covered']}/{c['total']} ({100 * c['fraction']:.1f}%)"


def synth_report_html(summary: dict[str, Any], png: bytes, novelty_png: bytes | None = None) -> str:
    esc = html.escape
    t, cov = summary["totals"], summary["coverage"]
    after = cov.get("after")
    rate = "–" if t["acceptance_rate"] is None else f"{100 * t['acceptance_rate']:.1f}%"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; style-src \'unsafe-inline\'">',
        "<title>qscope synthesis</title>", f"<style>{_CSS}</style></head><body>", "<h1>Feature-targeted synthesis</h1>",
        f"<p><strong>{t['accepted']} / {t['requested']}</strong> samples accepted for {t['features']} gap feature(s) "
        f"in {t['attempts']} attempts (acceptance {rate}); {t['features_filled']} feature(s) got at least one sample.</p>",
        f"<p>Inventory coverage {_pct(cov['before']['overall'])} → {_pct(after['overall']) if after else '–'}; "
        f"gap set {_pct(cov.get('gap_set', {}).get('before'))} → {_pct(cov.get('gap_set', {}).get('after'))}.</p>",
        f"<p class=\"muted\">generator {esc(summary['generator'].get('name', ''))} · model {esc(str(summary['model'].get('id')))} · "
        f"SAE layer {summary['layer']} · threshold {summary['threshold']:g} · verified: {esc(summary['verify'])}</p>",
    ]
    for w in summary.get("warnings", []):
        parts.append(f'<p class="warn">{esc(w)}</p>')
    b64 = base64.b64encode(png).decode("ascii")
    parts.append(f'<img alt="attempts per feature and coverage before/after" src="data:image/png;base64,{b64}">')
    parts += _comparison_html(summary)
    if novelty_png is not None:
        nb64 = base64.b64encode(novelty_png).decode("ascii")
        parts.append(f'<img alt="novelty of accepted samples, targeted vs random" src="data:image/png;base64,{nb64}">')
    parts.append("<table><tr><th>feature</th><th>category</th><th>label</th><th>requested</th><th>accepted</th>"
                 "<th>attempts</th><th>acceptance</th><th>mean activation</th><th>failed attempts</th></tr>")
    for f in summary["features"]:
        acc = "–" if f["acceptance_rate"] is None else f"{100 * f['acceptance_rate']:.0f}%"
        mean = "–" if f["mean_activation"] is None else f"{f['mean_activation']:.3f}"
        why = ", ".join(f"{k} {v}" for k, v in f["failed_attempts"].items()) or "–"
        parts.append(f'<tr><td class="num">{f["feature"]}</td><td>{esc(f["category"])}</td><td>{esc(f["label"] or "")}</td>'
                     f'<td class="num">{f["requested"]}</td><td class="num">{f["accepted"]}</td><td class="num">{f["attempts"]}</td>'
                     f'<td class="num">{acc}</td><td class="num">{mean}</td><td>{esc(why)}</td></tr>')
    parts += ["</table>", '<p class="muted">Written by qscope synth. Details: summary.json, accepted.jsonl, rejected.jsonl.</p>',
              "</body></html>"]
    return "\n".join(parts) + "\n"


def write_synth_report(summary: dict[str, Any], out: str | Path) -> dict[str, Path]:
    out = Path(out)
    png, novelty = synth_figure(summary), novelty_figure(summary)
    atomic.write_bytes(out / FIGURE, png)
    atomic.write_bytes(out / NOVELTY_FIGURE, novelty)
    atomic.write_text(out / REPORT, synth_report_html(summary, png, novelty))
    return {FIGURE: out / FIGURE, NOVELTY_FIGURE: out / NOVELTY_FIGURE, REPORT: out / REPORT}

"""The `sasft prepare` report: per language, the chosen features, their scores, baselines and top-activating texts.

A person checks here that a "Chinese" feature really fires on Chinese before a fine-tune penalises it elsewhere.
Markdown for diffs and terminals; HTML with the μ heatmap (selected features × languages) embedded as PNG.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from qscope_data.atomic import write_text
from qscope_data.sasft.artifact import SASFTPlan


def _snippet(text: str, width: int = 140) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def mu_heatmap(plan: SASFTPlan) -> bytes:
    """Rows: selected features grouped by target language; columns: input languages; colour: μ normalised per row."""
    rows: list[tuple[str, int]] = [(lang, f.id) for lang in plan.languages for f in plan.features[lang]]
    langs = plan.baseline_languages
    data = np.array([[plan.mu[str(fid)][lang] for lang in langs] for _, fid in rows], dtype=float).reshape(len(rows), len(langs))
    norm = data / np.maximum(data.max(axis=1, keepdims=True), 1e-12)
    fig = Figure(figsize=(max(4.5, 1.2 + 0.8 * len(langs)), max(2.5, 0.8 + 0.22 * len(rows))))
    ax = fig.subplots()
    image = ax.imshow(norm, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(langs)), langs)
    ax.set_yticks(range(len(rows)), [f"{lang}: {fid}" for lang, fid in rows], fontsize=7)
    ax.set_xlabel("language of the text")
    ax.set_title(f"mean activation μ of each selected feature (layer {plan.layer}), row-normalised")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="μ / max over languages")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _header(plan: SASFTPlan) -> list[str]:
    sae = plan.sae
    return [
        f"- model: `{plan.model.get('id')}` ({plan.model.get('architecture')}, {plan.model.get('n_layers')} blocks)",
        f"- SAE: `{sae.get('source')}` ({sae.get('format')}), layer {plan.layer}, d_sae {sae.get('d_sae')}, k {sae.get('k')}",
        f"- target languages: {', '.join(plan.languages)}; α columns: {', '.join(plan.baseline_languages)}; "
        f"α statistic: {plan.alpha_stat}",
        "- tokens per language: " + ", ".join(f"{k} {v}" for k, v in plan.token_counts.items()),
        f"- input fingerprint: `{plan.provenance.get('input_fingerprint', '')[:16]}…`; "
        f"rejected records: {plan.provenance.get('rejects', 0)}",
    ]


def report_markdown(plan: SASFTPlan, examples: dict[int, list[dict]]) -> str:
    lines = ["# SASFT plan", "", *_header(plan), ""]
    lines += ["ν = μ_L − γ: mean activation on L minus the mean over the other languages. α_j: the baseline of the "
              "feature's pre-activation on language j; the loss penalises pre − α_j > 0 on language-j text.", ""]
    for lang in plan.languages:
        feats = plan.features[lang]
        lines += [f"## {lang}: {len(feats)} features", ""]
        if not feats:
            lines += ["No feature is more active on this language than on the others.", ""]
            continue
        lines += ["| feature | ν | μ_L | γ | " + " | ".join(f"α_{j}" for j in plan.baseline_languages) + " |",
                  "|---:|---:|---:|---:|" + "---:|" * len(plan.baseline_languages)]
        for f in feats:
            alphas = " | ".join(f"{plan.alpha[str(f.id)][j]:.3f}" for j in plan.baseline_languages)
            lines.append(f"| {f.id} | {f.nu:.4f} | {f.mu:.4f} | {f.gamma:.4f} | {alphas} |")
        lines.append("")
        for f in feats:
            ex = examples.get(f.id, [])
            if ex:
                lines.append(f"- **{f.id}** top examples:")
                lines += [f"  - [{e['lang']}] {e['activation']:.3f} at `{e['token'].strip() or e['token']!r}`: "
                          f"{_snippet(e['text'])}" for e in ex]
        lines.append("")
    return "\n".join(lines)


def report_html(plan: SASFTPlan, examples: dict[int, list[dict]], heatmap: bytes) -> str:
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>SASFT plan</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}td.t{max-width:600px}</style></head><body>",
             "<h1>SASFT plan</h1><ul>"]
    parts += [f"<li>{esc(line[2:].replace('`', ''))}</li>" for line in _header(plan)]
    parts.append("</ul>")
    parts.append(f"<img alt='mu heatmap' src='data:image/png;base64,{base64.b64encode(heatmap).decode('ascii')}'>")
    for lang in plan.languages:
        feats = plan.features[lang]
        parts.append(f"<h2>{esc(lang)}: {len(feats)} features</h2>")
        if not feats:
            parts.append("<p>No feature is more active on this language than on the others.</p>")
            continue
        head = "".join(f"<th>α_{esc(j)}</th>" for j in plan.baseline_languages)
        parts.append(f"<table><tr><th>feature</th><th>ν</th><th>μ_L</th><th>γ</th>{head}<th>top examples</th></tr>")
        for f in feats:
            alphas = "".join(f"<td>{plan.alpha[str(f.id)][j]:.3f}</td>" for j in plan.baseline_languages)
            ex = "<br>".join(f"[{esc(e['lang'])}] {e['activation']:.3f} <code>{esc(e['token'])}</code>: {esc(_snippet(e['text']))}"
                             for e in examples.get(f.id, []))
            parts.append(f"<tr><td>{f.id}</td><td>{f.nu:.4f}</td><td>{f.mu:.4f}</td><td>{f.gamma:.4f}</td>{alphas}"
                         f"<td class='t'>{ex}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(plan: SASFTPlan, examples: dict[int, list[dict]], out_dir: Path) -> dict[str, Path]:
    heatmap = mu_heatmap(plan)
    write_text(out_dir / "report.md", report_markdown(plan, examples))
    write_text(out_dir / "report.html", report_html(plan, examples, heatmap))
    return {"report_md": out_dir / "report.md", "report_html": out_dir / "report.html"}

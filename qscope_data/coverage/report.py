"""Coverage reports people read: markdown (also the Prefect artifact) and self-contained HTML with embedded PNGs.

The HTML has no scripts and no external requests — it opens from disk or a mail attachment and renders the same.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from qscope_data import atomic
from qscope_data.coverage import plots
from qscope_data.coverage.gaps import GapReport
from qscope_data.coverage.overlap import OverlapResult

GAPS_JSON = "gaps.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
HEATMAP_PNG = "coverage_heatmap.png"
BARS_PNG = "category_coverage.png"
OVERLAP_JSON = "overlap.json"
OVERLAP_HTML = "overlap.html"
OVERLAP_PNG = "overlap_heatmap.png"
CURVES_PNG = "coverage_curves.png"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:8px 0}.muted{color:#666;font-size:.85em}
.ex{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;background:#fafafa;margin:2px 0;padding:3px 5px;border-left:3px solid #d9534f}
.warn{background:#fff4e5;border-left:4px solid #f0ad4e;padding:6px 10px}
"""


def _as_dict(report: GapReport | dict[str, Any]) -> dict[str, Any]:
    return report.to_json() if isinstance(report, GapReport) else report


def _pct(cov: dict[str, Any]) -> str:
    return "–" if cov.get("fraction") is None else f"{100 * cov['fraction']:.1f}%"


def _cell(text: Any, width: int = 160) -> str:
    """One line of table text for markdown: no pipes or newlines, shortened."""
    s = " ".join(str(text).split()).replace("|", "\\|")
    return s if len(s) <= width else s[: width - 1] + "…"


def _langs(gap: dict) -> str:
    """Languages of the reference documents it fires on, most first (`en 4, zh 2`)."""
    return ", ".join(f"{k} {v}" for k, v in (gap.get("languages") or {}).items())


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def heatmap_field(report: dict[str, Any]) -> str | None:
    """The breakdown field drawn against category: `lang` when present, else the first --by field."""
    by = report.get("by") or []
    return "lang" if "lang" in by else (by[0] if by else None)


# -------------------------------------------------------------------------------------------------------- markdown


def dashboard_links(dashboard: str | Path | None, report_dir: str | Path) -> dict[int, str]:
    """feature -> relative link from the report folder to its page in a `qscope features explain` dashboard."""
    if dashboard is None:
        return {}
    import os

    from qscope_data.errors import UsageError
    from qscope_data.explain.dashboard import INDEX, dashboard_pages

    if not (Path(dashboard) / INDEX).exists():
        raise UsageError(f"--dashboard {dashboard}: no {INDEX} there (write one with `qscope features explain --out`)")
    return {f: Path(os.path.relpath(page, Path(report_dir).resolve())).as_posix()
            for f, page in dashboard_pages(Path(dashboard).resolve()).items()}


NO_LABEL = "(no label)"


def gap_report_markdown(gaps: GapReport | dict[str, Any], *, max_gaps: int = 25, max_example_chars: int = 200,
                        links: dict[int, str] | None = None) -> str:
    """The gap report as markdown: overall coverage, per category, per breakdown field, and the top gaps.
    `links`: feature -> dashboard page (from `dashboard_links`), shown on each gap's feature id."""
    r = _as_dict(gaps)
    links = links or {}
    cov = r["coverage"]
    overall = cov["overall"]
    lines = [
        "# Safety-feature coverage",
        "",
        f"**{overall['covered']} / {overall['total']}** inventory features covered ({_pct(overall)}) by "
        f"{r['documents']['total']} target documents (a feature is covered when it fires on ≥ {r['min_docs']} document(s)); "
        f"**{len(r['gaps'])} gap(s)**.",
        "",
        f"Inventory `{r['inventory'][:12]}` · target {_targets_line(r)} · SAE {_sae_line(r.get('sae', {}))}",
        "",
    ]
    for warning in r.get("warnings", []):
        lines += [f"> ⚠ {warning}", ""]
    lines += ["## By category", "", "| category | covered | total | coverage |", "|---|---:|---:|---:|"]
    for cat, c in cov["by_category"].items():
        lines.append(f"| {_cell(cat)} | {c['covered']} | {c['total']} | {_pct(c)} |")
    for field in r.get("by", []):
        docs = r["documents"].get(f"by_{field}", {})
        lines += ["", f"## By {field}", "", f"| {field} | documents | covered | coverage |", "|---|---:|---:|---:|"]
        for value, c in cov.get(f"by_{field}", {}).items():
            lines.append(f"| {_cell(value)} | {docs.get(value, 0)} | {c['covered']} / {c['total']} | {_pct(c)} |")
    field = heatmap_field(r)
    if field:
        grid = cov[f"by_category_x_{field}"]
        values = list(cov[f"by_{field}"])
        lines += ["", f"## Category × {field}", "", "| category | " + " | ".join(_cell(v, 20) for v in values) + " |",
                  "|---|" + "---:|" * len(values)]
        for cat, row in grid.items():
            lines.append(f"| {_cell(cat)} | " + " | ".join(f"{row[v]['covered']}/{row[v]['total']}" for v in values) + " |")
    lines += ["", f"## Top gaps ({min(max_gaps, len(r['gaps']))} of {len(r['gaps'])})", ""]
    if not r["gaps"]:
        lines.append("No gaps: every inventory feature fires on the target.")
    else:
        lines += ["| feature | category | Δ | purity | languages | target docs | label | top reference example |",
                  "|---:|---|---:|---:|---|---:|---|---|"]
        for g in r["gaps"][:max_gaps]:
            example = _cell(g["examples"][0], max_example_chars) if g.get("examples") else ""
            label = _cell(g.get("label") or g.get("description") or NO_LABEL, 60)
            feat = f"[{g['feature']}]({links[g['feature']]})" if g["feature"] in links else str(g["feature"])
            lines.append(f"| {feat} | {_cell(g['category'])} | {_fmt(g.get('delta'))} | {_fmt(g.get('purity'))} "
                         f"| {_langs(g)} | {g['target_docs']} | {label} | {example} |")
    return "\n".join(lines) + "\n"


def _targets_line(r: dict[str, Any], *, code: bool = True) -> str:
    tick = "`" if code else ""
    parts = []
    for t in r.get("targets", []):
        parts.append(f"{tick}{Path(t['path']).name}{tick}" if t.get("kind") == "store" else f"frame ({t.get('documents')} docs)")
    return " + ".join(parts) or "–"


def _sae_line(sae: dict[str, Any]) -> str:
    if not sae:
        return "–"
    return f"{sae.get('source') or '?'} layer {sae.get('layer', '?')} (d_sae {sae.get('d_sae', '?')}, k {sae.get('k', '?')})"


# ------------------------------------------------------------------------------------------------------------ plots


def gap_figures(report: GapReport | dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes of the heatmap (category × lang, or × the first --by field, or × all) and the per-category bars."""
    r = _as_dict(report)
    cov = r["coverage"]
    cats = list(cov["by_category"]) or ["(empty inventory)"]
    field = heatmap_field(r)
    if field:
        values = list(cov[f"by_{field}"])
        grid = cov[f"by_category_x_{field}"]
        fractions = [[grid[c][v]["fraction"] for v in values] for c in cov["by_category"]]
        counts = [[f"{grid[c][v]['covered']}/{grid[c][v]['total']}" for v in values] for c in cov["by_category"]]
    else:
        values = ["all documents"]
        fractions = [[c["fraction"]] for c in cov["by_category"].values()]
        counts = [[f"{c['covered']}/{c['total']}"] for c in cov["by_category"].values()]
    if not cov["by_category"]:
        fractions, counts = [[None] * len(values)], [[""] * len(values)]
    heat = plots.coverage_heatmap(fractions, counts, cats, values, title=f"coverage: category × {field or 'corpus'}",
                                  xlabel=field or "")
    bars = plots.category_bars(
        list(cov["by_category"]), [c["covered"] for c in cov["by_category"].values()],
        [c["total"] for c in cov["by_category"].values()], title="inventory features covered per category",
    )
    return {HEATMAP_PNG: heat, BARS_PNG: bars}


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


# ------------------------------------------------------------------------------------------------------------- html


def gap_report_html(report: GapReport | dict[str, Any], figures: dict[str, bytes] | None = None, *, max_gaps: int = 50,
                    links: dict[int, str] | None = None) -> str:
    r = _as_dict(report)
    links = links or {}
    figures = figures or gap_figures(r)
    esc = html.escape
    cov = r["coverage"]
    overall = cov["overall"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; style-src \'unsafe-inline\'">',
        "<title>qscope safety-feature coverage</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Safety-feature coverage</h1>",
        f"<p><strong>{overall['covered']} / {overall['total']}</strong> inventory features covered ({_pct(overall)}) by "
        f"{r['documents']['total']} target documents — a feature is covered when it fires on ≥ {r['min_docs']} document(s). "
        f"<strong>{len(r['gaps'])} gap(s).</strong></p>",
        f"<p class=\"muted\">inventory {esc(r['inventory'][:16])} · target {esc(_targets_line(r, code=False))} · "
        f"SAE {esc(_sae_line(r.get('sae', {})))}</p>",
    ]
    for warning in r.get("warnings", []):
        parts.append(f'<p class="warn">{esc(warning)}</p>')
    field = heatmap_field(r)
    parts += [f"<h2>Coverage by category × {esc(field or 'corpus')}</h2>", _img(figures[HEATMAP_PNG], "coverage heatmap"),
              "<h2>Coverage by category</h2>", _img(figures[BARS_PNG], "coverage per category"),
              "<table><tr><th>category</th><th>covered</th><th>total</th><th>coverage</th></tr>"]
    for cat, c in cov["by_category"].items():
        parts.append(f'<tr><td>{esc(cat)}</td><td class="num">{c["covered"]}</td><td class="num">{c["total"]}</td>'
                     f'<td class="num">{_pct(c)}</td></tr>')
    parts.append("</table>")
    for fld in r.get("by", []):
        docs = r["documents"].get(f"by_{fld}", {})
        parts.append(f"<h2>Coverage by {esc(fld)}</h2><table><tr><th>{esc(fld)}</th><th>documents</th><th>covered</th><th>coverage</th></tr>")
        for value, c in cov.get(f"by_{fld}", {}).items():
            parts.append(f'<tr><td>{esc(value)}</td><td class="num">{docs.get(value, 0)}</td>'
                         f'<td class="num">{c["covered"]} / {c["total"]}</td><td class="num">{_pct(c)}</td></tr>')
        parts.append("</table>")
    parts.append(f"<h2>Top gaps ({min(max_gaps, len(r['gaps']))} of {len(r['gaps'])})</h2>")
    if not r["gaps"]:
        parts.append("<p>No gaps: every inventory feature fires on the target.</p>")
    else:
        parts.append("<table><tr><th>feature</th><th>category</th><th>Δ</th><th>purity</th><th>languages</th>"
                     "<th>target docs</th><th>label / description</th>"
                     "<th>reference examples (top by activation)</th></tr>")
        for g in r["gaps"][:max_gaps]:
            label = " — ".join(esc(x) for x in (g.get("label"), g.get("description")) if x) or f'<span class="muted">{NO_LABEL}</span>'
            feat = (f'<a href="{esc(links[g["feature"]])}">{g["feature"]}</a>' if g["feature"] in links else str(g["feature"]))
            examples = "".join(f'<div class="ex">{esc(_cell(t, 400))}</div>' for t in g.get("examples", [])) or '<span class="muted">–</span>'
            parts.append(f'<tr><td class="num">{feat}</td><td>{esc(g["category"])}</td><td class="num">{_fmt(g.get("delta"))}</td>'
                         f'<td class="num">{_fmt(g.get("purity"))}</td><td>{esc(_langs(g))}</td>'
                         f'<td class="num">{g["target_docs"]}</td><td>{label}</td><td>{examples}</td></tr>')
        parts.append("</table>")
    parts += ["<details><summary>All inventory features</summary><table><tr><th>feature</th><th>category</th><th>Δ</th>"
              "<th>target docs</th><th>activation mass</th><th>covered</th></tr>"]
    for f in r["features"]:
        parts.append(f'<tr><td class="num">{f["feature"]}</td><td>{esc(f["category"])}</td><td class="num">{_fmt(f.get("delta"))}</td>'
                     f'<td class="num">{f["target_docs"]}</td><td class="num">{f["activation_mass"]:.3f}</td>'
                     f'<td>{"yes" if f["covered"] else "no"}</td></tr>')
    parts += ["</table></details>", '<p class="muted">Written by qscope gaps.</p>', "</body></html>"]
    return "\n".join(parts) + "\n"


def write_gap_report(report: GapReport, out: str | Path, *, dashboard: str | Path | None = None) -> dict[str, Path]:
    """gaps.json, report.md, report.html (self-contained) and the two PNGs, each written atomically. With
    `dashboard` (a `qscope features explain` output folder), each gap's feature id links to its dashboard page."""
    out = Path(out)
    data = report.to_json()
    links = dashboard_links(dashboard, out)
    figures = gap_figures(data)
    paths = {name: out / name for name in (GAPS_JSON, REPORT_MD, REPORT_HTML, *figures)}
    for name, png in figures.items():
        atomic.write_bytes(paths[name], png)
    atomic.write_text(paths[REPORT_MD], gap_report_markdown(data, links=links) + f"\n![coverage heatmap]({HEATMAP_PNG})\n\n![per category]({BARS_PNG})\n")
    atomic.write_text(paths[REPORT_HTML], gap_report_html(data, figures, links=links))
    atomic.write_json(paths[GAPS_JSON], data)
    return paths


# ---------------------------------------------------------------------------------------------------------- overlap


def overlap_figures(result: OverlapResult) -> dict[str, bytes]:
    return {
        OVERLAP_PNG: plots.overlap_heatmap(result.matrix, result.names),
        CURVES_PNG: plots.coverage_curves(dict(zip(result.names, result.curves)), dict(zip(result.names, result.redundancy))),
    }


def overlap_report_html(result: OverlapResult, figures: dict[str, bytes] | None = None) -> str:
    figures = figures or overlap_figures(result)
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; style-src \'unsafe-inline\'">',
        "<title>qscope dataset overlap</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Dataset footprints and overlap</h1>",
        f"<p class=\"muted\">footprint = features active on {'the last token of' if result.options['last_token'] else 'any position of'} "
        f"some document · layer {result.options['layer']} · {result.options['subsets']} random orderings (seed {result.options['seed']})</p>",
        "<table><tr><th>dataset</th><th>documents</th><th>footprint |F|</th><th>redundancy R</th></tr>",
    ]
    for name, fp, r in zip(result.names, result.footprints, result.redundancy):
        parts.append(f'<tr><td>{esc(name)}</td><td class="num">{fp.n_docs}</td><td class="num">{fp.size}</td>'
                     f'<td class="num">{_fmt(r)}</td></tr>')
    parts += [
        "</table>",
        "<h2>Overlap M[i][j] = |F(i) ∩ F(j)| / |F(i)|</h2>", _img(figures[OVERLAP_PNG], "overlap heatmap"),
        "<h2>Feature-coverage curves</h2>", _img(figures[CURVES_PNG], "coverage curves"),
        "<p class=\"muted\">R = Σ<sub>n=1..N</sub> c(n) / (N·|F(D)|), c(n) the mean footprint size of n random documents: "
        "1 = every document shows the whole footprint; ≈0.5 = each document brings its own features.</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_overlap_report(result: OverlapResult, out: str | Path) -> dict[str, Path]:
    """overlap.json, overlap.html (self-contained) and the two PNGs, each written atomically."""
    out = Path(out)
    figures = overlap_figures(result)
    paths = {name: out / name for name in (OVERLAP_JSON, OVERLAP_HTML, *figures)}
    for name, png in figures.items():
        atomic.write_bytes(paths[name], png)
    atomic.write_text(paths[OVERLAP_HTML], overlap_report_html(result, figures))
    atomic.write_json(paths[OVERLAP_JSON], result.to_json())
    return paths

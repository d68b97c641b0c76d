"""The dashboard people read: `index.html` (every feature, searchable by id and text) and one page per feature.

Every page is self-contained — inline CSS, inline SVG, no request leaves the file — so the folder opens from disk or
as a CI artefact. The index's search box is the only script (inline; the page's CSP allows nothing else); `index.html#q=TEXT` opens
it with TEXT searched (a link can point at a search). Each
token of a context is a ``<span class="t">`` carrying its position, token id and the feature's activation
(``data-pos``, ``data-tok``, ``data-act``); firing tokens have class ``on`` and a background whose strength is the
activation over the feature's maximum. A character split over byte-level tokens is shown on the token that
completes it; the tokens before it are empty spans (a firing one is a small coloured bar).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from qscope_data import atomic
from qscope_data.coverage.report import _CSS as REPORT_CSS  # one look for every qscope report
from qscope_data.explain.contexts import Context
from qscope_data.explain.labels import FeatureResult

INDEX = "index.html"
NO_EXPLANATION = "no explanation (run with --explainer to write one)"

_CSS = REPORT_CSS + """
.ctx{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;background:#fafafa;margin:3px 0;padding:4px 6px;border-left:3px solid #999}
.ctx.neg{border-left-color:#5b8def}.t.on{border-radius:2px;outline:1px solid rgba(200,60,0,.35)}.t.on:empty{padding:0 2px}.t.peak{text-decoration:underline}
.tag{display:inline-block;font-size:.75em;color:#555;min-width:9em}.ok{color:#1a7f37}.bad{color:#b42318}
input#q{font-size:1em;padding:4px 8px;width:24em}.label{font-weight:600}.grid{display:flex;gap:24px;flex-wrap:wrap}
"""
_CSP = ("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">")
_SEARCH_JS = """
const q=document.getElementById('q');
function filter(){const s=q.value.trim().toLowerCase();let n=0;
for(const r of document.querySelectorAll('tr[data-search]')){const hit=!s||r.dataset.id===s||r.dataset.search.includes(s);
r.style.display=hit?'':'none';if(hit)n++;}document.getElementById('n').textContent=n;}
q.addEventListener('input',filter);
if(location.hash.startsWith('#q=')){q.value=decodeURIComponent(location.hash.slice(3));filter();}
"""

esc = html.escape


def page_name(feature: int) -> str:
    return f"feature-{feature}.html"


def _head(title: str, script: bool = False) -> list[str]:
    return ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', _CSP if script else _CSP.replace(
        "; script-src 'unsafe-inline'", ""), f"<title>{esc(title)}</title>", f"<style>{_CSS}</style></head><body>"]


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def render_context(ctx: Context, max_act: float) -> str:
    """One context as spans; the tag says which kind (and quantile) it is."""
    tag = ctx.kind.replace("_", " ") + (f" q{ctx.quantile}" if ctx.quantile else "")
    if ctx.source_feature is not None:
        tag += f" (f{ctx.source_feature})"
    spans = []
    for pos, tok, text, act in zip(ctx.positions, ctx.token_ids, ctx.tokens, ctx.acts):
        cls = "t on" if act > 0 else "t"
        if pos == ctx.peak and act > 0:
            cls += " peak"
        style = f' style="background:rgba(255,120,0,{min(1.0, act / max_act) if max_act > 0 else 0:.3f})"' if act > 0 else ""
        spans.append(f'<span class="{cls}" data-pos="{pos}" data-tok="{tok}" data-act="{act:g}"{style} '
                     f'title="pos {pos} · act {act:.3g}">{esc(text)}</span>')
    neg = " neg" if ctx.kind.endswith("negative") else ""
    return (f'<div class="ctx{neg}" data-kind="{ctx.kind}" data-doc="{esc(ctx.doc_id)}" data-peak="{ctx.peak}" '
            f'data-max="{ctx.max_act:g}"><span class="tag">{esc(tag)} · {esc(ctx.doc_id)} · max {ctx.max_act:.3g}'
            f'</span> {"".join(spans)}</div>')


def histogram_svg(hist: dict[str, list[float]], width: int = 520, height: int = 150) -> str:
    counts, edges = hist.get("counts") or [], hist.get("edges") or []
    if not counts:
        return '<p class="muted">The feature fires nowhere in this store.</p>'
    top = max(counts) or 1
    bw = (width - 40) / len(counts)
    bars = []
    for i, c in enumerate(counts):
        h = (height - 30) * c / top
        bars.append(f'<rect x="{30 + i * bw:.1f}" y="{height - 20 - h:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" '
                    f'fill="#e8702a"><title>{edges[i]:.3g}–{edges[i + 1]:.3g}: {c}</title></rect>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="activation histogram">{"".join(bars)}'
            f'<text x="30" y="{height - 5}" font-size="11">0</text>'
            f'<text x="{width - 10}" y="{height - 5}" font-size="11" text-anchor="end">{edges[-1]:.3g}</text>'
            f'<text x="2" y="12" font-size="11">{top}</text></svg>')


def _explanation_html(r: FeatureResult) -> str:
    if r.explanation is None:
        why = f" — explainer failed: {esc(r.explain_error)}" if r.explain_error else ""
        return f'<p class="muted" data-role="label">{esc(NO_EXPLANATION) if not why else "no explanation"}{why}</p>'
    score = ""
    if r.score is not None:
        s = r.score
        score = (f'<p>detection score (balanced accuracy) <strong data-role="score">{_fmt(s.balanced_accuracy)}</strong>'
                 f' · precision {_fmt(s.precision)} · recall {_fmt(s.recall)} · specificity {_fmt(s.specificity)} · '
                 f'{s.n} excerpts scored (TP {s.tp}, FP {s.fp}, TN {s.tn}, FN {s.fn}'
                 f'{f", {s.unanswered} unanswered" if s.unanswered else ""})</p>')
    elif r.score_error:
        score = f'<p class="muted">not scored: {esc(r.score_error)}</p>'
    return (f'<p><span class="label" data-role="label">{esc(r.explanation.label)}</span> — '
            f'<span data-role="description">{esc(r.explanation.description)}</span></p>{score}')


def _rates_html(rates: dict[str, dict[str, dict[str, float]]]) -> str:
    parts = []
    for fld, values in rates.items():
        rows = "".join(f'<tr><td>{esc(v)}</td><td class="num">{x["firing"]}</td><td class="num">{x["docs"]}</td>'
                       f'<td class="num">{100 * x["rate"]:.1f}%</td></tr>' for v, x in values.items())
        parts.append(f'<div><h3>by {esc(fld)}</h3><table><tr><th>{esc(fld)}</th><th>firing</th><th>documents</th>'
                     f'<th>rate</th></tr>{rows}</table></div>')
    return f'<div class="grid">{"".join(parts)}</div>' if parts else '<p class="muted">No label fields in this store.</p>'


def _lens_html(lens: dict[str, Any] | None, note: str | None) -> str:
    if not lens:
        return f'<p class="muted">{esc(note or "no logit lens")}</p>'

    def col(rows: list[dict]) -> str:
        return "".join(f'<tr><td data-tok="{t["token_id"]}">{esc(repr(t["token"]))}</td><td class="num">{t["score"]:.3f}</td></tr>'
                       for t in rows)

    return (f'<p class="muted">W_U · (N(d) − N(0)), d the unit decoder direction, N the final norm: {esc(lens["norm"])}'
            '</p><div class="grid">'
            f'<div><h3>promoted</h3><table data-role="promoted"><tr><th>token</th><th>score</th></tr>{col(lens["promoted"])}</table></div>'
            f'<div><h3>suppressed</h3><table data-role="suppressed"><tr><th>token</th><th>score</th></tr>{col(lens["suppressed"])}</table></div></div>')


def feature_page(r: FeatureResult, meta: dict[str, Any], lens_note: str | None = None) -> str:
    d = r.data
    parts = _head(f"feature {d.feature}") + [
        f'<p class="muted"><a href="{INDEX}">← all features</a> · {esc(meta.get("store", ""))} · layer {meta.get("layer")}'
        f' · SAE {esc(str(meta.get("sae", "")))}</p>',
        f'<h1>Feature {d.feature}</h1>', _explanation_html(r),
        f'<p>fires on <strong>{d.docs_firing}</strong> of {d.n_docs} documents ({100 * d.firing_rate:.1f}%) and '
        f'{d.positions_firing} of {d.n_positions} positions · max activation {d.max_act:.3g} · mean when firing '
        f'{d.mean_act:.3g}</p>',
        "<h2>Activation histogram (firing positions)</h2>", histogram_svg(d.histogram),
        "<h2>Firing rate by field</h2>", _rates_html(d.rates),
        "<h2>Logit lens</h2>", _lens_html(r.lens, lens_note),
        '<h2>Top-activating contexts</h2><div data-section="top">',
        *(render_context(c, d.max_act) for c in d.of("top")), "</div>",
        '<h2>Contexts across activation quantiles</h2><div data-section="quantile">',
        *(render_context(c, d.max_act) for c in d.of("quantile")), "</div>",
    ]
    if not d.of("top"):
        parts.append('<p class="muted">No context: the feature fires nowhere in this store.</p>')
    if r.answers:
        parts.append("<h2>Detection: what the scorer said</h2><table><tr><th>excerpt</th><th>fires</th><th>scorer</th></tr>")
        by_key = {(c.doc_id, c.peak, c.kind): c for c in d.contexts}
        for a in r.answers:
            ctx = by_key.get((a["doc_id"], a["peak"], a["kind"]))
            said = "–" if a["said"] is None else ("fires" if a["said"] else "no")
            right = a["said"] is not None and a["said"] == a["fires"]
            parts.append(f'<tr><td>{render_context(ctx, d.max_act) if ctx else esc(a["doc_id"])}</td>'
                         f'<td>{"yes" if a["fires"] else "no"}</td><td class="{"ok" if right else "bad"}">{said}</td></tr>')
        parts.append("</table>")
    else:
        parts.append('<h2>Held-out and negative contexts</h2><div data-section="detection">')
        parts += [render_context(c, d.max_act) for c in d.of("heldout", "random_negative", "hard_negative")]
        parts.append("</div>")
    if d.neighbours:
        links = ", ".join(f'<a href="{page_name(n["feature"])}">{n["feature"]}</a> ({n["cosine"]:.2f})'
                          if n["feature"] in meta.get("features", ()) else f'{n["feature"]} ({n["cosine"]:.2f})'
                          for n in d.neighbours)
        parts.append(f'<p class="muted">similar decoder directions (cosine; their contexts are the hard negatives): {links}</p>')
    parts += ['<p class="muted">Written by qscope features explain.</p>', "</body></html>"]
    return "\n".join(parts) + "\n"


def index_page(results: list[FeatureResult], meta: dict[str, Any]) -> str:
    parts = _head("qscope feature dashboard", script=True) + [
        "<h1>Feature dashboard</h1>",
        f'<p class="muted">store {esc(meta.get("store", ""))} · layer {meta.get("layer")} · SAE {esc(str(meta.get("sae", "")))}'
        f' · model {esc(str(meta.get("model", "")))} · explainer {esc(meta.get("explainer") or "none")}</p>',
        f'<p><input id="q" type="search" placeholder="search by id or text" aria-label="search"> '
        f'<span id="n">{len(results)}</span> of {len(results)} features</p>',
        "<table><tr><th>feature</th><th>label / description</th><th>score</th><th>documents firing</th>"
        "<th>max act</th><th>top context</th></tr>",
    ]
    for r in results:
        d = r.data
        top = d.of("top")
        snippet = top[0].text() if top else ""
        label = (f'<span class="label">{esc(r.explanation.label)}</span> — {esc(r.explanation.description)}'
                 if r.explanation else f'<span class="muted">{esc(NO_EXPLANATION)}</span>')
        search = " ".join(x for x in (str(d.feature), r.explanation.label if r.explanation else "",
                                      r.explanation.description if r.explanation else "",
                                      *(c.text() for c in top)) if x).lower()
        score = r.score.balanced_accuracy if r.score else None
        parts.append(
            f'<tr data-id="{d.feature}" data-search="{esc(search)}"><td class="num"><a href="{page_name(d.feature)}">'
            f'{d.feature}</a></td><td>{label}</td><td class="num">{_fmt(score)}</td>'
            f'<td class="num">{d.docs_firing} ({100 * d.firing_rate:.1f}%)</td><td class="num">{d.max_act:.3g}</td>'
            f'<td><div class="ctx">{esc(snippet[:160])}</div></td></tr>')
    parts += ["</table>", f"<script>{_SEARCH_JS}</script>", '<p class="muted">Written by qscope features explain. '
              "How to read it: docs/explain.md.</p>", "</body></html>"]
    return "\n".join(parts) + "\n"


def write_dashboard(results: list[FeatureResult], out: str | Path, meta: dict[str, Any],
                    lens_note: str | None = None) -> Path:
    """index.html and a page per feature under `out`, each written atomically; returns the index path."""
    out = Path(out)
    meta = {**meta, "features": {r.data.feature for r in results}}
    for r in results:
        atomic.write_text(out / page_name(r.data.feature), feature_page(r, meta, lens_note))
    atomic.write_text(out / INDEX, index_page(results, meta))
    return out / INDEX


def dashboard_pages(folder: str | Path) -> dict[int, Path]:
    """feature -> its page in a dashboard folder written by `write_dashboard` (for linking from other reports)."""
    folder = Path(folder)
    table = folder / "features.json"
    if table.exists():
        feats = [int(f["feature"]) for f in json.loads(table.read_text(encoding="utf-8")).get("features", [])]
    else:
        feats = [int(p.stem.split("-", 1)[1]) for p in folder.glob("feature-*.html") if p.stem.split("-", 1)[1].isdigit()]
    return {f: folder / page_name(f) for f in feats if (folder / page_name(f)).exists()}

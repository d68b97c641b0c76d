"""Plots and a small HTML page for `rules eval`: F1 per rule and group, the transfer matrix, the data-efficiency curve.

PNG files go beside report.json (``<stem>.f1.png``, ``<stem>.transfer.png``, ``<stem>.curve.png``); ``<stem>.html``
embeds them as base64 images with the numbers in tables, so the page can be mailed or attached as one file.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from qscope_data import atomic


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def f1_figure(report: dict[str, Any]) -> bytes:
    """Grouped bars: per rule, F1 overall and per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rules = list(report["rules"])
    groups = sorted({g for r in report["rules"].values() for g in (r.get("by_group") or {})})
    series = ["overall", *groups]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rules) * max(1, len(series)) / 2), 4))
    x = np.arange(len(rules))
    for i, s in enumerate(series):
        vals = []
        for name in rules:
            entry = report["rules"][name]
            m = entry["overall"] if s == "overall" else (entry.get("by_group") or {}).get(s)
            vals.append(m["f1"] if m else np.nan)
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=s)
    ax.set_xticks(x, rules, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_title(f"F1 per rule ({report['split']} split, {report['n_documents']} documents)")
    ax.legend(fontsize=8, ncols=min(len(series), 6))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def transfer_figure(transfer: dict[str, Any]) -> bytes:
    """Heatmap: rows = group a rule was mined on, columns = group it is applied to, cells = F1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    src, tgt = transfer["sources"], transfer["targets"]
    mat = np.array([[transfer["matrix"][s]["f1"].get(t, np.nan) for t in tgt] for s in src], dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(tgt), 0.8 + 0.7 * len(src)))
    im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(tgt)), tgt)
    ax.set_yticks(range(len(src)), src)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("mined on")
    for i in range(len(src)):
        for j in range(len(tgt)):
            if not np.isnan(mat[i, j]):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", color="w" if mat[i, j] < 0.6 else "k", fontsize=8)
    fig.colorbar(im, ax=ax, label="F1")
    ax.set_title("cross-lingual transfer (F1)")
    return _png(fig)


def curve_figure(efficiency: dict[str, Any]) -> bytes:
    """F1 on the held-out split against the fraction of the mining data used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, points in efficiency["curves"].items():
        ax.plot([100 * p["fraction"] for p in points], [p["f1"] for p in points], marker="o", label=key)
    ax.set_xlabel("% of the mining split used")
    ax.set_ylabel("held-out F1")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("data efficiency")
    return _png(fig)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: dict[str, Any], images: dict[str, bytes]) -> str:
    rows = []
    for name, entry in report["rules"].items():
        for g, m in [("overall", entry["overall"]), *sorted((entry.get("by_group") or {}).items())]:
            rows.append([name, g, m["precision"], m["recall"], m["f1"], m["tp"], m["fp"], m["fn"], m["tn"]])
    parts = [
        "<!doctype html><meta charset='utf-8'><title>qscope rules eval</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:2px 8px;text-align:right}th{background:#eee}</style>",
        f"<h1>Rule evaluation</h1><p>store <code>{html.escape(report['store'])}</code>, layer {report['layer']}, "
        f"model {html.escape(str(report.get('model') or '?'))}, label <code>{html.escape(report['label_field'])}</code> "
        f"== {html.escape(repr(report['positive']))}, {report['split']} split, {report['n_documents']} documents "
        f"({report['n_positive']} positive).</p>",
        _table(["rule", "group", "precision", "recall", "F1", "tp", "fp", "fn", "tn"], rows),
    ]
    titles = {"f1": "F1 per rule", "transfer": "Cross-lingual transfer", "curve": "Data efficiency"}
    for key, png in images.items():
        parts.append(f"<h2>{titles[key]}</h2><img alt='{key}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    return "\n".join(parts) + "\n"


def write_report(report: dict[str, Any], out: Path) -> dict[str, str]:
    """Write the PNGs and the HTML page beside `out` (report.json); return their paths."""
    images: dict[str, bytes] = {"f1": f1_figure(report)}
    if report.get("transfer"):
        images["transfer"] = transfer_figure(report["transfer"])
    if report.get("data_efficiency") and report["data_efficiency"].get("curves"):
        images["curve"] = curve_figure(report["data_efficiency"])
    stem = out.with_suffix("") if out.suffix else out
    paths: dict[str, str] = {}
    for key, png in images.items():
        path = Path(f"{stem}.{key}.png")
        atomic.write_bytes(path, png)
        paths[key] = str(path)
    html_path = Path(f"{stem}.html")
    atomic.write_text(html_path, render_html(report, images))
    paths["html"] = str(html_path)
    return paths

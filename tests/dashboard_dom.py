"""What headless Chromium renders of a feature dashboard, checked against the store's token table: used on the
tests' own token-level store (test_explain) and on the demo's (test_demo)."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="chromium is not installed (apt-get install chromium; .ci/run does)")


class RenderedSpans(HTMLParser):
    """Token spans of a rendered page, grouped by their context div (what the browser's DOM holds)."""

    def __init__(self):
        super().__init__()
        self.contexts: list[dict] = []
        self.rows: list[dict] = []
        self._span: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and "ctx" in (a.get("class") or "").split() and "data-kind" in a:
            self.contexts.append({"kind": a["data-kind"], "doc": a["data-doc"], "spans": []})
        elif tag == "span" and "t" in (a.get("class") or "").split() and self.contexts:
            self._span = {"pos": int(a["data-pos"]), "tok": int(a["data-tok"]), "act": float(a["data-act"]),
                          "on": "on" in a["class"].split(), "text": ""}
        elif tag == "tr" and "data-id" in a:
            self.rows.append({"id": int(a["data-id"]), "hidden": "display: none" in (a.get("style") or "")})

    def handle_data(self, data):
        if self._span is not None:
            self._span["text"] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._span is not None:
            self.contexts[-1]["spans"].append(self._span)
            self._span = None


def rendered_dom(url: str, tmp: Path) -> tuple[str, str]:
    """Chromium's DOM after scripts ran, and its stderr (console messages)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr",
           "--v=0", "--dump-dom", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr



def check_feature_page(page: Path, tokens: pl.DataFrame, feature: int, tokenizer, tmp: Path) -> int:
    """Every token span of the page's top contexts is the token table's token and activation at that position, the
    firing ones are highlighted, and the spans' text decodes to the context; returns the number of top contexts."""
    tok_at = {(r["doc_id"], r["position"]): r["token_id"] for r in tokens.iter_rows(named=True)}
    act_at = {(r["doc_id"], r["position"]): dict(zip(r["feature_ids"], r["values"])).get(feature, 0.0)
              for r in tokens.iter_rows(named=True)}
    dom, err = rendered_dom(page.resolve().as_uri(), tmp)
    assert not [line for line in err.splitlines() if re.search(r":CONSOLE[:(\]]|Uncaught", line)]
    parsed = RenderedSpans()
    parsed.feed(dom)
    top = [c for c in parsed.contexts if c["kind"] == "top"]
    assert top, f"{page}: no top contexts rendered"
    highlighted = 0
    for ctx in top:
        for s in ctx["spans"]:
            assert s["tok"] == tok_at[(ctx["doc"], s["pos"])]
            assert s["act"] == pytest.approx(act_at[(ctx["doc"], s["pos"])], rel=1e-5)
            assert s["on"] == (act_at[(ctx["doc"], s["pos"])] > 0)
            highlighted += s["on"]
        assert "".join(s["text"] for s in ctx["spans"]) == tokenizer.decode([s["tok"] for s in ctx["spans"]])
    assert highlighted >= len(top)  # every top context shows its peak highlighted
    return len({c["doc"] for c in top})

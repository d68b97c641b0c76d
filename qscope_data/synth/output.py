"""The synthesis stage's output folder, owned here: its file names, the accepted samples' schema (what
`synthesize.py` writes) and the reader later stages (curate, the card) use.

``DIR/accepted.jsonl`` (or ``accepted.parquet``): one sample a line with ``id`` (its doc_id), ``messages`` (ending
in an assistant turn), ``target_feature``, ``category``, ``lang``, ``generator``, ``attempts``, ``activation``,
``verified`` (what the verification encode read: ``prompt`` or ``conversation``), ``variant``, ``label``,
``threshold``. ``DIR/summary.json`` is optional to a reader; its sha256 goes into the curated manifest. A sample that
is not usable (bad JSON, no id, malformed messages, ``verified`` false) is removed with a reason; the run goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from qscope_data import atomic
from qscope_data.errors import DataError
from qscope_data.inputs import ROLES

ACCEPTED_JSONL = "accepted.jsonl"
ACCEPTED_PARQUET = "accepted.parquet"
REJECTED_JSONL = "rejected.jsonl"
BASELINE_DIR = "baseline"
SUMMARY_JSON = "summary.json"
STORE_DIR = "store"

ACCEPTED_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("target_feature", pa.int32()),
    ("category", pa.string()),
    ("lang", pa.string()),
    ("generator", pa.string()),
    ("attempts", pa.int32()),
    ("activation", pa.float64()),
    ("verified", pa.string()),
    ("variant", pa.string()),
    ("label", pa.string()),
    ("threshold", pa.float64()),
    ("response", pa.string()),  # "generated", or a template refusal when the generated answer did not refuse
])
ACCEPTED = (ACCEPTED_JSONL, ACCEPTED_PARQUET)  # what a reader looks for, in this order
META = ("target_feature", "label", "attempts", "activation", "threshold", "verified", "variant")


@dataclass
class SyntheticSample:
    doc_id: str
    messages: list[dict]
    file: str
    line: int
    lang: str | None = None
    category: str | None = None
    generator: str = "unknown"
    meta: dict[str, Any] = field(default_factory=dict)  # target_feature, label, attempts, activation, threshold, …

    @property
    def source(self) -> str:
        return f"synthetic:{self.generator}"


@dataclass
class SyntheticReject:
    file: str
    line: int
    reason: str  # malformed | unverified
    detail: str
    doc_id: str | None = None
    lang: str | None = None
    generator: str | None = None


@dataclass
class SyntheticSet:
    path: Path
    accepted: Path
    samples: list[SyntheticSample]
    rejects: list[SyntheticReject]
    accepted_sha256: str
    summary_sha256: str | None


def _str_or_none(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _messages_problem(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "messages is not a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"messages[{i}] needs a role in {sorted(ROLES)} and string content"
    if messages[-1]["role"] != "assistant":
        return "messages do not end in an assistant turn"
    return None


def _rows(path: Path):
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from exc
        yield from enumerate(table.to_pylist(), start=1)
        return
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                yield line_no, f"malformed JSON ({exc})"
                continue
            yield line_no, obj if isinstance(obj, dict) else f"expected a JSON object, got {type(obj).__name__}"


def load_synthetic(folder: str | Path) -> SyntheticSet:
    folder = Path(folder)
    accepted = next((folder / name for name in ACCEPTED if (folder / name).is_file()), None)
    if accepted is None:
        raise DataError(f"--synth {folder}: no {' or '.join(ACCEPTED)} (expected the output folder of `qscope synth`)")
    samples: list[SyntheticSample] = []
    rejects: list[SyntheticReject] = []
    for line, obj in _rows(accepted):
        if isinstance(obj, str):
            rejects.append(SyntheticReject(str(accepted), line, "malformed", obj))
            continue
        doc_id, lang, gen = _str_or_none(obj.get("id")), _str_or_none(obj.get("lang")), _str_or_none(obj.get("generator"))
        problem = "no id" if doc_id is None else _messages_problem(obj.get("messages"))
        if problem:
            rejects.append(SyntheticReject(str(accepted), line, "malformed", problem, doc_id, lang, gen))
            continue
        if obj.get("verified") is False or str(obj.get("verified")).lower() == "false":
            rejects.append(SyntheticReject(str(accepted), line, "unverified", "verified is false", doc_id, lang, gen))
            continue
        samples.append(SyntheticSample(
            doc_id=doc_id, messages=obj["messages"], file=str(accepted), line=line, lang=lang,
            category=_str_or_none(obj.get("category")), generator=gen or "unknown",
            meta={k: obj.get(k) for k in META}, 
        ))
    summary = folder / SUMMARY_JSON
    return SyntheticSet(
        path=folder, accepted=accepted, samples=samples, rejects=rejects, accepted_sha256=atomic.sha256_file(accepted),
        summary_sha256=atomic.sha256_file(summary) if summary.is_file() else None,
    )


def load_synth_summary(folder: str | Path) -> dict[str, Any]:
    """A finished synthesis folder's summary.json (totals, coverage before/after, comparison, generator, …)."""
    path = Path(folder) / SUMMARY_JSON
    if not path.is_file():
        raise DataError(f"{folder}: no {SUMMARY_JSON} (not a finished `qscope synth` output)")
    return atomic.read_json(path)


def synth_provenance(folder: Path) -> dict[str, Any] | None:
    """Which generator and which verification produced a synthesis folder's samples (from its summary.json), for the
    dataset card; None when the folder has no readable summary."""
    try:
        summary = json.loads((Path(folder) / SUMMARY_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    gen, comp = summary.get("generator") or {}, summary.get("comparison") or {}
    out: dict[str, Any] = {
        "generator": gen.get("name"), "generator_kind": gen.get("kind"),
        "verify": summary.get("verify"), "threshold": summary.get("threshold"), "layer": summary.get("layer"),
        "verifying_model": (summary.get("model") or {}).get("id"), "sae": (summary.get("sae") or {}).get("source"),
        "near_copy": summary.get("near_copy") or None, "fluency": summary.get("fluency") or None,
        "accepted": (summary.get("totals") or {}).get("accepted"),
    }
    for key in ("targeted", "random"):
        if key in comp:
            out[f"{key}_gap_coverage"] = comp[key].get("gap_coverage")
    return out


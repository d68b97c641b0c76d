"""Verification in representation space: a candidate counts only if re-encoding it with the verifying model + SAE
shows its target feature firing above the threshold.

Candidates go through the encode stage's own path (`qscope_data.encode.encode_records`, the function behind
`featurize` and `qscope encode`): same chat rendering, spans, truncation, first-position rule and aggregation, so an
accepted sample's activation is exactly what `qscope encode` would store for it. What is verified: the prompt
(span `prompt`: the conversation up to the assistant's answer) or the whole conversation (span `all`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from qscope_data.capture import LoadedModel
from qscope_data.encode import EncodeOptions, encode_records
from qscope_data.inputs import Record
from qscope_data.sae import SparseAutoencoder
from qscope_data.store import FEATURE_COLUMNS

VerifyTarget = Literal["prompt", "conversation"]
SPAN_OF = {"prompt": "prompt", "conversation": "all"}


@dataclass
class Candidate:
    id: str  # unique within the run
    messages: list[dict]
    target_feature: int


@dataclass
class Verdict:
    activation: float  # the target feature's max activation over the verified positions (0 when it never fires)
    row: int | None  # index into `Verification.table` (None when the candidate could not be encoded)
    error: str | None = None

    def fires(self, threshold: float) -> bool:
        return self.error is None and self.activation > threshold


@dataclass
class Verification:
    verdicts: dict[str, Verdict]
    table: pa.Table  # the store's feature columns, one row per encoded candidate


# The encode options of the target store that verification reuses: how a record is cut and aggregated.
RECORDED = ("max_tokens", "keep_first", "max_record_bytes", "long_records", "dtype")


def verify_options(target: VerifyTarget = "prompt", *, recorded: dict | None = None, batch_size: int | None = None,
                   device: str | None = None, **overrides) -> EncodeOptions:
    """The verification encode's options: the target store's own (`recorded`, its manifest's `options`) so an
    accepted sample's activation is what encoding it into that store gives; `overrides` (not None) win."""
    given = {k: v for k, v in (recorded or {}).items() if k in RECORDED}
    given |= {k: v for k, v in dict(overrides, batch_size=batch_size, device=device).items() if v is not None}
    return EncodeOptions(**given, span=SPAN_OF[target], id_field="id", drop_text=True)


class Verifier:
    def __init__(self, lm: LoadedModel, sae: SparseAutoencoder, layer: int, options: EncodeOptions):
        self.lm, self.sae, self.layer, self.options = lm, sae, layer, options

    @property
    def target(self) -> VerifyTarget:
        return "prompt" if self.options.span == "prompt" else "conversation"

    def verify(self, candidates: list[Candidate]) -> Verification:
        records = [Record(doc_id=c.id, file="<synth>", line=i + 1, text=None, messages=c.messages, fields={"id": c.id})
                   for i, c in enumerate(candidates)]
        encoded = encode_records(self.lm, {self.layer: self.sae}, records, self.options)
        table = encoded.docs[self.layer].select(list(FEATURE_COLUMNS))
        rows = {doc_id: i for i, doc_id in enumerate(table.column("doc_id").to_pylist())}
        ids, acts = table.column("feature_ids").to_pylist(), table.column("max_acts").to_pylist()
        failed = {r.doc_id: r.reason for r in encoded.rejects}
        verdicts: dict[str, Verdict] = {}
        for c in candidates:
            row = rows.get(c.id)
            if row is None:
                verdicts[c.id] = Verdict(0.0, None, failed.get(c.id, "not encoded"))
                continue
            found = dict(zip(ids[row], acts[row]))
            verdicts[c.id] = Verdict(float(found.get(c.target_feature, 0.0)), row)
        return Verification(verdicts, table)

"""The encode stage's options: how records become feature rows (`EncodeOptions`) and how wide the Ray executor
runs (`RayOptions`). The only place their defaults live: `qscope encode`'s flags and the pipeline config's
`corpora.*` / `encode:` sections refer to these fields. A light module (no torch), so the config loads fast.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from qscope_data.passthrough import PassthroughColumns


class EncodeOptions(BaseModel):
    """How records become feature rows. The fields in `OUTPUT_FIELDS` change what is written (resume checks them)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(256, ge=1, description="truncate each record to its first N tokens")
    keep_first: bool = Field(False, description="aggregate position 0 too (attention-sink outliers)")
    span: Literal["all", "prompt", "response"] = Field("all", description="chat records: positions aggregated")
    text_as: Literal["text", "user"] = Field(
        "text", description="a plain-text record is read as it is, or as the user turn of a chat (its template "
        "rendered; span as for conversations): encode a reference set of requests the way the chats it is compared "
        "with are read")
    text_field: str = "text"
    id_field: str = "id"
    drop_text: bool = Field(False, description="leave the text / messages out of the pass-through columns")
    token_level: bool = Field(False, description="also write the per-position top-k table")
    batch_size: int = Field(16, ge=1)
    shard_rows: int = Field(2048, ge=1, description="valid records per shard")
    device: str = "cpu"
    dtype: str = Field("auto", description="model dtype: auto | float32 | bfloat16 | float16")
    on_error: Literal["skip", "fail"] = "skip"
    split: str | None = Field(None, description="split of a Hugging Face dataset input")
    streaming: bool = Field(False, description="stream a hub dataset (no up-front scan: no ETA)")
    max_record_bytes: int = Field(1 << 20, ge=1, description="a record's text / messages longer than this (UTF-8) ...")
    long_records: Literal["reject", "truncate"] = Field(
        "reject", description="... is rejected (to rejects.jsonl, with its file and line), or tokenised whole and "
        "truncated to max_tokens like any record (memory grows with the record)")

    OUTPUT_FIELDS: ClassVar[tuple[str, ...]] = ("max_tokens", "keep_first", "span", "text_as", "text_field", "id_field", "drop_text",
                                      "token_level", "shard_rows", "dtype", "split", "max_record_bytes", "long_records")

    def output_options(self) -> dict:
        return {name: getattr(self, name) for name in self.OUTPUT_FIELDS}

    def passthrough(self) -> PassthroughColumns:
        """The (empty) pass-through column set these options imply: the id is `doc_id`; text unless drop_text."""
        exclude = {self.id_field}
        if self.drop_text:
            exclude |= {self.text_field, "messages"}
        return PassthroughColumns(exclude=exclude)


class RayOptions(BaseModel):
    """Where and how wide the encode runs on Ray."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, description="None: start a local Ray; 'auto': join this node's cluster; ray://host:10001")
    workers: int = Field(1, ge=1, description="encoder actors (one model copy each)")
    gpus_per_worker: float = Field(0.0, ge=0.0, description="GPUs per actor; fractional packs several actors on a GPU")
    cpus_per_worker: float = Field(0.25, gt=0.0, description="CPUs an actor claims; keep it fractional on small machines")
    tokenize_cpus: float = Field(0.25, gt=0.0, description="CPUs a tokenise task claims")
    tokenize_tasks: int | None = Field(None, ge=1, description="tokenise tasks at once (default: as many as actors); "
                                       "each runs in a worker process that loads the tokenizer once")

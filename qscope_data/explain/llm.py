"""Asking the explainer / scorer through the project's generators, with a resumable answer cache and usage counts.

The cache (`llm_cache.jsonl` in the output folder) holds one JSON line per answered request: the request's key
(sha256 of the model identity — kind, model name, sampling parameters; not the URL, the key or concurrency — and the
messages), its kind and the answer text with the server's token counts. It is appended and flushed after every
chunk of requests (`CachedLLM.chunk`), so a run killed half way keeps what it was told; a rerun sends only requests whose key is not there. A line left
unfinished by a crash is ignored. Failed requests are not cached: a rerun asks them again. Nothing of the API key is
in a key or a line (the generator holds it; `describe()` says only whether it is set).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qscope_data.synth.generators import Generator

CACHE_FILE = "llm_cache.jsonl"
_IDENTITY_KEYS = ("kind", "model", "temperature", "top_p", "max_tokens", "max_new_tokens", "seed")


@dataclass(frozen=True)
class ExplainRequest:
    """A chat request of this stage (the generators' `ChatRequest`): kind is "explain" or "detect"."""

    id: str
    kind: str
    messages: list[dict]


@dataclass
class Usage:
    sent: int = 0  # requests that went to the model (after the cache)
    cache_hits: int = 0
    failed: int = 0  # requests with no usable answer after the generator's retries
    tries: int = 0  # HTTP tries, retries included
    prompt_tokens: int = 0
    completion_tokens: int = 0
    price_in: float = 0.0  # USD per 1M prompt tokens (what the user says their endpoint costs)
    price_out: float = 0.0

    @property
    def cost_usd(self) -> float:
        return round(self.prompt_tokens * self.price_in / 1e6 + self.completion_tokens * self.price_out / 1e6, 6)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "cost_usd": self.cost_usd}


def generator_identity(generator: Generator) -> dict[str, Any]:
    """What decides an answer: the model and its sampling parameters (never the URL, key, concurrency, retries)."""
    info = generator.describe()
    ident = {k: info[k] for k in _IDENTITY_KEYS if k in info}
    if info.get("kind") == "hf":
        ident["model"] = (info.get("model") or {}).get("id")
    return ident


def request_key(identity: dict[str, Any], messages: list[dict]) -> str:
    blob = json.dumps({"model": identity, "messages": messages}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AnswerCache:
    """Append-only JSONL of answers by request key (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.answers: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.answers[row["key"]] = row
                except (ValueError, KeyError, TypeError):
                    continue  # an unfinished last line of a killed run

    def get(self, key: str) -> dict[str, Any] | None:
        return self.answers.get(key)

    def put(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.answers[row["key"]] = row
            fh.flush()
            os.fsync(fh.fileno())


@dataclass
class Answer:
    text: str | None
    error: str | None = None
    cached: bool = False


@dataclass
class CachedLLM:
    """One generator behind the cache; `ask` returns an `Answer` per request id."""

    generator: Generator
    cache: AnswerCache
    usage: Usage = field(default_factory=Usage)
    chunk: int = 32  # requests per generator call; the cache is written after each

    def __post_init__(self) -> None:
        self.identity = generator_identity(self.generator)

    def ask(self, requests: list[ExplainRequest]) -> dict[str, Answer]:
        out: dict[str, Answer] = {}
        keys = {r.id: request_key(self.identity, r.messages) for r in requests}
        todo = []
        for r in requests:
            hit = self.cache.get(keys[r.id])
            if hit is not None:
                out[r.id] = Answer(hit["text"], cached=True)
                self.usage.cache_hits += 1
            else:
                todo.append(r)
        for start in range(0, len(todo), self.chunk):  # cached chunk by chunk: a crash loses one chunk at most
            part = todo[start:start + self.chunk]
            rows = []
            for r, res in zip(part, self.generator.generate(part)):
                self.usage.sent += 1
                self.usage.tries += res.tries
                usage = res.usage or {}
                self.usage.prompt_tokens += usage.get("prompt_tokens", 0)
                self.usage.completion_tokens += usage.get("completion_tokens", 0)
                if res.ok:
                    out[r.id] = Answer(res.text)
                    rows.append({"key": keys[r.id], "kind": r.kind, "text": res.text, "usage": usage})
                else:
                    self.usage.failed += 1
                    out[r.id] = Answer(None, res.error)
            self.cache.put(rows)
        return out

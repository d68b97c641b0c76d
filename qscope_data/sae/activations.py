"""An on-disk cache of residual-stream activations: read the model once, train and evaluate SAEs many times.

Why: on a CPU the forward pass is the cost of SAE training (Gemma-3-270M to block 12 runs a few hundred tokens/s on
2 cores), and choosing a block, a width and k by measurement means training several SAEs on the same activations.
One forward captures every requested block at once.

Layout of a cache folder (float32, row-major, appended in order; readable while it grows):
- `layer{n}.train.f32` / `layer{n}.heldout.f32`: [positions, d_model] for block n (position 0 of each text and
  padding removed: the first position is an attention sink with a norm 10–30× the rest, and no stage reads it);
- `heldout.jsonl`: the held-out texts (every `eval_every`-th), for spliced-loss evaluation;
- `meta.json`: d_model, layers, positions so far, the fingerprint of what produced it, and `complete`.
A cache whose fingerprint differs from the request is rebuilt; an incomplete one is resumed from scratch.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

META = "meta.json"


@dataclass
class CacheMeta:
    d_model: int
    layers: list[int]
    train_positions: int
    heldout_positions: int
    texts: int
    fingerprint: str
    complete: bool


def read_meta(folder: str | Path) -> CacheMeta | None:
    try:
        return CacheMeta(**json.loads((Path(folder) / META).read_text()))
    except (OSError, json.JSONDecodeError, TypeError):
        return None


def _write_meta(folder: Path, meta: CacheMeta) -> None:
    tmp = folder / f".{META}.tmp"
    tmp.write_text(json.dumps(meta.__dict__, indent=2))
    os.replace(tmp, folder / META)


def _file(folder: Path, layer: int, split: str) -> Path:
    return folder / f"layer{layer}.{split}.f32"


def collect(
    lm,
    layers: list[int],
    texts: Iterable[str],
    folder: str | Path,
    *,
    fingerprint: str,
    max_tokens: int = 128,
    text_batch: int = 32,
    eval_every: int = 20,
    max_positions: int | None = None,
    on_progress: Callable[[CacheMeta], None] | None = None,
) -> CacheMeta:
    """Run `lm` over `texts` once, appending block outputs for every layer in `layers` to the cache in `folder`.

    Reuses a complete cache with the same fingerprint. Texts are batched in their given order (shuffle them before).
    """
    from qscope_data.capture import capture

    folder = Path(folder)
    meta = read_meta(folder)
    if meta is not None and meta.fingerprint == fingerprint and set(layers) <= set(meta.layers) and (
            meta.complete or (max_positions is not None and meta.train_positions >= max_positions)):
        return meta  # the same stream, and at least as far as asked: a prefix of it is what a reader loads
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    meta = CacheMeta(lm.d_model, sorted(set(layers)), 0, 0, 0, fingerprint, False)
    _write_meta(folder, meta)
    handles = {(n, s): _file(folder, n, s).open("ab") for n in meta.layers for s in ("train", "heldout")}
    heldout_texts = (folder / "heldout.jsonl").open("a", encoding="utf-8")

    def flush(batch: list[tuple[int, str]]) -> None:
        enc = lm.tokenizer([t for _, t in batch], padding=True, truncation=True, max_length=max_tokens,
                           return_tensors="pt")
        mask = enc["attention_mask"].bool()
        keep = mask & (mask.cumsum(1) > 1)
        acts = capture(lm, enc["input_ids"], enc["attention_mask"], meta.layers)
        held = torch.tensor([i % eval_every == 0 for i, _ in batch])
        for split, rows_of in (("train", ~held), ("heldout", held)):
            sel = keep & rows_of[:, None]
            for n in meta.layers:
                handles[(n, split)].write(acts[n][sel.to(acts[n].device)].float().cpu().numpy().tobytes())
            count = int(sel.sum())
            if split == "train":
                meta.train_positions += count
            else:
                meta.heldout_positions += count
        for i, t in batch:
            if i % eval_every == 0:
                heldout_texts.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
        meta.texts += len(batch)
        for h in handles.values():
            h.flush()
        heldout_texts.flush()
        _write_meta(folder, meta)
        if on_progress:
            on_progress(meta)

    # Padding is wasted compute: forward batches of similar length, sorted within a pool of 16 batches.
    pool: list[tuple[int, str]] = []

    def drain() -> None:
        pool.sort(key=lambda item: len(item[1]))
        for start in range(0, len(pool), text_batch):
            flush(pool[start:start + text_batch])
        pool.clear()

    try:
        for i, text in enumerate(texts):
            pool.append((i, text))
            if len(pool) == 16 * text_batch:
                drain()
                if max_positions is not None and meta.train_positions >= max_positions:
                    break
        drain()
    finally:
        for h in handles.values():
            h.close()
        heldout_texts.close()
    meta.complete = True
    _write_meta(folder, meta)
    return meta


def load(folder: str | Path, layer: int, split: str = "train", limit: int | None = None) -> torch.Tensor:
    """Activations of block `layer` as a float32 tensor [positions, d_model] (a memory map: pages load on use)."""
    folder = Path(folder)
    meta = read_meta(folder)
    if meta is None or layer not in meta.layers:
        raise FileNotFoundError(f"{folder}: no cached activations for block {layer}")
    count = meta.train_positions if split == "train" else meta.heldout_positions
    if limit is not None:
        count = min(count, limit)
    if count == 0:
        return torch.empty(0, meta.d_model)
    arr = np.memmap(_file(folder, layer, split), dtype=np.float32, mode="c", shape=(count, meta.d_model))
    return torch.from_numpy(arr)


def heldout_texts(folder: str | Path) -> list[str]:
    with (Path(folder) / "heldout.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]

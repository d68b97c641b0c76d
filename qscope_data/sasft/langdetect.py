"""A small, dependency-free language detector for code-switching checks.

Why this and not a model: the SASFT evaluation asks one question of each generated response — does text of a
language other than the prompt's appear in it? For the switches SASFT targets (Chinese, Russian, Korean… leaking into
an answer) the Unicode script alone answers that, cheaply and reproducibly. Latin-script languages share a script, so
for them a stopword vote among a few languages (en, de, fr, es) decides.

How it works: the text (fenced code blocks and URLs removed) is cut into segments at sentence punctuation and
line breaks. Each segment's letters are counted per script. Script languages: Han → zh (→ ja when the segment also
has kana), Hiragana/Katakana → ja, Hangul → ko, Cyrillic → ru, Arabic → ar, Thai → th, Greek → el,
Devanagari → hi, Hebrew → he, Bengali → bn, Telugu → te, Tamil → ta, Georgian → ka, Armenian → hy. A script language
counts as present when the whole response holds at least `min_script_chars` of its letters. A Latin segment is
labelled with the stopword list that has the most hits, when it has at least `min_stopwords` hits and beats the
runner-up; otherwise it stays unlabelled ("latin").

Limits (by design; see docs/sasft.md): one script → one language (Ukrainian/Bulgarian read as ru, Persian/Urdu as
ar, Marathi/Nepali as hi; Chinese written only in kanji reads as zh); Latin languages other than en/de/fr/es are
never named, and short Latin segments (names, code identifiers, "OK") are left unlabelled rather than guessed;
transliterated text is invisible; a language switch inside one short sentence of the same script is missed.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

# (first, last, script) — ranges of letters; digits and punctuation belong to no script.
_RANGES: tuple[tuple[int, int, str], ...] = tuple(sorted((
    (0x0041, 0x005A, "latin"), (0x0061, 0x007A, "latin"), (0x00C0, 0x024F, "latin"), (0x1E00, 0x1EFF, "latin"),
    (0x0370, 0x03FF, "greek"), (0x1F00, 0x1FFF, "greek"),
    (0x0400, 0x052F, "cyrillic"),
    (0x0530, 0x058F, "armenian"),
    (0x0590, 0x05FF, "hebrew"),
    (0x0600, 0x06FF, "arabic"), (0x0750, 0x077F, "arabic"), (0x08A0, 0x08FF, "arabic"), (0xFB50, 0xFDFF, "arabic"),
    (0xFE70, 0xFEFF, "arabic"),
    (0x0900, 0x097F, "devanagari"),
    (0x0980, 0x09FF, "bengali"),
    (0x0B80, 0x0BFF, "tamil"),
    (0x0C00, 0x0C7F, "telugu"),
    (0x0E00, 0x0E7F, "thai"),
    (0x10A0, 0x10FF, "georgian"),
    (0x1100, 0x11FF, "hangul"), (0x3130, 0x318F, "hangul"), (0xAC00, 0xD7AF, "hangul"),
    (0x3040, 0x309F, "kana"), (0x30A0, 0x30FF, "kana"), (0x31F0, 0x31FF, "kana"), (0xFF66, 0xFF9F, "kana"),
    (0x3400, 0x4DBF, "han"), (0x4E00, 0x9FFF, "han"), (0xF900, 0xFAFF, "han"), (0x20000, 0x2FA1F, "han"),
)))  # sorted by start: `char_script` binary-searches them

SCRIPT_LANG = {
    "greek": "el", "cyrillic": "ru", "armenian": "hy", "hebrew": "he", "arabic": "ar", "devanagari": "hi",
    "bengali": "bn", "tamil": "ta", "telugu": "te", "thai": "th", "georgian": "ka", "hangul": "ko", "kana": "ja",
    "han": "zh",
}
LANG_SCRIPT = {lang: script for script, lang in SCRIPT_LANG.items()}

STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset("the and of to is in that it was for on are with as be this have from or by not but what "
                    "all were when we there can an your which their if do will each about how has would they you "
                    "he she his her its our been than then them these so some".split()),
    "de": frozenset("der die das und ist nicht ein eine einen dem den des mit sich auf für von zu im auch es "
                    "sie er wir ich wie aber oder wenn noch nach bei aus sind war wird werden hat haben kann dass "
                    "nur über schon".split()),
    "fr": frozenset("le la les et est un une des du de dans pour que qui pas sur au aux avec ce cette il elle "
                    "nous vous ils sont ont été être mais ou où comme plus par se sa son ses leur très".split()),
    "es": frozenset("el la los las y es un una unos unas del de en para que por con no se su sus al lo como "
                    "más pero este esta está son fue ser hay muy cuando también sobre entre".split()),
}
LATIN_LANGS = tuple(STOPWORDS)
SUPPORTED = tuple(sorted(set(SCRIPT_LANG.values()) | set(LATIN_LANGS)))

_CODE_BLOCK = re.compile(r"```.*?(```|$)", re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_URL = re.compile(r"\b(?:https?://|www\.)\S+")
_SEGMENT = re.compile(r"[.!?;。！？；\n]+")
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def char_script(ch: str) -> str | None:
    """The script of one character, or None for digits, punctuation, symbols and unknown scripts."""
    cp = ord(ch)
    lo, hi = 0, len(_RANGES) - 1
    while lo <= hi:  # binary search over the sorted range starts
        mid = (lo + hi) // 2
        first, last, script = _RANGES[mid]
        if cp < first:
            hi = mid - 1
        elif cp > last:
            lo = mid + 1
        else:
            return script
    return None


@dataclass
class Detection:
    """What a text contains: languages found (script or stopword evidence) and the dominant one."""

    languages: set[str] = field(default_factory=set)
    dominant: str | None = None
    letters: dict[str, int] = field(default_factory=dict)  # evidence per language: letters (scripts) or letters of labelled segments (Latin)

    def to_json(self) -> dict:
        return {"languages": sorted(self.languages), "dominant": self.dominant, "letters": dict(self.letters)}


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    text = _CODE_BLOCK.sub(" ", text)
    text = _INLINE_CODE.sub(" ", text)
    return _URL.sub(" ", text)


def latin_language(segment: str, *, min_stopwords: int = 2) -> str | None:
    """The stopword list with the most hits in a Latin segment, when the evidence is clear; else None."""
    words = [w.lower() for w in _WORD.findall(segment) if char_script(w[0]) == "latin"]
    if not words:
        return None
    hits = Counter({lang: sum(w in sw for w in words) for lang, sw in STOPWORDS.items()})
    (best, n1), (_, n2) = hits.most_common(2)
    return best if n1 >= min_stopwords and n1 > n2 else None


def detect(text: str, *, min_script_chars: int = 2, min_stopwords: int = 2) -> Detection:
    """Languages present in `text` (see the module docstring for the rules and their limits)."""
    text = _clean(text)
    evidence: Counter[str] = Counter()
    for segment in _SEGMENT.split(text):
        scripts = Counter(s for s in map(char_script, segment) if s is not None)
        if not scripts:
            continue
        for script, n in scripts.items():
            if script == "latin":
                continue
            lang = SCRIPT_LANG[script]
            if script == "han" and scripts.get("kana"):
                lang = "ja"  # kanji inside Japanese text
            evidence[lang] += n
        if scripts.get("latin"):
            lang = latin_language(segment, min_stopwords=min_stopwords)
            if lang is not None:
                evidence[lang] += scripts["latin"]
    found = {lang for lang, n in evidence.items() if lang in LATIN_LANGS or n >= min_script_chars}
    dominant = max(found, key=lambda lang: (evidence[lang], lang)) if found else None
    return Detection(languages=found, dominant=dominant, letters=dict(evidence))


def is_code_switched(response: str, prompt_lang: str, **kwargs: int) -> tuple[bool, Detection]:
    """True when the response contains a detected language other than `prompt_lang`.

    Japanese prompts tolerate Han characters (kanji) and Chinese prompts tolerate nothing else: a response to a zh
    prompt that contains kana is flagged as ja. A prompt language the detector cannot name (e.g. sw) flags only
    script languages, since unlabelled Latin text is never counted.
    """
    found = detect(response, **kwargs)
    others = found.languages - {prompt_lang}
    if prompt_lang == "ja":
        others.discard("zh")
    return bool(others), found

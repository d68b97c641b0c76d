"""The code-switching detector: scripts name their language, Latin text needs stopword evidence, code is ignored."""

from __future__ import annotations

import pytest

from qscope_data.sasft.evaluate import Prompt, code_switching
from qscope_data.sasft.langdetect import char_script, detect, is_code_switched


@pytest.mark.parametrize("text, lang", [
    ("敏捷的棕色狐狸跳过了懒狗。", "zh"),
    ("日本語のテキストです。漢字も使います。", "ja"),
    ("안녕하세요, 만나서 반갑습니다.", "ko"),
    ("Быстрая коричневая лиса прыгает через собаку.", "ru"),
    ("مرحبا بالعالم، كيف حالك؟", "ar"),
    ("สวัสดีครับ ยินดีที่ได้รู้จัก", "th"),
    ("Καλημέρα, τι κάνεις σήμερα;", "el"),
    ("नमस्ते, आप कैसे हैं?", "hi"),
    ("The weather is nice today and we will walk in the park.", "en"),
    ("Das Wetter ist heute schön und wir gehen in den Park.", "de"),
    ("Le chat est sur la table et il dort dans la maison.", "fr"),
    ("El gato está en la casa y duerme con los perros.", "es"),
])
def test_monolingual_text_is_its_language(text: str, lang: str) -> None:
    found = detect(text)
    assert found.languages == {lang} and found.dominant == lang


def test_script_table() -> None:
    assert [char_script(c) for c in "aЖ中あ한ب1 ."] == ["latin", "cyrillic", "han", "kana", "hangul", "arabic", None, None, None]


@pytest.mark.parametrize("response, prompt_lang, flagged, others", [
    ("The answer is four. 答案是四。", "en", True, {"zh"}),
    ("The answer is four, and that is all.", "en", False, set()),
    ("Ответ: четыре. Это просто.", "ru", False, set()),
    ("Ответ: четыре. The answer is that it is four.", "ru", True, {"en"}),
    ("答案是四。我用Python算的。", "zh", False, set()),  # a Latin name without stopwords is not a language
    ("日本語で答えます。答案は四です。", "ja", False, set()),  # kanji in Japanese text
    ("Here is the code:\n```python\nprint('你好，世界')\n```\nIt prints a greeting.", "en", False, set()),
    ("See https://例え.jp/ページ for the answer.", "en", False, set()),
    ("The answer is 4. Die Antwort ist vier und das ist gut.", "en", True, {"de"}),
    ("The answer is 4 ж", "en", False, set()),  # one stray letter is below min_script_chars
])
def test_code_switching_flags(response: str, prompt_lang: str, flagged: bool, others: set[str]) -> None:
    got, det = is_code_switched(response, prompt_lang)
    assert got is flagged
    assert det.languages - {prompt_lang} - ({"zh"} if prompt_lang == "ja" else set()) == others


def test_rate_summary_uses_field_or_detected_prompt_language() -> None:
    prompts = [Prompt("a", None, "What is two plus two?", "en"), Prompt("b", None, "Сколько будет два плюс два?", None),
               Prompt("c", None, "2 + 2 = ?", None), Prompt("d", None, "Why?", "en")]
    responses = ["Four. 答案是四。", "Четыре.", "4", "Because it is so, and that is the reason."]
    summary, rows = code_switching(prompts, responses)
    assert summary["n"] == 3 and summary["undetermined"] == 1  # "2 + 2 = ?" has no language
    assert summary["flagged"] == 1 and summary["rate"] == pytest.approx(1 / 3)
    assert summary["by_lang"]["en"] == {"n": 2, "flagged": 1, "rate": 0.5}
    assert summary["by_lang"]["ru"]["flagged"] == 0
    assert summary["other_languages"] == {"zh": 1}
    assert rows[1]["prompt_lang"] == "ru" and rows[2]["flagged"] is None

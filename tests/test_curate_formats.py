"""TRL formats: records become rows of each format, refusals and removals, and the check agrees with TRL's own."""

from __future__ import annotations

import pytest

from qscope_data.curate.formats import FormatRefused, Unformattable, check_trl_format, to_format

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 12 plus 30?"},
    {"role": "assistant", "content": "42."},
]


def test_conversation_in_each_format():
    row = to_format("messages", messages=CHAT)
    assert row == {"messages": CHAT} and check_trl_format(row, "messages") is None
    pc = to_format("prompt-completion", messages=CHAT)
    assert pc == {"prompt": CHAT[:2], "completion": CHAT[2:]}
    assert check_trl_format(pc, "prompt-completion") is None
    with pytest.raises(FormatRefused, match="--format text"):
        to_format("text", messages=CHAT)


def test_text_record_in_each_format():
    assert to_format("text", text="hello") == {"text": "hello"}
    with pytest.raises(FormatRefused, match="--text-role assistant"):
        to_format("messages", text="hello")
    with pytest.raises(FormatRefused, match="nothing to learn"):
        to_format("messages", text="hello", text_role="user")
    assert to_format("messages", text="hello", text_role="assistant") == {
        "messages": [{"role": "assistant", "content": "hello"}]}
    with pytest.raises(FormatRefused, match="--text-prompt"):
        to_format("prompt-completion", text="hello", text_role="assistant")
    row = to_format("prompt-completion", text="hello", text_role="assistant", text_prompt="Say hello.")
    assert row == {"prompt": [{"role": "user", "content": "Say hello."}],
                   "completion": [{"role": "assistant", "content": "hello"}]}
    assert check_trl_format(row, "prompt-completion") is None


def test_conversations_that_cannot_be_rows_are_unformattable():
    with pytest.raises(Unformattable, match="no_final_assistant_turn"):
        to_format("messages", messages=CHAT[:2])
    with pytest.raises(Unformattable, match="empty_prompt"):
        to_format("prompt-completion", messages=CHAT[2:])
    with pytest.raises(Unformattable, match="prompt_ends_in_system_turn"):
        to_format("prompt-completion", messages=[CHAT[0], CHAT[2]])
    # extra keys are dropped so every shard has one message type
    assert to_format("messages", messages=[{**CHAT[1], "name": "x"}, CHAT[2]])["messages"][0] == CHAT[1]


@pytest.mark.parametrize("row,fmt,problem", [
    ({"text": ""}, "text", "non-empty string"),
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages", "needs a role"),
    ({"messages": CHAT[:2]}, "messages", "assistant turn"),
    ({"prompt": [CHAT[0]], "completion": CHAT[2:]}, "prompt-completion", "system turn"),
    ({"prompt": CHAT[1:2], "completion": CHAT[1:2]}, "prompt-completion", "non-assistant"),
    ({"prompt": "x", "completion": CHAT[2:]}, "prompt-completion", "non-empty list"),
])
def test_check_trl_format_names_the_problem(row, fmt, problem):
    assert problem in check_trl_format(row, fmt)


def test_check_agrees_with_trl():
    """Rows we call valid are what TRL calls conversational (or not, for text) and render with TRL's own
    `apply_chat_template` on a real tokenizer with a chat template."""
    data_utils = pytest.importorskip("trl.data_utils")
    from qscope_data.testing import build_tokenizer

    tok = build_tokenizer()
    rows = {
        "messages": to_format("messages", messages=CHAT),
        "prompt-completion": to_format("prompt-completion", messages=CHAT),
        "text": to_format("text", text="plain text"),
    }
    for fmt, row in rows.items():
        assert check_trl_format(row, fmt) is None
        assert data_utils.is_conversational(row) is (fmt != "text")
    rendered = data_utils.apply_chat_template(rows["prompt-completion"], tok)
    assert rendered["prompt"].endswith("<|im_start|>assistant\n") and rendered["completion"].startswith("42.")
    assert "42." in data_utils.apply_chat_template(rows["messages"], tok)["text"]

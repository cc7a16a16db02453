"""The LLM predictor's optional `messages` input (models/llm/chat_messages.py) and how it reaches the
chat template."""

import json

import pytest

from models.llm.chat_messages import parse_messages

TURNS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}]


def test_empty_is_no_history():
    assert parse_messages(None, None) == [] and parse_messages("  ", "sys") == []
    assert parse_messages(json.dumps(TURNS), None) == TURNS


@pytest.mark.parametrize("value, error", [
    ("not json", "messages: must be a JSON list"),
    ('{"role": "user"}', "messages: must be a JSON list"),
    ('[{"role": "tool", "content": "x"}]', r"messages\[0\].role"),
    ('[{"role": "user", "content": 3}]', r"messages\[0\].content"),
    ('[{"role": "user", "content": "a", "name": "b"}]', r"messages\[0\]: must be an object"),
    ('[{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]', "may only come first"),
])
def test_bad_messages_name_the_item_and_rule(value, error):
    with pytest.raises(ValueError, match=error):
        parse_messages(value, None)


def test_system_in_both_places_is_refused():
    with pytest.raises(ValueError, match="give one of them"):
        parse_messages(json.dumps(TURNS), "Another system prompt")


def test_history_goes_through_the_chat_template(tiny_weights_root):
    from models.llm.text_generation import TextGenerator

    generator = TextGenerator(tiny_weights_root / "llm")
    text = generator.format_prompt("And then?", None, TURNS)
    positions = [text.index(s) for s in ("Be brief.", "Hi", "Hello!", "And then?")]
    assert positions == sorted(positions)
    assert generator.format_prompt("Hi", "Be brief.") == generator.format_prompt("Hi", None, TURNS[:1])

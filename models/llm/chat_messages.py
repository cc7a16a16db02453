"""The LLM predictor's optional `messages` input: earlier turns of a conversation, Replicate-style.

`messages` is JSON text, a list of {"role": "system"|"user"|"assistant", "content": "..."} objects,
oldest first; `prompt` stays the next user turn, so a plain prompt works as before. The OpenAI-
compatible chat route of `cogkit gateway` sends multi-turn conversations this way. Errors name the
input and the rule; they reach the caller as the prediction's error.
"""

import json

ROLES = ("system", "user", "assistant")


def parse_messages(text: str | None, system_prompt: str | None) -> list[dict]:
    """The conversation before the prompt, checked; [] for an empty input."""
    if text is None or not text.strip():
        return []
    try:
        messages = json.loads(text)
    except ValueError as e:
        raise ValueError(f"messages: must be a JSON list of {{role, content}} objects ({e})") from None
    if not isinstance(messages, list):
        raise ValueError("messages: must be a JSON list of {role, content} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            raise ValueError(f"messages[{i}]: must be an object with only `role` and `content`")
        if message.get("role") not in ROLES:
            raise ValueError(f"messages[{i}].role: must be one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"messages[{i}].content: must be a string")
        if message["role"] == "system" and i > 0:
            raise ValueError(f"messages[{i}]: a system message may only come first")
    if system_prompt and messages and messages[0]["role"] == "system":
        raise ValueError("messages: has a system message and system_prompt is set too; give one of them")
    return [{"role": m["role"], "content": m["content"]} for m in messages]

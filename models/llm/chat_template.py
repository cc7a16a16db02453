"""A checkpoint's chat template, rendered the way transformers' `apply_chat_template` does.

Templates are Jinja2 programs shipped with the checkpoint (tokenizer_config.json or
chat_template.jinja). They are run in a sandbox with the helpers transformers gives them
(`raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII text), so that Llama 3.x, Qwen
and Mistral templates render the same text here as in the reference. Some templates refuse a
system message (older Mistral ones): the system prompt then goes in front of the user's message.
"""

import json
from datetime import datetime

import jinja2
import jinja2.sandbox


class TemplateError(ValueError):
    pass


def _raise(message: str):
    raise TemplateError(f"chat template: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict):
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                           extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.template = env.from_string(source)
        self.special = {k: v for k, v in special_tokens.items() if v is not None}

    def render(self, messages: list[dict], tools: list[dict] | None = None,
               add_generation_prompt: bool = True, **extra) -> str:
        return self.template.render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                    **self.special, **extra)

    def prompt(self, prompt: str, system_prompt: str | None, history=()) -> str:
        """The next user turn after `history` (earlier {role, content} turns), with the system prompt as
        its own message where the template takes one, else in front of the first user message."""
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages = system + list(history) + [{"role": "user", "content": prompt}]
        try:
            return self.render(messages)
        except (TemplateError, jinja2.TemplateError):
            if messages[0]["role"] != "system":
                raise
        rest = [dict(m) for m in messages[1:]]
        first_user = next(m for m in rest if m["role"] == "user")
        first_user["content"] = f"{messages[0]['content']}\n\n{first_user['content']}"
        return self.render(rest)

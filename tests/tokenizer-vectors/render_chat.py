#!/usr/bin/env python3
"""Renders chat conversations with Python's Jinja2, set up the way Hugging Face transformers'
apply_chat_template sets it up (run by generate.mjs; needs jinja2, Debian: python3-jinja2).

stdin:  {"template", "special_tokens": {"bos_token": ..., ...}, "cases": [{"messages", "add_generation_prompt"}]}
stdout: {"jinja2": version, "rendered": [string per case]}

The environment: ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks and the
loopcontrols extension; a tojson filter that is json.dumps with ensure_ascii=False (and
indent, separators, sort_keys passed through); raise_exception raising a TemplateError. Each
render gets messages, tools=None, documents=None, add_generation_prompt and the special tokens
as variables, as transformers passes them.
"""
import json
import sys

import jinja2
from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise TemplateError(message)


def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def main():
    job = json.load(sys.stdin)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(job["template"])
    rendered = [
        template.render(messages=case["messages"], tools=None, documents=None,
                        add_generation_prompt=case["add_generation_prompt"], **job["special_tokens"])
        for case in job["cases"]
    ]
    json.dump({"jinja2": jinja2.__version__, "rendered": rendered}, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()

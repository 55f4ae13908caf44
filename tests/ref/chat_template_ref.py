#!/usr/bin/python3
"""Reference chat-template rendering with Jinja2 (Debian python3-jinja2), set up the way
transformers' apply_chat_template sets it up: a sandboxed environment with trim_blocks and
lstrip_blocks, the loopcontrols extension, tojson = json.dumps(ensure_ascii=False, ...),
raise_exception and strftime_now as globals; render(messages=..., tools=..., add_generation_prompt=...,
plus the special tokens and extra keyword arguments such as enable_thinking).

usage: chat_template_ref.py IN.json OUT.json
  IN:  {"templates": [{"text", "bos_token", "eos_token"}],
        "cases": [{"t": index, "messages", "add_generation_prompt", ["enable_thinking"], ["tools"]}]}
  OUT: {"version": "...", "results": [{"text": ...} or {"error": ...}, ...]}  (one per case)
"""

import json
import sys
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return datetime.now().strftime(fmt)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f:
        req = json.load(f)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    templates = [(env.from_string(t["text"]), t) for t in req["templates"]]
    results = []
    for case in req["cases"]:
        tpl, info = templates[case["t"]]
        kwargs = {}
        # transformers passes only the special tokens that are set.
        for key in ("bos_token", "eos_token"):
            if info.get(key):
                kwargs[key] = info[key]
        if "enable_thinking" in case:
            kwargs["enable_thinking"] = case["enable_thinking"]
        try:
            text = tpl.render(messages=case["messages"], tools=case.get("tools"),
                              add_generation_prompt=case["add_generation_prompt"], **kwargs)
            results.append({"text": text})
        except Exception as e:  # any failure of the template is a refusal
            results.append({"error": f"{type(e).__name__}: {e}"})
    with open(dst, "w", encoding="utf-8") as f:
        json.dump({"version": f"jinja2 {jinja2.__version__}", "results": results}, f, ensure_ascii=False)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Turns Qwen2.5's or Llama 3.1's tokenizer.json into an R1-Distill one (run by generate.mjs).

    python3 distill_tokenizer.py qwen|llama SRC/tokenizer.json DST/tokenizer.json

DeepSeek-R1's dense distills ship their base model's tokenizer.json with DeepSeek's chat
tokens written over some of its added tokens, at the public R1-Distill ids below. This script
does the same to the packaged base files, and nothing else:
  * the added token at each id gets DeepSeek's content; its flags follow DeepSeek-V3's
    tokenizer.json for the same string (BOS/EOS: special, not normalized; <｜User｜>,
    <｜Assistant｜>: normalized, not special), and <think>/</think> are taken like
    <｜User｜>;
  * the post-processor prepends <｜begin▁of▁sentence｜> for add_special_tokens=true: Llama's
    TemplateProcessing is renamed from <|begin_of_text|> (same id 128000); Qwen's ByteLevel
    one becomes the TemplateProcessing that transformers' LlamaTokenizerFast (the distills'
    tokenizer_class) installs for add_bos_token=true, add_eos_token=false.
The file is written as json.dumps(indent=2, ensure_ascii=False) writes it, which reproduces
both packaged files byte for byte (checked below), so the diff is only these changes.
"""
import json
import sys

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
SPECIAL = {"special": True, "normalized": False}
TEXT = {"special": False, "normalized": True}
TOKENS = {
    "qwen": {151643: (EOS, SPECIAL), 151644: ("<｜User｜>", TEXT), 151645: ("<｜Assistant｜>", TEXT),
             151646: (BOS, SPECIAL), 151648: ("<think>", TEXT), 151649: ("</think>", TEXT)},
    "llama": {128000: (BOS, SPECIAL), 128001: (EOS, SPECIAL), 128011: ("<｜User｜>", TEXT),
              128012: ("<｜Assistant｜>", TEXT), 128013: ("<think>", TEXT), 128014: ("</think>", TEXT)},
}


def bos_template(bos_id):
    def special(type_id):
        return {"SpecialToken": {"id": BOS, "type_id": type_id}}

    def seq(name, type_id):
        return {"Sequence": {"id": name, "type_id": type_id}}

    return {"type": "TemplateProcessing",
            "single": [special(0), seq("A", 0)],
            "pair": [special(0), seq("A", 0), special(1), seq("B", 1)],
            "special_tokens": {BOS: {"id": BOS, "ids": [bos_id], "tokens": [BOS]}}}


def main(family, src, dst):
    raw = open(src, encoding="utf-8").read()
    j = json.loads(raw)
    assert json.dumps(j, indent=2, ensure_ascii=False) == raw, "the file would not round-trip"
    by_id = {t["id"]: t for t in j["added_tokens"]}
    for token_id, (content, flags) in TOKENS[family].items():
        by_id[token_id].update(content=content, **flags)
    bos_id = next(i for i, (c, _) in TOKENS[family].items() if c == BOS)
    if family == "qwen":
        assert j["post_processor"]["type"] == "ByteLevel"
        j["post_processor"] = bos_template(bos_id)
    else:
        steps = j["post_processor"]["processors"]
        assert [s["type"] for s in steps] == ["ByteLevel", "TemplateProcessing"]
        assert list(steps[1]["special_tokens"]) == ["<|begin_of_text|>"]
        steps[1] = bos_template(bos_id)
    with open(dst, "w", encoding="utf-8") as out:
        out.write(json.dumps(j, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main(*sys.argv[1:])

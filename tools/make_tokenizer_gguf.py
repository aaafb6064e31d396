#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer-deepseek-v3-gguf/tokenizer.gguf: the DeepSeek-V3 tokenizer of
tests/fixtures/tokenizer-deepseek-v3 as llama.cpp's converter stores it in a GGUF, metadata only
(no tensors, like convert_hf_to_gguf.py --vocab-only).

The file is written by llama.cpp's own gguf-py (GGUFWriter, SpecialVocab). The token list and
token types follow convert_hf_to_gguf's DeepseekV2Model.set_vocab -> ModelBase._set_vocab_gpt2
-> get_vocab_base (conversion/base.py) step by step. That code needs `transformers`
(AutoTokenizer) to read the Hugging Face files; it is not installed here, so the few things it
asks AutoTokenizer for are read from tokenizer.json directly:

  * tokenizer.vocab (get_vocab(), added tokens included): model.vocab plus added_tokens;
  * get_added_vocab() / added_tokens_decoder: added_tokens with their special / normalized flags;
  * decode(encode(token)) for a non-normalized added token: the token itself (it is matched as
    that added token and decodes to its content; nothing in this vocabulary changes);
  * vocab_size: hparams["vocab_size"] from the model's config.json (DeepSeek-V3's, 129280);
  * the pre-tokenizer name: get_vocab_base_pre hashes the ids of a check text; for DeepSeek-V3
    that hash names "deepseek-v3". With --shoal BIN the script recomputes the hash with shoal's
    tokenizer.json tokenizer and checks it against the hash in llama.cpp's converter source.

Merges, BOS/EOS/padding ids, add_bos/add_eos and the chat template come from gguf-py's
SpecialVocab run on a model folder (tokenizer.json, tokenizer_config.json, config.json), exactly
as the converter calls it.

Usage: /usr/bin/python3 tools/make_tokenizer_gguf.py [--shoal build/shoal]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

LLAMA_CPP = Path("/work/llama.cpp-3f545be")
sys.path.insert(0, str(LLAMA_CPP / "gguf-py"))
import gguf  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


# conversion/base.py ModelBase.does_token_look_special, verbatim in effect.
def does_token_look_special(token_text: str) -> bool:
    seems_special = token_text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
    seems_special = seems_special or (token_text.startswith("<|") and token_text.endswith("|>"))
    seems_special = seems_special or (token_text.startswith("<｜") and token_text.endswith("｜>"))
    seems_special = seems_special or (token_text.startswith("<unused") and token_text.endswith(">"))
    return seems_special


def converter_pre_hash(name: str) -> str:
    """The chkhsh that llama.cpp's get_vocab_base_pre maps to `name` (read from its source)."""
    src = (LLAMA_CPP / "conversion" / "base.py").read_text(encoding="utf-8")
    m = re.search(r'chkhsh == "([0-9a-f]{64})":\n(?:\s*#.*\n)*\s*res = "' + re.escape(name) + '"', src)
    if not m:
        raise SystemExit(f"no check hash for {name!r} in llama.cpp's converter")
    return m.group(1)


def converter_chktxt() -> str:
    src = (LLAMA_CPP / "conversion" / "base.py").read_text(encoding="utf-8")
    m = re.search(r"^\s*chktxt = (.*)$", src, re.M)
    if not m:
        raise SystemExit("no chktxt in llama.cpp's converter")
    return eval(m.group(1))  # a Python string literal from the converter's source


def check_pre_name(shoal: Path, tok_dir: Path, name: str) -> None:
    # get_vocab_base_pre: chktok = tokenizer.encode(chktxt) (add_special_tokens=True: BOS first,
    # as tokenizer_config.json's add_bos_token says); chkhsh = sha256(str(chktok)).
    line = json.dumps({"text": converter_chktxt(), "add_bos": True}) + "\n"
    out = subprocess.run([str(shoal), "tokenize", "--tokenizer", str(tok_dir), "encode"], input=line.encode(),
                         capture_output=True, check=True).stdout
    ids = json.loads(out)["ids"]
    got = hashlib.sha256(str(ids).encode()).hexdigest()
    want = converter_pre_hash(name)
    if got != want:
        raise SystemExit(f"pre-tokenizer check hash {got} is not {name!r}'s {want}")
    print(f"pre-tokenizer: check hash {got} names {name!r} in llama.cpp's converter")


def vocab_base(tokenizer_json: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    """get_vocab_base: the token list and token types, vocab_size entries."""
    vocab: dict[str, int] = dict(tokenizer_json["model"]["vocab"])
    added = tokenizer_json.get("added_tokens", [])
    for a in added:
        vocab[a["content"]] = a["id"]
    assert max(vocab.values()) < vocab_size
    reverse_vocab = {id_: tok for tok, id_ in vocab.items()}
    added_vocab = {a["content"]: a["id"] for a in added}
    added_tokens_decoder = {a["id"]: a for a in added}

    tokens: list[str] = []
    toktypes: list[int] = []
    for i in range(vocab_size):
        if i not in reverse_vocab:
            tokens.append(f"[PAD{i}]")
            toktypes.append(gguf.TokenType.UNUSED)
            continue
        token = reverse_vocab[i]
        if token in added_vocab:
            # (not normalized: decode(encode(token)) == token for this vocabulary)
            if added_tokens_decoder[i]["special"] or does_token_look_special(token):
                toktypes.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")  # pre-normalize user-defined spaces
                toktypes.append(gguf.TokenType.USER_DEFINED)
        else:
            toktypes.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, toktypes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", type=Path, default=FIXTURES / "tokenizer-deepseek-v3")
    ap.add_argument("--config", type=Path, default=FIXTURES / "configs" / "deepseek-v3-671b" / "config.json",
                    help="the model's config.json (vocab_size, bos/eos ids)")
    ap.add_argument("--out", type=Path, default=FIXTURES / "tokenizer-deepseek-v3-gguf" / "tokenizer.gguf")
    ap.add_argument("--pre", default="deepseek-v3")
    ap.add_argument("--shoal", type=Path, help="shoal binary: check the pre-tokenizer name by its hash")
    args = ap.parse_args()

    if args.shoal:
        check_pre_name(args.shoal, args.tokenizer, args.pre)

    tokenizer_json = json.loads((args.tokenizer / "tokenizer.json").read_text(encoding="utf-8"))
    hparams = json.loads(args.config.read_text(encoding="utf-8"))
    tokens, toktypes = vocab_base(tokenizer_json, hparams.get("vocab_size", len(tokenizer_json["model"]["vocab"])))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(args.out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.DEEPSEEK2])
    writer.add_name("DeepSeek-V3 tokenizer")
    # _set_vocab_gpt2
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(args.pre)
    writer.add_token_list(tokens)
    writer.add_token_types(toktypes)
    # SpecialVocab reads a model folder: the tokenizer files beside the model's config.json.
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            os.symlink((args.tokenizer / name).resolve(), Path(tmp) / name)
        os.symlink(args.config.resolve(), Path(tmp) / "config.json")
        special_vocab = gguf.SpecialVocab(tmp, load_merges=True)
    special_vocab.add_to_gguf(writer, quiet=True)
    # write_vocab (--vocab-only): header and metadata, no tensors.
    writer.write_header_to_file(path=args.out)
    writer.write_kv_data_to_file()
    writer.close()
    counts = {t.name: sum(1 for x in toktypes if x == t) for t in gguf.TokenType if any(x == t for x in toktypes)}
    print(f"wrote {args.out}: {len(tokens)} tokens {counts}, {len(special_vocab.merges)} merges, "
          f"special ids {special_vocab.special_token_ids}, add {special_vocab.add_special_token}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes a dense distill fixture (tests/fixtures/tiny-qwen2, tiny-llama3: Hugging Face
safetensors) as an F32 GGUF the way llama.cpp's convert_hf_to_gguf.py lays it out, so that
llama-quantize can make the BF16 and Q8_0 files of tests/fixtures/gguf-tiny-*.

What carries over from llama.cpp's converter (read, not copied; conversion/llama.py, qwen.py):
- architecture `llama` or `qwen2`, keys {arch}.context_length, embedding_length, block_count,
  feed_forward_length, attention.head_count(_kv), attention.layer_norm_rms_epsilon,
  rope.freq_base, rope.dimension_count, vocab_size; no tokenizer (tokenizer.ggml.model "none").
- tensor names token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm,
  ffn_gate, ffn_up, ffn_down}, output_norm, output (absent when the head is tied), with
  attn_{q,k,v}.bias for Qwen2.
- `llama` only: q_proj and k_proj rows (and biases) permuted from rotate-half pairs (i, i + d/2)
  to interleaved pairs (2i, 2i + 1) per head, and llama3 rope scaling stored as rope_freqs
  [head_dim / 2], the divisor of each pair's frequency.

Usage: PYTHONPATH=$LLAMA_CPP/gguf-py python3 tools/dense_fixture_to_gguf.py FIXTURE_DIR OUT.gguf
Needs numpy and llama.cpp's gguf-py (no torch).
"""
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import gguf


def read_safetensors(folder: Path) -> dict:
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        data = shard.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            raw = np.frombuffer(data[base + begin:base + end], dtype=np.uint16 if info["dtype"] == "BF16" else np.float32)
            if info["dtype"] == "BF16":
                raw = (raw.astype(np.uint32) << 16).view(np.float32)
            tensors[name] = raw.reshape(info["shape"]).copy()
    return tensors


def to_interleaved(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head reordered from halves (i, i + d/2) to pairs (2i, 2i + 1)."""
    shape = w.shape
    return w.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def llama3_rope_factors(c: dict, head_dim: int) -> np.ndarray:
    rs = c["rope_scaling"]
    freqs = 1.0 / (np.float32(c["rope_theta"]) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    out = []
    for f in freqs.astype(np.float32):
        wavelen = np.float32(2 * math.pi) / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def main() -> None:
    folder, out = Path(sys.argv[1]), sys.argv[2]
    c = json.loads((folder / "config.json").read_text())
    arch = {"llama": "llama", "qwen2": "qwen2"}[c["model_type"]]
    heads, kv_heads = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    head_dim = c.get("head_dim", c["hidden_size"] // heads)
    t = read_safetensors(folder)

    w = gguf.GGUFWriter(out, arch)
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_freq_base(c.get("rope_theta", 10000.0))
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(c["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("none")

    names = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.o_proj.weight": "attn_output.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
             "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    for p in ("q", "k", "v"):
        names[f"self_attn.{p}_proj.weight"] = f"attn_{p}.weight"
        names[f"self_attn.{p}_proj.bias"] = f"attn_{p}.bias"
    w.add_tensor("token_embd.weight", t.pop("model.embed_tokens.weight"))
    if arch == "llama" and (c.get("rope_scaling") or {}).get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(c, head_dim))
    for i in range(c["num_hidden_layers"]):
        for hf, gg in names.items():
            key = f"model.layers.{i}.{hf}"
            if key not in t:
                continue
            x = t.pop(key)
            if arch == "llama" and hf.startswith("self_attn.q_proj"):
                x = to_interleaved(x, heads)
            if arch == "llama" and hf.startswith("self_attn.k_proj"):
                x = to_interleaved(x, kv_heads)
            w.add_tensor(f"blk.{i}.{gg}", x)
    w.add_tensor("output_norm.weight", t.pop("model.norm.weight"))
    if "lm_head.weight" in t:
        w.add_tensor("output.weight", t.pop("lm_head.weight"))
    assert not t, f"tensors left unconverted: {sorted(t)}"
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()

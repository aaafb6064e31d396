#!/usr/bin/env python3
"""A DeepSeek-V3 Hugging Face checkpoint (BF16 safetensors, as `shoal synth` writes it) to a BF16
GGUF that llama.cpp's `deepseek2` architecture loads, so `llama-bench` runs the very weights
`shoal bench` runs. Written for the side-by-side in docs/performance.md, not as a general converter:
it follows the tensor names, MLA split and metadata keys of llama.cpp's own GGUFs as listed in
../shared/fixtures/gguf-a-q8_0/README.md (attn_k_b / attn_v_b, stacked experts, F32 norms and router).

  PYTHONPATH=LLAMA_CPP/gguf-py python3 bench/llama-cpp/hf_to_gguf_bf16.py MODEL_DIR OUT.gguf

Needs numpy and PyYAML (Debian: python3-numpy python3-yaml) and gguf-py from the llama.cpp tree.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np

import gguf


def read_safetensors(folder: Path):
    """name -> (dtype string, shape, numpy array of the raw values: uint16 for BF16, float32 for F32)."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        data = path.read_bytes()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            raw = data[base + b:base + e]
            np_dtype = {"BF16": np.uint16, "F32": np.float32}[info["dtype"]]
            out[name] = (info["dtype"], info["shape"], np.frombuffer(raw, dtype=np_dtype).reshape(info["shape"]))
    return out


def bf16_to_f32(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint32) << 16).view(np.float32)


def main():
    model, out_path = Path(sys.argv[1]), sys.argv[2]
    c = json.loads((model / "config.json").read_text())
    t = read_safetensors(model)
    w = gguf.GGUFWriter(out_path, "deepseek2")
    arch = "deepseek2"
    L, H = c["num_hidden_layers"], c["num_attention_heads"]
    nope, rope, v, kvr = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"], c["kv_lora_rank"]
    rs = c.get("rope_scaling") or {}
    w.add_string("general.name", model.name)
    w.add_uint32(f"{arch}.block_count", L)
    w.add_uint32(f"{arch}.context_length", c["max_position_embeddings"])
    w.add_uint32(f"{arch}.embedding_length", c["hidden_size"])
    w.add_uint32(f"{arch}.feed_forward_length", c["intermediate_size"])
    w.add_uint32(f"{arch}.attention.head_count", H)
    w.add_uint32(f"{arch}.attention.head_count_kv", 1)
    w.add_float32(f"{arch}.rope.freq_base", float(c["rope_theta"]))
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", float(c["rms_norm_eps"]))
    w.add_uint32(f"{arch}.vocab_size", c["vocab_size"])
    w.add_uint32(f"{arch}.leading_dense_block_count", c["first_k_dense_replace"])
    w.add_uint32(f"{arch}.attention.q_lora_rank", c["q_lora_rank"])
    w.add_uint32(f"{arch}.attention.kv_lora_rank", kvr)
    w.add_uint32(f"{arch}.attention.key_length", kvr + rope)
    w.add_uint32(f"{arch}.attention.value_length", kvr)
    w.add_uint32(f"{arch}.attention.key_length_mla", nope + rope)
    w.add_uint32(f"{arch}.attention.value_length_mla", v)
    w.add_uint32(f"{arch}.rope.dimension_count", rope)
    w.add_uint32(f"{arch}.expert_feed_forward_length", c["moe_intermediate_size"])
    w.add_uint32(f"{arch}.expert_shared_count", c["n_shared_experts"])
    w.add_uint32(f"{arch}.expert_count", c["n_routed_experts"])
    w.add_uint32(f"{arch}.expert_used_count", c["num_experts_per_tok"])
    w.add_uint32(f"{arch}.expert_group_count", c["n_group"])
    w.add_uint32(f"{arch}.expert_group_used_count", c["topk_group"])
    w.add_float32(f"{arch}.expert_weights_scale", float(c["routed_scaling_factor"]))
    w.add_bool(f"{arch}.expert_weights_norm", bool(c["norm_topk_prob"]))
    w.add_uint32(f"{arch}.expert_gating_func", 2 if c["scoring_func"] == "sigmoid" else 1)
    if rs.get("type") == "yarn":
        w.add_string(f"{arch}.rope.scaling.type", "yarn")
        w.add_float32(f"{arch}.rope.scaling.factor", float(rs["factor"]))
        w.add_uint32(f"{arch}.rope.scaling.original_context_length", rs["original_max_position_embeddings"])
        w.add_float32(f"{arch}.rope.scaling.yarn_beta_fast", float(rs["beta_fast"]))
        w.add_float32(f"{arch}.rope.scaling.yarn_beta_slow", float(rs["beta_slow"]))
        w.add_float32(f"{arch}.rope.scaling.yarn_log_multiplier", 0.1 * float(rs.get("mscale_all_dim", 1.0)))
    # A byte-level vocabulary as in the gguf-a fixtures: BOS 0, EOS 1, the 256 bytes (GPT-2's
    # byte-to-unicode map) at 2..257, placeholders after; enough for llama-imatrix to read text.
    V = c["vocab_size"]
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    byte_char, extra = {}, 0
    for b in range(256):
        if b in printable:
            byte_char[b] = chr(b)
        else:
            byte_char[b] = chr(256 + extra)
            extra += 1
    tokens = ["<s>", "</s>"] + [byte_char[b] for b in range(256)] + [f"<t{i}>" for i in range(258, V)]
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "default")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", [3, 3] + [1] * (V - 2))
    w.add_array("tokenizer.ggml.merges", ["\u0120 \u0120"])
    w.add_uint32("tokenizer.ggml.bos_token_id", c.get("bos_token_id", 0))
    w.add_uint32("tokenizer.ggml.eos_token_id", c.get("eos_token_id", 1))
    w.add_bool("tokenizer.ggml.add_bos_token", False)
    w.add_uint32("general.file_type", 32)  # MOSTLY_BF16

    BF16 = gguf.GGMLQuantizationType.BF16

    def add(name, arr):
        if arr.dtype == np.uint16:
            w.add_tensor(name, np.ascontiguousarray(arr), raw_dtype=BF16)
        else:
            w.add_tensor(name, np.ascontiguousarray(arr.astype(np.float32)))

    def f32(name):
        dt, _, a = t[name]
        return bf16_to_f32(a) if dt == "BF16" else a

    add("token_embd.weight", t["model.embed_tokens.weight"][2])
    add("output_norm.weight", f32("model.norm.weight"))
    add("output.weight", t["lm_head.weight"][2])
    E = c["n_routed_experts"]
    for i in range(L):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        add(b + "attn_norm.weight", f32(p + "input_layernorm.weight"))
        add(b + "attn_q_a.weight", t[p + "self_attn.q_a_proj.weight"][2])
        add(b + "attn_q_a_norm.weight", f32(p + "self_attn.q_a_layernorm.weight"))
        add(b + "attn_q_b.weight", t[p + "self_attn.q_b_proj.weight"][2])
        add(b + "attn_kv_a_mqa.weight", t[p + "self_attn.kv_a_proj_with_mqa.weight"][2])
        add(b + "attn_kv_a_norm.weight", f32(p + "self_attn.kv_a_layernorm.weight"))
        kvb = t[p + "self_attn.kv_b_proj.weight"][2].reshape(H, nope + v, kvr)
        add(b + "attn_k_b.weight", kvb[:, :nope, :].transpose(0, 2, 1))  # [H, kvr, nope]
        add(b + "attn_v_b.weight", kvb[:, nope:, :])                     # [H, v, kvr]
        add(b + "attn_output.weight", t[p + "self_attn.o_proj.weight"][2])
        add(b + "ffn_norm.weight", f32(p + "post_attention_layernorm.weight"))
        if i < c["first_k_dense_replace"]:
            for n in ("gate", "up", "down"):
                add(b + f"ffn_{n}.weight", t[p + f"mlp.{n}_proj.weight"][2])
            continue
        add(b + "ffn_gate_inp.weight", f32(p + "mlp.gate.weight"))
        add(b + "exp_probs_b.bias", f32(p + "mlp.gate.e_score_correction_bias"))
        for n in ("gate", "up", "down"):
            add(b + f"ffn_{n}_exps.weight", np.stack([t[p + f"mlp.experts.{j}.{n}_proj.weight"][2] for j in range(E)]))
            add(b + f"ffn_{n}_shexp.weight", t[p + f"mlp.shared_experts.{n}_proj.weight"][2])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()

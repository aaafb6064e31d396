#!/usr/bin/env python3
"""A random PEFT LoRA adapter on every linear layer of a shoal/Hugging Face config, for the LoRA
cost benchmark (docs/performance.md, "LoRA"): adapter_config.json and adapter_model.safetensors
(BF16 A [r, in] and B [out, r], as peft saves them) with the modules of DeepSeek-V2/V3 configs:
q_proj or q_a_proj/q_b_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj, and gate/up/down_proj of dense
MLPs, shared experts and every routed expert.

Usage: python3 bench/lora/make_adapter.py CONFIG.json OUT_DIR [RANK] [SEED]   (numpy only)
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np


def modules(c):
    dim, H = c["hidden_size"], c["num_attention_heads"]
    qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        if c.get("q_lora_rank"):
            yield p + "self_attn.q_a_proj", c["q_lora_rank"], dim
            yield p + "self_attn.q_b_proj", H * qk, c["q_lora_rank"]
        else:
            yield p + "self_attn.q_proj", H * qk, dim
        yield p + "self_attn.kv_a_proj_with_mqa", c["kv_lora_rank"] + c["qk_rope_head_dim"], dim
        yield p + "self_attn.kv_b_proj", H * (c["qk_nope_head_dim"] + c["v_head_dim"]), c["kv_lora_rank"]
        yield p + "self_attn.o_proj", dim, H * c["v_head_dim"]
        moe = c.get("n_routed_experts") and i >= c.get("first_k_dense_replace", 0) and i % c.get("moe_layer_freq", 1) == 0
        mlps = []
        if not moe:
            mlps.append((p + "mlp.", c["intermediate_size"]))
        else:
            if c.get("n_shared_experts"):
                mlps.append((p + "mlp.shared_experts.", c["n_shared_experts"] * c["moe_intermediate_size"]))
            mlps += [(p + f"mlp.experts.{j}.", c["moe_intermediate_size"]) for j in range(c["n_routed_experts"])]
        for prefix, inter in mlps:
            yield prefix + "gate_proj", inter, dim
            yield prefix + "up_proj", inter, dim
            yield prefix + "down_proj", dim, inter


def bf16(a):
    u = a.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def main():
    config, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    r = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    rng = np.random.default_rng(int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    out.mkdir(parents=True, exist_ok=True)
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, rows, cols in modules(config):
        for part, shape, std in (("lora_A", (r, cols), cols ** -0.5), ("lora_B", (rows, r), 0.01)):
            data = bf16(rng.standard_normal(shape, dtype=np.float32) * std).tobytes()
            header[f"base_model.model.{name}.{part}.weight"] = {"dtype": "BF16", "shape": list(shape),
                                                               "data_offsets": [offset, offset + len(data)]}
            blobs.append(data)
            offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(out / "adapter_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    targets = ["q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate_proj", "up_proj",
               "down_proj"]
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "use_rslora": False, "target_modules": targets,
        "bias": "none", "fan_in_fan_out": False, "modules_to_save": None, "use_dora": False}, indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Converts a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) into a
GGUF adapter named and shaped as llama.cpp's convert_lora_to_gguf.py writes one, so that shoal's
GGUF adapter loader (model/lora_gguf.cpp) is tested on the layout llama.cpp reads.

What carries over from llama.cpp's converter (read, not copied: convert_lora_to_gguf.py, the
DeepseekV2 / Llama model classes of convert_hf_to_gguf.py, src/llama-adapter.{h,cpp}):
- metadata: general.architecture of the base (deepseek2, qwen2, llama), general.type "adapter",
  adapter.type "lora", adapter.lora.alpha as FLOAT32.
- tensors: the base tensor's GGUF name (gguf-py's tensor map, as the model converter names the
  base) plus ".lora_a" / ".lora_b"; lora_a keeps PEFT's A [r, in] (ggml ne {in, r}), lora_b
  keeps B [out, r] (ne {r, out}).
- routed experts: a layer's experts are stacked as the model converter stacks its weights, A into
  ffn_{gate,up,down}_exps.weight.lora_a [E, r, in] and B into .lora_b [E, out, r]. The converter
  stacks a layer only once every expert's gate, up and down are there, so every expert must be
  adapted (it fails otherwise; so does this script).
- `llama` only: the rows of q_proj's and k_proj's B are permuted per head as the model converter
  permutes the base's (rotate-half pairs to interleaved pairs); A is unchanged.
- types (--outtype): f32 (the converter's default), f16, bf16 or q8_0 for every A and B; q8_0
  falls back to F16 where a row (ne[0]) is not a whole number of 32-value blocks.
- llama.cpp applies scale = alpha / rank (rank: lora_b's ne[0]), and scale 1 when alpha is 0
  or absent. Where that differs from PEFT's scale, the alpha written is the one for which
  llama.cpp's float32 alpha / rank equals PEFT's scale in float32: with use_rslora,
  alpha * sqrt(r) adjusted to the float32 that gives float32(alpha / sqrt(r)) exactly (the
  converter itself writes lora_alpha unchanged and so applies rsLoRA adapters at
  alpha / r). Every module must give the same alpha (rank_pattern / alpha_pattern that cannot be
  one alpha are refused).

Where this differs from llama.cpp's converter today: MLA's kv_b_proj. The current model converter
splits kv_b_proj per head into attn_k_b (transposed) and attn_v_b, which its LoRA tensor wrapper
cannot do (the per-head transpose of a 3-D LoRA pair raises NotImplementedError), so it cannot
convert an adapter of kv_b_proj at all. This script writes kv_b_proj whole, as
blk.N.attn_kv_b.weight.lora_a/_b (gguf-py's name for kv_b_proj, the legacy unsplit layout), which
shoal reads as kv_b_proj; llama.cpp would apply it only on a base that has attn_kv_b.

Usage: PYTHONPATH=$LLAMA_CPP/gguf-py python3 tools/lora_to_gguf.py ADAPTER_DIR OUT.gguf
           [--base MODEL_DIR] [--outtype f32|f16|bf16|q8_0]
Needs numpy and llama.cpp's gguf-py (no torch). --base is the base model's folder (config.json);
by default adapter_config.json's base_model_name_or_path, taken relative to ADAPTER_DIR.
"""
import argparse
import json
import math
import re
import struct
import sys
from pathlib import Path

import numpy as np
import gguf

ARCHES = {
    "DeepseekV2ForCausalLM": gguf.MODEL_ARCH.DEEPSEEK2,
    "DeepseekV3ForCausalLM": gguf.MODEL_ARCH.DEEPSEEK2,
    "Qwen2ForCausalLM": gguf.MODEL_ARCH.QWEN2,
    "LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA,
}
OUTTYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}
PREFIX, SUFFIX_A, SUFFIX_B = "base_model.model.", ".lora_A.weight", ".lora_B.weight"
EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)")


def fail(why: str) -> None:
    sys.exit(f"lora_to_gguf: {why}")


def read_safetensors(path: Path) -> dict:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    kinds = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in kinds:
            fail(f"{path}: tensor {name} is {info['dtype']} (F32, F16 and BF16 are read)")
        begin, end = info["data_offsets"]
        raw = np.frombuffer(data[8 + n + begin:8 + n + end], dtype=kinds[info["dtype"]])
        if info["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        out[name] = raw.astype(np.float32).reshape(info["shape"])
    return out


def pairs(tensors: dict, path: Path) -> dict:
    """module -> [A, B], as the converter pairs lora_A / lora_B."""
    out = {}
    for name, t in tensors.items():
        is_a, is_b = name.endswith(SUFFIX_A), name.endswith(SUFFIX_B)
        if not name.startswith(PREFIX) or not (is_a or is_b):
            fail(f"{path}: tensor {name} is not a lora_A or lora_B tensor")
        module = name[len(PREFIX):-len(SUFFIX_A)]
        out.setdefault(module, [None, None])[0 if is_a else 1] = t
    for module, (a, b) in out.items():
        if a is None or b is None:
            fail(f"{path}: module {module} has only one of lora_A and lora_B")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            fail(f"{path}: module {module}: A {a.shape} and B {b.shape} are not [r, in] and [out, r]")
    return out


def peft_scale(cfg: dict, module: str, rank: int) -> float:
    """PEFT's scale of `module`: alpha / r, or alpha / sqrt(r) with rsLoRA (alpha_pattern's first match)."""
    alpha = cfg["lora_alpha"]
    for key, value in (cfg.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?({key})", module):
            alpha = value
            break
    return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank


def llama_cpp_alpha(scale: float, rank: int) -> np.float32:
    """The float32 alpha for which llama.cpp's float32 alpha / rank is float32(scale)."""
    want = np.float32(scale)
    a = np.float32(scale * rank)
    for _ in range(64):
        got = np.float32(a / np.float32(rank))
        if got == want:
            return a
        a = np.nextafter(a, np.float32(np.inf) if got < want else np.float32(-np.inf), dtype=np.float32)
    fail(f"no float32 alpha gives scale {scale} at rank {rank}")


def to_interleaved(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head reordered from halves (i, i + d/2) to pairs (2i, 2i + 1), as the base's."""
    shape = w.shape
    return w.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def stored(x: np.ndarray, qtype):
    """The converter's type choice: q8_0 falls back to F16 for rows that are not whole blocks."""
    if qtype == gguf.GGMLQuantizationType.Q8_0 and x.shape[-1] % 32 != 0:
        qtype = gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(np.ascontiguousarray(x, dtype=np.float32), qtype), qtype


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("adapter", type=Path)
    p.add_argument("outfile", type=Path)
    p.add_argument("--base", type=Path)
    p.add_argument("--outtype", choices=sorted(OUTTYPES), default="f32")
    args = p.parse_args()

    cfg = json.loads((args.adapter / "adapter_config.json").read_text())
    if cfg.get("peft_type") != "LORA":
        fail(f"peft_type is {cfg.get('peft_type')!r}, not LORA")
    for key, ok in (("use_dora", lambda v: not v), ("modules_to_save", lambda v: not v),
                    ("bias", lambda v: v in (None, "none")), ("fan_in_fan_out", lambda v: not v)):
        if not ok(cfg.get(key)):
            fail(f"adapter_config.json: {key} = {cfg.get(key)!r} is not a plain LoRA")
    if not cfg.get("lora_alpha") or cfg["lora_alpha"] <= 0:
        fail("adapter_config.json: lora_alpha must be positive")
    base_dir = args.base or (args.adapter / cfg.get("base_model_name_or_path", ""))
    hp = json.loads((base_dir / "config.json").read_text())
    arch = ARCHES.get((hp.get("architectures") or [None])[0])
    if arch is None:
        fail(f"{base_dir}/config.json: architecture {hp.get('architectures')} is not one shoal reads")
    n_layers = hp["num_hidden_layers"]
    tmap = gguf.get_tensor_name_map(arch, n_layers)

    def gguf_name(hf: str) -> str:
        name = tmap.get_name(hf, try_suffixes=(".weight",))
        if name is None:
            fail(f"no GGUF name for {hf}")
        return name

    modules = pairs(read_safetensors(args.adapter / "adapter_model.safetensors"), args.adapter)
    out = []  # (GGUF base name, A, B, [(module, rank)])
    experts = {}  # (layer, proj) -> {expert: (A, B)}
    for module, (a, b) in modules.items():
        m = EXPERT.fullmatch(module)
        if m:
            experts.setdefault((int(m[1]), m[3]), {})[int(m[2])] = (a, b)
            continue
        if arch == gguf.MODEL_ARCH.LLAMA and module.endswith(("self_attn.q_proj", "self_attn.k_proj")):
            heads = hp["num_attention_heads"] if module.endswith("q_proj") else hp.get("num_key_value_heads", hp["num_attention_heads"])
            b = to_interleaved(b, heads)
        out.append((gguf_name(module + ".weight"), a, b, [(module, a.shape[0])]))
    n_experts = hp.get("n_routed_experts") or 0
    for (layer, proj), by_id in sorted(experts.items()):
        for other in ("gate_proj", "up_proj", "down_proj"):
            if len(experts.get((layer, other), {})) != n_experts or len(by_id) != n_experts:
                fail(f"layer {layer}: llama.cpp's converter stacks a layer's experts only when all {n_experts} "
                     f"experts' gate_proj, up_proj and down_proj are adapted")
        ids = range(n_experts)
        a = np.stack([by_id[j][0] for j in ids])
        b = np.stack([by_id[j][1] for j in ids])
        name = gguf_name(f"model.layers.{layer}.mlp.experts.{proj}.weight")
        out.append((name, a, b, [(f"model.layers.{layer}.mlp.experts.{j}.{proj}", a.shape[1]) for j in ids]))

    # One alpha for the file: llama.cpp's alpha / rank must give each module PEFT's scale.
    plain = not cfg.get("use_rslora") and not cfg.get("alpha_pattern")
    first_module, first_rank = out[0][3][0]
    alpha = np.float32(cfg["lora_alpha"]) if plain else llama_cpp_alpha(peft_scale(cfg, first_module, first_rank), first_rank)
    for _, _, _, mods in out:
        for module, rank in mods:
            if np.float32(alpha / np.float32(rank)) != np.float32(peft_scale(cfg, module, rank)):
                fail(f"module {module} (rank {rank}) needs another alpha than {alpha}: one GGUF alpha cannot "
                     f"express these rank_pattern / alpha_pattern / rsLoRA scales")

    ftype, qtype = OUTTYPES[args.outtype]
    w = gguf.GGUFWriter(str(args.outfile), gguf.MODEL_ARCH_NAMES[arch])
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_name(args.adapter.resolve().name)
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for name, a, b, _ in sorted(out, key=lambda t: t[0]):
        for suffix, x in ((".lora_a", a), (".lora_b", b)):
            data, t = stored(x, qtype)
            w.add_tensor(name + suffix, data, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{args.outfile}: {len(out)} pairs, alpha {alpha} ({gguf.MODEL_ARCH_NAMES[arch]}, {args.outtype})")


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Generate tests/fixtures/ggml-blocks/*.bin: ggml blocks and their dequantized values.

For every ggml block type shoal reads (common/dtype.h), a set of blocks -- random bytes with the
fp16 scale fields set to finite values (the IQ grid indices swept so that every grid entry
occurs), then real blocks from the GGUF fixtures in /work/shared/fixtures/gguf-a-* -- and the
float32 values ggml's reference C code (dequantize_row_* in libggml-base, loaded with ctypes)
produces for them. gguf-py's numpy dequantizer is run on the same blocks as a cross-check; where
the two disagree the C code is the reference and the script says so.

File format (little-endian), one file per type, <NAME>.bin:
  char magic[4] = "SGB1"; u32 ggml_id, block_bytes, block_weights, n_random, n_real;
  block bytes (n_random + n_real blocks, random first);
  expected float32 bit patterns (block_weights per block).

Usage: /usr/bin/python3 tools/gen_ggml_block_vectors.py [llama.cpp dir]  (needs numpy; the
llama.cpp tree at commit 3f545be with build/bin/libggml-base.so built)
"""
import ctypes
import glob
import os
import struct
import sys

import numpy as np

LLAMA = sys.argv[1] if len(sys.argv) > 1 else '/work/llama.cpp-3f545be'
sys.path.insert(0, os.path.join(LLAMA, 'gguf-py'))
from gguf import GGUFReader, GGMLQuantizationType, quants  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'fixtures', 'ggml-blocks')
FIXTURES = '/work/shared/fixtures'

# name, block bytes, weights per block, ggml's dequantize_row_ suffix
TYPES = [
    ('Q4_0', 18, 32, 'q4_0'), ('Q4_1', 20, 32, 'q4_1'), ('Q5_0', 22, 32, 'q5_0'), ('Q5_1', 24, 32, 'q5_1'),
    ('Q8_0', 34, 32, 'q8_0'), ('Q2_K', 84, 256, 'q2_K'), ('Q3_K', 110, 256, 'q3_K'), ('Q4_K', 144, 256, 'q4_K'),
    ('Q5_K', 176, 256, 'q5_K'), ('Q6_K', 210, 256, 'q6_K'), ('Q8_K', 292, 256, 'q8_K'),
    ('IQ2_XXS', 66, 256, 'iq2_xxs'), ('IQ2_XS', 74, 256, 'iq2_xs'), ('IQ3_XXS', 98, 256, 'iq3_xxs'),
    ('IQ1_S', 50, 256, 'iq1_s'), ('IQ4_NL', 18, 32, 'iq4_nl'), ('IQ3_S', 110, 256, 'iq3_s'),
    ('IQ2_S', 82, 256, 'iq2_s'), ('IQ4_XS', 136, 256, 'iq4_xs'), ('IQ1_M', 56, 256, 'iq1_m'),
]
N_RANDOM = {32: 256, 256: 64}  # random blocks per type, by block size (keeps the files small)
N_REAL = {32: 64, 256: 16}     # at most this many real blocks per type

# Byte offsets of the fp16 scale fields, per type (IQ1_M's scale is spread over 4 nibbles).
F16_FIELDS = {
    'Q4_0': [0], 'Q4_1': [0, 2], 'Q5_0': [0], 'Q5_1': [0, 2], 'Q8_0': [0], 'Q2_K': [80, 82], 'Q3_K': [108],
    'Q4_K': [0, 2], 'Q5_K': [0, 2], 'Q6_K': [208], 'IQ2_XXS': [0], 'IQ2_XS': [0], 'IQ3_XXS': [0], 'IQ1_S': [0],
    'IQ4_NL': [0], 'IQ3_S': [0], 'IQ2_S': [0], 'IQ4_XS': [0],
}


def random_f16(rng, n, zeros=True):
    """Finite fp16 scales: mostly moderate normals of either sign, some subnormals and (unless
    zeros is False: blocks that sweep grid indices must not hide them) zeros."""
    mag = np.exp(rng.uniform(np.log(1e-4), np.log(4.0), n))
    v = (mag * rng.choice([-1.0, 1.0], n)).astype(np.float16).view(np.uint16)
    kind = rng.random(n)
    v = np.where((kind < 0.03) & zeros, 0, v)
    sub = rng.integers(1, 0x400, n).astype(np.uint16) | (rng.integers(0, 2, n).astype(np.uint16) << 15)
    v = np.where((kind >= 0.03) & (kind < 0.08), sub, v)
    return v.astype(np.uint16)


def put_u16(blocks, off, vals):
    blocks[:, off] = vals & 0xFF
    blocks[:, off + 1] = vals >> 8


def get_u16(blocks, off):
    return blocks[:, off].astype(np.uint32) | (blocks[:, off + 1].astype(np.uint32) << 8)


def random_blocks(rng, name, nbytes, n):
    b = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    sweep = name.startswith('IQ') and not name.startswith('IQ4')  # grid types
    for off in F16_FIELDS.get(name, []):
        put_u16(b, off, random_f16(rng, n, zeros=not sweep))
    runs = np.arange(n * 32).reshape(n, 32)  # global run number, for sweeping grid indices
    if name == 'Q8_K':
        d = (np.exp(rng.uniform(np.log(1e-5), np.log(1.0), n)) * rng.choice([-1.0, 1.0], n)).astype(np.float32)
        b[:, 0:4] = d.view(np.uint8).reshape(n, 4)
    elif name == 'IQ1_M':
        h = random_f16(rng, n, zeros=False).astype(np.uint32)
        for i in range(4):  # top nibble of scales u16 i = bits 4i..4i+3 of the fp16 scale
            b[:, 48 + 2 * i + 1] = (b[:, 48 + 2 * i + 1] & 0x0F) | (((h >> (4 * i)) & 0xF) << 4).astype(np.uint8)
        idx = runs % 2048  # 11-bit index: qs byte + 3 bits in the run's qh nibble
        b[:, 0:32] = idx & 0xFF
        for g in range(8):
            for r in range(4):
                byte = 32 + 2 * g + r // 2
                sh = 4 * (r % 2)
                hi = ((idx[:, 4 * g + r] >> 8) & 7).astype(np.uint8)
                b[:, byte] = (b[:, byte] & ~np.uint8(7 << sh)) | (hi << sh)
    elif name == 'IQ2_XXS':
        for g in range(8):
            b[:, 2 + 8 * g: 2 + 8 * g + 4] = runs[:, 4 * g: 4 * g + 4] % 256
    elif name == 'IQ2_XS':
        for k in range(32):
            q = get_u16(b, 2 + 2 * k)
            put_u16(b, 2 + 2 * k, ((q & 0xFE00) | (runs[:, k] % 512)).astype(np.uint32))
    elif name == 'IQ2_S':
        idx = runs % 1024
        b[:, 2:34] = idx & 0xFF
        for g in range(8):
            qh = np.zeros(n, dtype=np.uint8)
            for r in range(4):
                qh |= ((idx[:, 4 * g + r] >> 8) & 3).astype(np.uint8) << (2 * r)
            b[:, 66 + g] = qh
    elif name == 'IQ3_XXS':
        b[:, 2:66] = np.arange(n * 64).reshape(n, 64) % 256
    elif name == 'IQ3_S':
        idx = np.arange(n * 64).reshape(n, 64) % 512
        b[:, 2:66] = idx & 0xFF
        for g in range(8):
            qh = np.zeros(n, dtype=np.uint8)
            for k in range(8):
                qh |= ((idx[:, 8 * g + k] >> 8) & 1).astype(np.uint8) << k
            b[:, 66 + g] = qh
    elif name == 'IQ1_S':
        idx = runs % 2048
        b[:, 2:34] = idx & 0xFF
        for g in range(8):
            qh = get_u16(b, 34 + 2 * g) & 0xF000
            for r in range(4):
                qh |= ((idx[:, 4 * g + r] >> 8) & 7).astype(np.uint32) << (3 * r)
            put_u16(b, 34 + 2 * g, qh)
    return b


def real_blocks(rng, name, nbytes, limit):
    """Blocks of tensors of this type in the GGUF fixtures: the first block of each tensor, then
    random ones, up to `limit`."""
    first, rest = [], []
    for f in sorted(glob.glob(os.path.join(FIXTURES, 'gguf-a-*', '*.gguf'))):
        for t in GGUFReader(f).tensors:
            if t.tensor_type.name != name:
                continue
            data = np.asarray(t.data, dtype=np.uint8).reshape(-1, nbytes)
            first.append(data[0])
            rest.append(data[rng.integers(1, len(data), 4)])
    if not first:
        return np.zeros((0, nbytes), dtype=np.uint8)
    out = np.concatenate([np.stack(first)[:limit // 2]] + rest)
    seen, keep = set(), []
    for row in out:  # distinct blocks only
        if row.tobytes() not in seen:
            seen.add(row.tobytes())
            keep.append(row)
    return np.stack(keep[:limit])


def ggml_dequantize(lib, suffix, blocks, weights):
    fn = getattr(lib, 'dequantize_row_' + suffix)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    src = np.ascontiguousarray(blocks)
    out = np.zeros(len(blocks) * weights, dtype=np.float32)
    fn(src.ctypes.data, out.ctypes.data, out.size)
    return out


def main():
    lib = ctypes.CDLL(os.path.join(LLAMA, 'build', 'bin', 'libggml-base.so'))
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240611)
    total = 0
    for name, nbytes, weights, suffix in TYPES:
        rnd = random_blocks(rng, name, nbytes, N_RANDOM[weights])
        real = real_blocks(rng, name, nbytes, N_REAL[weights])
        blocks = np.concatenate([rnd, real]) if len(real) else rnd
        ref = ggml_dequantize(lib, suffix, blocks, weights)
        assert np.all(np.isfinite(ref)), name
        note = 'gguf-py has no dequantizer'
        qtype = GGMLQuantizationType[name]
        if qtype in quants._type_traits:
            py = quants.dequantize(blocks.reshape(-1), qtype).astype(np.float32).reshape(-1)
            diff = np.nonzero(py.view(np.uint32) != ref.view(np.uint32))[0]
            if len(diff):
                i = diff[0]
                note = (f'gguf-py DISAGREES with ggml C on {len(diff)} of {ref.size} values '
                        f'(first: block {i // weights} value {i % weights}: C {ref[i]!r} vs py {py[i]!r}, '
                        f'rel {abs(py[i] - ref[i]) / max(abs(ref[i]), 1e-30):.2g})')
            else:
                note = 'gguf-py agrees bit for bit'
        path = os.path.join(OUT, name + '.bin')
        with open(path, 'wb') as f:
            f.write(b'SGB1' + struct.pack('<5I', qtype.value, nbytes, weights, len(rnd), len(real)))
            f.write(blocks.tobytes())
            f.write(ref.view(np.uint32).astype('<u4').tobytes())
        total += os.path.getsize(path)
        print(f'{name:8s} {len(rnd)} random + {len(real)} real blocks; {note}')
    print(f'{total} bytes in {os.path.normpath(OUT)}')


if __name__ == '__main__':
    main()

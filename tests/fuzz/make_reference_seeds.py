#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_reference (tests/fuzz/corpus_reference/).

The byte layout is documented at the top of fuzz_reference.cpp. The seeds are committed; rerun this
only when the layout changes: python3 tests/fuzz/make_reference_seeds.py
"""
import pathlib
import random
import struct

OUT = pathlib.Path(__file__).resolve().parent / "corpus_reference"


def seed(experts, top_k, block, pad=False, map_kind=0, share=0, map_seed=0, ids=()):
    """Encodes a problem; `ids` are raw u16 slot codes (v < 0xF000: id v % E)."""
    data = struct.pack("<HBBB", experts - 1, top_k - 1, block - 1, int(pad) | (map_kind << 1))
    if map_kind in (1, 2):
        data += bytes([share, map_seed])
    return data + b"".join(struct.pack("<H", v) for v in ids)


def main():
    rng = random.Random(1)
    seeds = {
        # vLLM's docstring example: E=5, top_k=3, B=4.
        "vllm_example": seed(5, 3, 4, ids=[2, 3, 4, 1, 2, 4, 1, 3, 4, 1, 2, 3]),
        "zero_tokens": seed(64, 2, 128),
        "one_token_top8": seed(256, 8, 64, ids=[200, 3, 17, 255, 0, 128, 64, 9]),
        "single_expert": seed(1, 1, 3, ids=[0] * 7),
        "block_size_1_pad": seed(4, 2, 1, pad=True, ids=[3, 0, 2, 0, 3, 3]),
        "invalid_ids": seed(3, 1, 2, ids=[0, 0xF000, 0xF100, 2, 0xF200, 0xF300, 0, 0xF405, 0xF507]),
        "drop_map": seed(16, 2, 4, map_kind=1, share=128, map_seed=7,
                         ids=[rng.randrange(16) for _ in range(40)]),
        "map_after": seed(16, 2, 4, map_kind=2, share=90, map_seed=3,
                          ids=[rng.randrange(16) for _ in range(40)]),
        "drop_map_none_local": seed(8, 1, 8, map_kind=1, share=0, ids=list(range(8))),
        "deepseek_256x8_b64": seed(256, 8, 64, pad=True,
                                   ids=[rng.randrange(256) for _ in range(8 * 64)]),
        "large_e300_b256": seed(300, 8, 256, map_kind=2, share=200, map_seed=11,
                                ids=[rng.randrange(0xF000) if rng.random() < 0.95
                                     else rng.randrange(0xF000, 0x10000) for _ in range(8 * 100)]),
        "one_expert_heavy": seed(64, 2, 16, ids=[5] * 300),
    }
    OUT.mkdir(exist_ok=True)
    for name, data in seeds.items():
        (OUT / f"{name}.bin").write_bytes(data)


if __name__ == "__main__":
    main()

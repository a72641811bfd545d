#!/usr/bin/env python3
"""Checks that a linarch checkpoint is readable by the standard Python `safetensors` library.

    python3 tests/interop/read_with_python_safetensors.py runs/demo/checkpoints/step-00000600

Debian has no python3-safetensors, so CI cannot run this; it runs where the library exists (the GPU
machine's image has it) and its result is recorded in bench/NOTES.md. The library validates the header
strictly (offsets contiguous, sizes matching shapes, no overlaps); on top of that we compare every tensor
with an independent parse of the file using only the standard library.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file


def parse_by_hand(path):
    data = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    metadata = header.pop("__metadata__", {})
    out = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        assert entry["dtype"] == "F32", (name, entry["dtype"])
        raw = data[8 + header_len + begin:8 + header_len + end]
        out[name] = np.frombuffer(raw, dtype="<f4").reshape(entry["shape"])
    return out, metadata


def main():
    checkpoint = Path(sys.argv[1])
    for file in ("model.safetensors", "optimizer.safetensors"):
        path = checkpoint / file
        loaded = load_file(str(path))
        by_hand, metadata = parse_by_hand(path)
        assert loaded.keys() == by_hand.keys(), (file, sorted(loaded)[:5], sorted(by_hand)[:5])
        for name, tensor in loaded.items():
            assert tensor.shape == by_hand[name].shape, name
            assert np.array_equal(tensor, by_hand[name]), name
            assert np.isfinite(tensor).all(), name
        with safe_open(str(path), framework="numpy") as f:
            assert (f.metadata() or {}) == metadata, (f.metadata(), metadata)
        total = sum(t.size for t in loaded.values())
        print(f"{path}: {len(loaded)} tensors, {total} values, metadata {metadata}: read by safetensors OK")


if __name__ == "__main__":
    main()

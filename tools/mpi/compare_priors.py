#!/usr/bin/env python3
"""Compares two tcc priors files tensor by tensor: ||x - y|| / ||y|| <= TOL.

Standard library only (the safetensors layout: an 8-byte little-endian
header length, a JSON header, then the data). Exit status 0 when every
tensor agrees, 1 otherwise.

    python3 tools/mpi/compare_priors.py A.safetensors B.safetensors [TOL]
"""
import json
import math
import struct
import sys


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    body = data[8 + n :]
    out = {}
    for name, t in header.items():
        if t["dtype"] != "F32":
            sys.exit(f"{path}: tensor {name} is {t['dtype']}, expected F32")
        a, b = t["data_offsets"]
        out[name] = struct.unpack(f"<{(b - a) // 4}f", body[a:b])
    return out


def main():
    x, y = read(sys.argv[1]), read(sys.argv[2])
    tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-6
    if sorted(x) != sorted(y):
        print("the files hold different tensors")
        return 1
    worst, where = 0.0, None
    for name in sorted(x):
        d = sum((p - q) ** 2 for p, q in zip(x[name], y[name]))
        n = sum(q * q for q in y[name])
        rel = math.sqrt(d / n) if n > 0 else math.sqrt(d)
        if rel > worst:
            worst, where = rel, name
    print(f"{len(x)} tensors, largest relative difference {worst:.3e}" + (f" ({where})" if where else ""))
    return 0 if worst <= tol else 1


if __name__ == "__main__":
    sys.exit(main())

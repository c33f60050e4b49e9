"""Checks that the vector-path CUDA kernels store 16 bytes at a time (run by `make cuda-check`).

    python3 tests/ptx_vector_stores.py build/cuda-check/pointwise.ptx

Reads nvcc's PTX of csrc/cuda/pointwise.cu and, in every kernel instantiated with VectorIO
(16 bytes of units per thread), finds the global stores narrower than 128 bits: a store that
nvcc splits (4x st.f32 for one float4) writes a row segment in several transactions. Prints
the kernels that have one, with their stores by width, and a summary; exits 1 if any has. Not a pytest file: it
needs nvcc's output, which only `make cuda-check` makes.
"""
import re
import sys
from collections import Counter

BITS = {"8": 8, "16": 16, "32": 32, "64": 64, "128": 128}
STORE = re.compile(r"\bst\.global(?:\.[a-z]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b")


def kernels(ptx):
    """{mangled kernel name: its body} of every .entry in the PTX text."""
    parts = re.split(r"^(?:\.visible |\.weak )?\.entry (\S+?)\(", ptx, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def store_widths(body):
    """Counter of the bit widths of the global stores in a kernel body."""
    return Counter((int(vec or 1)) * BITS[bits] for vec, bits in STORE.findall(body))


def main(path):
    found = {name: store_widths(body) for name, body in kernels(open(path).read()).items() if "VectorIO" in name}
    if not found:
        print(f"ptx_vector_stores: no VectorIO kernel in {path}")
        return 1
    narrow = 0
    for name, widths in sorted(found.items()):
        bad = sum(n for width, n in widths.items() if width < 128)
        narrow += bad
        if bad:
            print(f"NARROW {name}: global stores by width {dict(sorted(widths.items()))}")
    print(f"ptx_vector_stores: {len(found)} vector kernels, {narrow} global store(s) narrower than 128 bits")
    return 1 if narrow else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

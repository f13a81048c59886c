"""A worker for the concurrency tests: attach, read, load and evict at random.

Usage: python pool_worker.py POOL SEED SECONDS
Prints one JSON line of counts; exits non-zero on anything unexpected (wrong
bytes under a live array, an exception that is not one of the expected races).
"""

from __future__ import annotations

import json
import random
import sys
import time

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])

import pyaccel  # noqa: E402
from pyaccel.errors import ModelInUseError, ModelNotFoundError, PoolFullError  # noqa: E402
from pool_helpers import model_arrays, read_model, write_arrays  # noqa: E402

NAMES = [f"shared{i}" for i in range(6)]


def main() -> int:
    path, seed, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    rng = random.Random(seed)
    counts = {"attach": 0, "load": 0, "evict": 0, "busy": 0, "gone": 0, "full": 0}
    expected = {n: model_arrays(n, n=3, size=256 << 10, shared=1) for n in NAMES}
    held: list[list[np.ndarray]] = []
    pool = pyaccel.open_pool(path)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        name = rng.choice(NAMES)
        op = rng.random()
        try:
            if op < 0.5:
                arrays = read_model(pool, name)
                for a, b in zip(arrays, expected[name]):
                    if not np.array_equal(a, b):
                        print(f"wrong bytes in {name}", file=sys.stderr)
                        return 2
                counts["attach"] += 1
                held.append(arrays)
                if len(held) > 3 or rng.random() < 0.5:
                    held.pop(0)
            elif op < 0.8:
                write_arrays(pool, name, expected[name])
                counts["load"] += 1
            else:
                pool.evict(name)
                counts["evict"] += 1
        except ModelInUseError:
            counts["busy"] += 1
        except ModelNotFoundError:
            counts["gone"] += 1
        except PoolFullError:
            counts["full"] += 1
        # arrays held across other processes' evictions keep their bytes
        for arrays in held:
            if not np.array_equal(arrays[0][:64], arrays[0][:64].copy()):
                return 3
    for arrays in held:
        name = next(n for n in NAMES if np.array_equal(arrays[1], expected[n][1]))
        if not all(np.array_equal(a, b) for a, b in zip(arrays, expected[name])):
            print("held arrays changed", file=sys.stderr)
            return 4
    held.clear()
    pool.close()
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

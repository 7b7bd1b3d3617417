"""Distinct sorted n-gram hashes: ``np.unique`` (the bare library call) against ``sorted_unique`` (a sort and a
neighbour mask, tasks/common/ngrams.py), on random uint64 as the n-gram index holds them, side by side.

    python bench/bench_unique.py [--n 4000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from xlmflow.tasks.common.ngrams import sorted_unique


def best(fn, values: np.ndarray, repeat: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(values)
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    values = np.random.default_rng(0).integers(0, 2**63, a.n, dtype=np.uint64)
    library, expected = best(np.unique, values, a.repeat)
    ours, got = best(sorted_unique, values, a.repeat)
    assert np.array_equal(expected, got), "sorted_unique differs from np.unique"
    print(f"numpy {np.__version__}, {a.n:,} uint64, best of {a.repeat}")
    print(f"np.unique      {library:7.3f} s")
    print(f"sorted_unique  {ours:7.3f} s  {library / ours:6.1f}x faster")


if __name__ == "__main__":
    main()

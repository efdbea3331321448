"""Run every benchmark under bench/ with its default arguments, one after the other (`make bench`).

Each prints its own table; docs/benchmarks.md records the figures with the exact commands. Benchmark
on a quiet machine: the step times move with any other load.

    .venv/bin/python bench/run_all.py [--only mdvae stage1 ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def main() -> int:
    names = sorted(p.stem.removeprefix("bench_") for p in BENCH.glob("bench_*.py"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=names, default=names)
    args = ap.parse_args()
    failed = []
    for name in args.only:
        print(f"\n=== bench_{name}.py", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(BENCH / f"bench_{name}.py")])
        print(f"=== bench_{name}.py: exit {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The quality benchmark in one command (`make bench-quality`): corpora, recipe, evaluation, targets.

    .venv/bin/python bench/quality.py [--out runs/bench-quality] [--profile cpu|gpu] [--device auto] [--threads N]

Writes OUT/summary.md (each target, measured on the test speakers and on new speakers of another seed),
OUT/summary.json, OUT/report-test/ and OUT/report-new-speakers/ (full reports with plots) and the trained
runs in OUT/runs/. Re-running resumes: finished corpora and runs are kept. See avmdvae/benchmark.py for
the steps and docs/results.md for the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from avmdvae.benchmark import PROFILES, run_benchmark
from avmdvae.cli.app import progress_bars
from avmdvae.errors import AvmdvaeError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-quality"))
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu",
                    help="cpu: the 2-core recipe (<= 100 min); gpu: reference sizes on CUDA; tiny: a smoke test")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--workers", type=int, default=0, help="processes for synthesis and preprocessing (0: one per CPU)")
    ap.add_argument("--quiet", action="store_true", help="progress as plain lines, not bars (as in a log file)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's); 1 is faster while other jobs share the cores")
    args = ap.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    t0 = time.time()
    try:
        with progress_bars(lines=args.quiet or None) as progress:
            summary = run_benchmark(args.out, args.profile, args.workers, args.device,
                                    step=lambda s: print(s, flush=True), progress=progress)
    except AvmdvaeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    met = sum(row["met"] for row in summary["targets"])
    print(f"{met}/{len(summary['targets'])} targets met in {(time.time() - t0) / 60:.1f} min; "
          f"see {args.out / 'summary.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

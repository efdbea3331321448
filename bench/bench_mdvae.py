"""MDVAE training-step benchmark: reference sizes (MDVAEDims()), T = 30, medians of repeated steps.

A step = zero_grad + forward + backward + AdamW step (fused, as the training loop runs it), under the
training loop's autocast for bf16 / fp16 (fp16 with a GradScaler, CUDA only). Columns: the eager model,
and with --compile the same step under torch.compile (compile time reported apart).

--against DIR times another checkout of avmdvae (e.g. `git worktree add /tmp/old <commit>`) side by side
in the same run: each contender runs in its own process, in alternating rounds, and the medians pool all
rounds, so that the machine's speed changes hit both alike.

    .venv/bin/python bench/bench_mdvae.py [--batches 8 64] [--repeats 7] [--threads 2] [--compile]
    .venv/bin/python bench/bench_mdvae.py --against /tmp/avmdvae-old --rounds 3
    .venv/bin/python bench/bench_mdvae.py --device cuda --batches 1024 64 --precisions fp32 bf16 fp16 --compile
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def time_steps(args: argparse.Namespace, B: int, precision: str, compiled: bool) -> dict[str, object]:
    """Median step time (s) of the avmdvae importable from sys.path, plus the compile time."""
    import torch

    from avmdvae.models import MDVAE, MDVAEDims
    from avmdvae.runtime import keep_freed_memory
    from avmdvae.training.loop import autocast_context

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    torch.manual_seed(0)
    d, T = MDVAEDims(), args.T
    xa, xv = torch.randn(B, T, d.feat_a, device=device), torch.randn(B, T, d.feat_v, device=device)
    noise = {"w": torch.randn(B, d.w_dim, device=device)}
    noise.update({n: torch.randn(B, T, z, device=device) for n, z in (("zav", 16), ("za", 8), ("zv", 4))})
    model = MDVAE(d).to(device)
    if hasattr(model, "fit_input_stats"):  # older checkouts have no input standardisation
        model.fit_input_stats({"audio": xa.flatten(0, 1), "visual": xv.flatten(0, 1)})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if compiled:
        from avmdvae.models.seqvae import compile_model
    forward = compile_model(model) if compiled else model

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast_context(device, precision):
            loss = forward(xa, xv, noise=noise).loss
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    t0 = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t0
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return {"times": times, "first": first}


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, args.tree)
    out = {}
    for B in args.batches:
        for prec in args.precisions:
            for compiled in ([False, True] if args.compile else [False]):
                out[f"{B}/{prec}/{int(compiled)}"] = time_steps(args, B, prec, compiled)
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds per contender (with --against)")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--T", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--compile", action="store_true", help="also time the step under torch.compile")
    ap.add_argument("--against", help="another avmdvae checkout to time side by side")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tree", default=str(HERE.parents[1]), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.device == "cpu" and "fp16" in args.precisions:
        sys.exit("error: fp16 is CUDA-only (as in `avmdvae train`); use fp32 or bf16 on the CPU")
    trees = {"this": str(HERE.parents[1])}
    if args.against:
        if not (Path(args.against) / "avmdvae" / "models" / "mdvae.py").is_file():
            sys.exit(f"error: --against {args.against} is not an avmdvae checkout")
        trees["against"] = str(Path(args.against).resolve())
    pooled: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    firsts: dict[str, dict[str, float]] = {name: {} for name in trees}
    base = [a for a in sys.argv[1:] if a not in ("--against", args.against)]
    print(f"load average at start {os.getloadavg()[0]:.1f}", flush=True)
    for r in range(args.rounds):
        for name, tree in trees.items():
            cmd = [sys.executable, str(HERE), *base, "--worker", "--tree", tree]
            if name == "against":
                cmd = [c for c in cmd if c != "--compile"]
            res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": tree})
            line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
            if res.returncode or not line:
                sys.exit(f"error: the {name} worker failed:\n{res.stderr[-2000:]}")
            for key, v in json.loads(line[0][7:]).items():
                pooled[name].setdefault(key, []).extend(v["times"])
                firsts[name][key] = v["first"]
            print(f"round {r + 1}/{args.rounds}: {name} done", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    print()
    head = "| batch | precision | step (ms) | compiled step (ms) | first compiled step (s) |"
    if args.against:
        head += " --against step (ms) | this / against |"
    print(head)
    print("|---:|---|---:|---:|---:|" + ("---:|---:|" if args.against else ""))
    for B in args.batches:
        for prec in args.precisions:
            eager = statistics.median(pooled["this"][f"{B}/{prec}/0"])
            comp = pooled["this"].get(f"{B}/{prec}/1")
            row = f"| {B} | {prec} | {eager * 1e3:.1f} | "
            row += f"{statistics.median(comp) * 1e3:.1f} | {firsts['this'][f'{B}/{prec}/1']:.1f} |" if comp else "| |"
            if args.against:
                old = statistics.median(pooled["against"][f"{B}/{prec}/0"])
                row += f" {old * 1e3:.1f} | {eager / old:.2f}x |"
            print(row)


if __name__ == "__main__":
    main()

"""The quality benchmark's reference sizes trained on a lent GPU inside a fixed wall-clock budget.

    python3 bench/gpu_visit.py --out OUT --budget 500 [--pack DIR] [--profile gpu|tiny]

A lent machine comes for minutes, not hours, so this trains what the `gpu` profile of
`bench/quality.py` names (models/vqvae-*.yaml, mdvae.yaml, dsae-*.yaml) for as long as the budget
allows rather than for the configs' epochs:

1. the benchmark corpus (100 speakers, seed 0), synthesised and preprocessed with every CPU;
2. each run in the benchmark's order gets its share of the time left (SHARES). A short probe run
   measures this machine's steps/s for it; the real run's epochs (or steps per epoch) are set so that
   its LR schedule and KL warm-up end inside the share, with the share as a hard time limit too;
3. inference-only copies of the runs (with config.yaml and metrics.jsonl) are packed into one tar
   cut into pieces in DIR (`cat DIR/runs.tar.* | tar x -C OUT/runs` joins them); the steps,
   seconds and validation figures of each run are printed as a table.

Evaluation is left to the machine the runs come back to: join them into OUT/runs and run
`bench/quality.py --profile gpu --out OUT` there (finished runs are kept; it makes both corpora and
evaluates). The steps each run got are in OUT/visit.json, so the recipe can be repeated.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import torch

from avmdvae import atomic
from avmdvae.benchmark import PROFILES, RUNS, _config_path, _corpus
from avmdvae.training.checkpoint import slim_copy
from avmdvae.training.config import resolve
from avmdvae.training.distributed import steps_per_epoch
from avmdvae.training.loop import METRICS_FILE, RunOptions, train
from avmdvae.training.tasks import DSAETask, MDVAETask, VQVAETask

# Share of the training time per run: the visual VQ-VAE sets the face PSNR target and is the costliest.
SHARES = {"vqvae-audio": 0.10, "vqvae-visual": 0.42, "mdvae": 0.24, "dsae-audio": 0.12, "dsae-visual": 0.12}
PACK_RESERVE_S = 25.0  # slim copies + tars at the end
PIECE_BYTES = 15 * 2**20  # files back from the lent machine: at most 16 MiB each, 8 files
PROBE_STEPS = 80  # 4 windows of PROBE_LOG_EVERY steps; the rate is the median of the last two
PROBE_LOG_EVERY = 20
VAL_SHARE = 0.25  # of a run's share kept for validation, checkpoints and start-up
MIN_SHARE_S = 15.0  # a stage-2 run given less is skipped (its probe alone takes a few seconds)
MIN_EPOCHS = 3  # short shares: fewer steps per epoch rather than fewer validations
# Stage 2 at batch 1024 is 5 steps per epoch on this corpus (about 5,000 windows): a quarter of it
# and denser windows give the optimiser steps; the sizes stay the reference ones.
STAGE2_SETS = ("train.batch_size=256", "data.window_hop=10")
STAGE1_SETS = ("train.precision=bf16",)  # convolutions in bf16 autocast (the quantiser stays fp32)


def make_task(kind: str, modality: str | None, corpus: Path, runs: Path, cfg: dict[str, Any]) -> Any:
    if kind == "vqvae":
        return VQVAETask(corpus, modality, cfg)
    if kind == "mdvae":
        return MDVAETask(corpus, runs / "vqvae-audio", runs / "vqvae-visual", cfg)
    return DSAETask(corpus, modality, runs / f"vqvae-{modality}", cfg)


def measured_rate(run: Path, frames_per_step: int) -> float:
    """Optimiser steps per second from the probe's metrics (median of its last two windows)."""
    fps = [json.loads(line).get("frames_per_s") for line in (run / METRICS_FILE).read_text().splitlines()]
    fps = [f for f in fps if isinstance(f, (int, float)) and f > 0]
    if not fps:
        raise RuntimeError(f"the probe in {run} logged no throughput")
    return statistics.median(fps[-2:]) / frames_per_step


def fit_schedule(cfg: dict[str, Any], n_train: int, steps: int) -> tuple[list[str], int]:
    """--set items making the run about `steps` long, and the resulting total steps."""
    t = cfg["train"]
    per_epoch = steps_per_epoch(n_train, t["batch_size"], t.get("max_steps_per_epoch", 0))
    if steps >= MIN_EPOCHS * per_epoch:
        epochs, cap = steps // per_epoch, t.get("max_steps_per_epoch", 0)
    else:
        epochs, cap = MIN_EPOCHS, max(1, steps // MIN_EPOCHS)
        per_epoch = min(per_epoch, cap)
    total = epochs * per_epoch
    sets = [f"train.epochs={epochs}", f"train.max_steps_per_epoch={cap}",
            f"train.warmup_steps={min(t['warmup_steps'], max(1, total // 10))}"]
    if "kl_warmup_steps" in t:
        sets.append(f"train.kl_warmup_steps={min(t['kl_warmup_steps'], max(1, total // 5))}")
    return sets, total


def train_in_budget(name: str, corpus: Path, runs: Path, profile: str, budget_s: float,
                    device: str) -> dict[str, Any]:
    kind, modality = RUNS[name]
    prof = PROFILES[profile]
    base = list(prof.overrides.get(name, ()))
    if profile == "gpu":
        base += STAGE1_SETS if kind == "vqvae" else STAGE2_SETS
    config = _config_path(prof.configs[name])
    t0 = time.time()
    probe_dir = runs.parent / "probes" / name
    shutil.rmtree(probe_dir, ignore_errors=True)
    cfg = resolve(kind, modality, config, base + [f"train.log_every={PROBE_LOG_EVERY}"])
    task = make_task(kind, modality, corpus, runs, cfg)
    train(task, probe_dir, RunOptions(device=device, progress=False, tensorboard=False, max_steps=PROBE_STEPS))
    probe_s = time.time() - t0
    frames_per_step = cfg["train"]["batch_size"] * (cfg["model"]["seq_len"] if kind != "vqvae" else 1)
    rate = measured_rate(probe_dir, frames_per_step)
    n_train = len(task.train_dataset())
    left = budget_s - probe_s
    steps = max(MIN_EPOCHS, int(rate * left * (1 - VAL_SHARE)))
    sets, total = fit_schedule(cfg, n_train, steps)
    print(f"   {name}: probe {probe_s:.0f} s, {rate:.1f} steps/s -> {total} steps ({' '.join(sets)})", flush=True)
    cfg = resolve(kind, modality, config, base + sets)
    result = train(make_task(kind, modality, corpus, runs, cfg), runs / name,
                   RunOptions(device=device, progress=True, tensorboard=False, time_limit=max(10.0, left)))
    wall = time.time() - t0
    atomic.write_text(runs / name / "finished", f"{wall:.0f} s\n")
    return {"run": name, "sets": base + sets, "steps": result.step, "planned_steps": total,
            "steps_per_s": rate, "probe_s": probe_s, "wall_s": wall, "stopped": result.stopped,
            "best_val": result.best_val, "val": result.last_val}


def pack(runs: Path, dest: Path) -> list[Path]:
    """All runs in one tar (inference-only best.pt with stage-1 hashes rewritten, config.yaml,
    metrics.jsonl, finished), cut into dest/runs.tar.NN pieces of at most PIECE_BYTES: what comes
    back from the lent machine is limited per file. Join with `cat runs.tar.* | tar x`."""
    dest.mkdir(parents=True, exist_ok=True)
    slim = runs.parent / "slim"
    hashes: dict[str, str] = {}
    whole = runs.parent / "runs.tar"
    with tarfile.open(whole, "w") as tar:
        for name in RUNS:
            if not (runs / name / "best.pt").is_file():
                continue
            (slim / name).mkdir(parents=True, exist_ok=True)
            hashes[name] = slim_copy(runs / name / "best.pt", slim / name / "best.pt", stage1_hashes=hashes)
            for extra in ("config.yaml", METRICS_FILE, "finished"):
                if (runs / name / extra).is_file():
                    shutil.copyfile(runs / name / extra, slim / name / extra)
            tar.add(slim / name, arcname=name)
    pieces = []
    with whole.open("rb") as f:
        while chunk := f.read(PIECE_BYTES):
            pieces.append(dest / f"runs.tar.{len(pieces):02d}")
            pieces[-1].write_bytes(chunk)
    return pieces


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, required=True, help="seconds for everything, packing included")
    ap.add_argument("--pack", type=Path, default=None, help="where the pieces of runs.tar go (e.g. $OUT)")
    ap.add_argument("--profile", choices=("gpu", "tiny"), default="gpu")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    deadline = time.time() + args.budget
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls of stage 2 on tensor cores
    torch.backends.cudnn.allow_tf32 = True
    prof = PROFILES[args.profile]
    t0 = time.time()
    corpus = _corpus(args.out / "bench", prof.corpus, args.workers, lambda *a: None)  # before CUDA starts
    visit: dict[str, Any] = {"profile": args.profile, "corpus_s": time.time() - t0, "runs": [],
                             "torch": torch.__version__,
                             "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    print(f"corpus: {visit['corpus_s']:.0f} s; torch {visit['torch']} on {visit['device']}", flush=True)
    runs = args.out / "runs"
    for i, name in enumerate(RUNS):
        left = deadline - time.time() - PACK_RESERVE_S
        share = left * SHARES[name] / sum(SHARES[n] for n in list(RUNS)[i:])
        if share < MIN_SHARE_S and RUNS[name][0] != "vqvae":  # stage 1 always: the rest reads it
            print(f"   {name}: skipped, {left:.0f} s left", flush=True)
            continue
        try:
            visit["runs"].append(train_in_budget(name, corpus, runs, args.profile, share, args.device))
        except Exception as e:  # a failed run must not cost the others (or the ones already trained)
            print(f"   {name}: FAILED {type(e).__name__}: {e}", flush=True)
            visit["runs"].append({"run": name, "error": f"{type(e).__name__}: {e}"})
        atomic.write_text(args.out / "visit.json", json.dumps(visit, indent=2, default=str))
    if args.pack is not None:
        for path in pack(runs, args.pack):
            print(f"packed {path.name}: {path.stat().st_size / 2**20:.1f} MiB", flush=True)
        shutil.copyfile(args.out / "visit.json", args.pack / "visit.json")
    print("\n| run | steps | steps/s | wall s | stopped | best val |\n|---|---:|---:|---:|---|---:|")
    for r in visit["runs"]:
        if "error" in r:
            print(f"| {r['run']} | failed | | | {r['error'][:60]} | |")
        else:
            bv = r["best_val"]
            print(f"| {r['run']} | {r['steps']} | {r['steps_per_s']:.1f} | {r['wall_s']:.0f} | {r['stopped']} | "
                  f"{bv if not math.isfinite(bv) else round(bv, 4)} |")
    print(f"total {args.budget - (deadline - time.time()):.0f} s of {args.budget:.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

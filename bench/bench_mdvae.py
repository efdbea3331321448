"""MDVAE training-step benchmark: efficient model vs the step-by-step oracle, and vs the matmul floor.

A step = zero_grad + forward + backward + AdamW step (fused, as the training loop runs it), reference
sizes (MDVAEDims()), T = 30.
For each batch size and precision (fp32, bf16 autocast; fp16 autocast with a GradScaler on CUDA, as
`avmdvae train --precision fp16` runs it) three contenders run in the same process,
interleaved, medians of several repeats: the model with its native (C) time loops, the same model with
its PyTorch loops (AVMDVAE_NATIVE=0), and the step-by-step reference. The floor is the step's
matrix-product FLOPs (counted analytically from the dims) divided by this machine's fp32 (or bf16, fp16)
matmul rate: the best median rate of torch.mm on the model's big shapes, timed in the same loop as the steps.
On CUDA every timed call is bracketed by torch.cuda.synchronize(), the native loops are CPU-only (the first
two columns then run the same code), and fp32 matmuls run as PyTorch's default sets them (TF32 off unless
torch.backends.cuda.matmul.allow_tf32 is set; the header says which).

    .venv/bin/python bench/bench_mdvae.py [--repeats 7] [--batches 8 64] [--threads 2]
    .venv/bin/python bench/bench_mdvae.py --device cuda --batches 1024 64 --precisions fp32 bf16 fp16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avmdvae.models import MDVAE, MDVAEDims  # noqa: E402
from avmdvae.runtime import keep_freed_memory  # noqa: E402
from avmdvae.training.loop import autocast_context  # noqa: E402
from tests.reference_mdvae import reference_mdvae  # noqa: E402


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from /proc/stat ((0, 1) elsewhere): time the hypervisor gave away."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 1
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def mm_flops(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


def step_flops(d: MDVAEDims, B: int, T: int) -> dict[str, float]:
    """Matrix-product FLOPs of one training step (forward F, backward, total).

    Backward of a linear layer = 2x its forward (grad wrt input + grad wrt weight), except the input
    projections, whose input is data (weight gradient only: 1x).
    """
    N = B * T
    ein = d.proj_a + d.proj_v
    first = mm_flops(N, d.feat_a, d.proj_a) + mm_flops(N, d.feat_v, d.proj_v)
    f = first
    Hw = d.w_hidden
    f += 2 * (mm_flops(N, ein, 3 * Hw) + mm_flops(N, Hw, 3 * Hw))  # two GRU directions
    f += mm_flops(B, 2 * Hw, 2 * d.w_dim)
    H, P, Q = d.chain_hidden, d.post_hidden, d.prior_hidden
    for z, feat, parent in (
        (d.zav_dim, ein, 0),
        (d.za_dim, d.proj_a, d.zav_dim),
        (d.zv_dim, d.proj_v, d.zav_dim),
    ):
        f += mm_flops(N, z, 3 * H) + mm_flops(N, H, 3 * H)  # GRU cell
        f += mm_flops(N, feat + H + parent, P) + mm_flops(B, d.w_dim, P) + mm_flops(N, P, 2 * z)  # posterior
        f += mm_flops(N, H, Q) + mm_flops(N, Q, 2 * z)  # prior
    for zin, hid, out in (
        (d.zav_dim + d.za_dim, d.dec_hidden_a, d.feat_a),
        (d.zav_dim + d.zv_dim, d.dec_hidden_v, d.feat_v),
    ):
        f += mm_flops(N, zin, hid) + mm_flops(B, d.w_dim, hid) + mm_flops(N, hid, out)
    bwd = 2 * f - first
    return {"forward": f, "backward": bwd, "total": f + bwd}


def matmul_probes(dtype: torch.dtype, B: int, T: int, d: MDVAEDims, device: torch.device) -> list[tuple[int, object]]:
    """(FLOPs, zero-argument torch.mm call) for the model's large shapes (forward and backward forms)."""
    N = B * T
    shapes = [
        (N, d.feat_v, d.proj_v),  # visual projection forward
        (d.proj_v, N, d.feat_v),  # its weight gradient
        (N, d.dec_hidden_v, d.feat_v),  # visual decoder output
        (N, d.feat_v, d.dec_hidden_v),  # its input gradient
        (N, d.proj_a + d.proj_v, 3 * d.w_hidden),  # GRU input transform
    ]
    probes = []
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
        probes.append((mm_flops(m, k, n), lambda a=a, b=b: torch.mm(a, b)))
    return probes


def random_batch(d: MDVAEDims, B: int, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Random features xa (B, T, feat_a), xv (B, T, feat_v) and reparameterisation noise for one step."""
    xa, xv = torch.randn(B, T, d.feat_a, device=device), torch.randn(B, T, d.feat_v, device=device)
    noise = {
        "w": torch.randn(B, d.w_dim, device=device),
        "zav": torch.randn(B, T, d.zav_dim, device=device),
        "za": torch.randn(B, T, d.za_dim, device=device),
        "zv": torch.randn(B, T, d.zv_dim, device=device),
    }
    return xa, xv, noise


def make_step(model: MDVAE, opt, scaler, xa, xv, noise, reference: bool, precision: str, use_native: bool = True):
    """One training step as `avmdvae train` runs it (autocast per precision, GradScaler for fp16)."""

    def step() -> None:
        os.environ["AVMDVAE_NATIVE"] = "1" if use_native else "0"  # read by native.library() at each call
        opt.zero_grad(set_to_none=True)
        with autocast_context(xa.device, precision):
            loss = reference_mdvae(model, xa, xv, noise)["loss"] if reference else model(xa, xv, noise=noise).loss
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--T", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no CUDA device; run without --device for the CPU benchmark")
    if device.type == "cpu" and "fp16" in args.precisions:
        sys.exit("error: fp16 is CUDA-only (as in `avmdvae train`); use fp32 or bf16 on the CPU")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `avmdvae train` does
    torch.manual_seed(0)
    d = MDVAEDims()
    T = args.T
    from avmdvae.models import native

    if device.type == "cuda":
        where = (
            f"{torch.cuda.get_device_name(device)}, TF32 matmuls {torch.backends.cuda.matmul.allow_tf32}, "
            "native loops CPU-only (both columns run PyTorch loops)"
        )
    else:
        native_state = "on" if native.library() is not None else "UNAVAILABLE (both columns run PyTorch loops)"
        where = f"threads {torch.get_num_threads()}, native loops {native_state}"
    print(
        f"torch {torch.__version__}, {where}, T={T}, repeats {args.repeats}, "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )
    rows = []
    steal0 = cpu_ticks()
    for B in args.batches:
        fl = step_flops(d, B, T)
        xa, xv, noise = random_batch(d, B, T, device)
        for prec in args.precisions:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[prec]
            probes = matmul_probes(dtype, B, T, d, device)
            model = MDVAE(d).to(device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # the training loop's optimiser
            scaler = torch.amp.GradScaler(device.type, enabled=prec == "fp16")
            fast = make_step(model, opt, scaler, xa, xv, noise, False, prec)
            torch_loops = make_step(model, opt, scaler, xa, xv, noise, False, prec, use_native=False)
            ref = make_step(model, opt, scaler, xa, xv, noise, True, prec)
            for fn in (fast, torch_loops, ref, *(p[1] for p in probes)):
                for _ in range(args.warmup):
                    fn()
            tf, tt, tr = [], [], []
            tp: list[list[float]] = [[] for _ in probes]
            # interleaved, the matmul probes included, so that the machine's speed changes (this VM's
            # torch.mm rate moves by 20-30 % between minutes) hit the steps and the floor alike
            contenders = [(fast, tf), (torch_loops, tt), (ref, tr), *zip((p[1] for p in probes), tp, strict=True)]
            for _ in range(args.repeats):
                for fn, acc in contenders:
                    sync()
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    acc.append(time.perf_counter() - t0)
            t_fast, t_torch, t_ref = statistics.median(tf), statistics.median(tt), statistics.median(tr)
            rate = max(f / statistics.median(ts) for (f, _), ts in zip(probes, tp, strict=True))  # best shape's median
            floor = fl["total"] / rate
            rows.append(
                (B, prec, t_fast, t_torch, t_ref, t_ref / t_fast, fl["total"] / 1e9, rate / 1e9, floor, t_fast / floor)
            )
            print(
                f"B={B:4d} {prec}: model {t_fast * 1e3:8.1f} ms (PyTorch loops {t_torch * 1e3:8.1f})  "
                f"reference {t_ref * 1e3:8.1f} ms  "
                f"speedup {t_ref / t_fast:5.2f}x  {fl['total'] / 1e9:6.2f} GFLOP  "
                f"mm rate {rate / 1e9:6.1f} GFLOP/s  "
                f"floor {floor * 1e3:8.1f} ms  model/floor {t_fast / floor:5.2f}x",
                flush=True,
            )
    steal1 = cpu_ticks()
    steal = 100 * (steal1[0] - steal0[0]) / max(1, steal1[1] - steal0[1])
    print(f"load average at end {os.getloadavg()[0]:.1f}; CPU steal during the run {steal:.0f}%")
    print()
    print(
        "| batch | precision | model step (ms) | same, PyTorch loops (ms) | reference step (ms) | speedup "
        "| GFLOP/step | matmul GFLOP/s | floor (ms) | model / floor |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for B, prec, tf_, tt_, tr_, sp, gf, r, fl_, ratio in rows:
        print(
            f"| {B} | {prec} | {tf_ * 1e3:.1f} | {tt_ * 1e3:.1f} | {tr_ * 1e3:.1f} | {sp:.2f}x | {gf:.2f} | {r:.1f} "
            f"| {fl_ * 1e3:.1f} | {ratio:.2f}x |"
        )


if __name__ == "__main__":
    main()

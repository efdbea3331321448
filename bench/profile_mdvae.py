"""Where an MDVAE training step's time goes on the CPU, next to its matmul floor.

The companion of bench_mdvae.py (same step, sizes, floor and optimiser). For each batch size, interleaved
over the repeats (medians):
  step          the plain training step, as bench_mdvae.py times it
  matmuls       the step's matrix products (aten mm, addmm, bmm, baddbmm and their in-place / out forms),
                each timed around its own call inside an instrumented step (a TorchDispatchMode)
  same, alone   the same calls (operands copied with their strides from one step) replayed back to back
  native loops  the C time loops (recurrence.c), timed around each call in the instrumented step
  other ops     every other aten op of the instrumented step (elementwise, reductions, copies, AdamW)
  rest          step - the three above: Python, autograd bookkeeping and dispatch between the ops; the
                instrumented times carry some of the mode's own cost, so at large batches this is within
                a few ms of zero and can come out negative
and the floor's parts: the FLOPs of the matmuls and of the native loops, each divided by the probe rate
(bench_mdvae.py's best median torch.mm rate on the model's big shapes, timed in the same loop).

    .venv/bin/python bench/profile_mdvae.py [--batches 64] [--repeats 9] [--threads 2] [--top 12]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_mdvae import make_step, matmul_probes, random_batch, step_flops  # noqa: E402

from avmdvae.models import MDVAE, MDVAEDims, native  # noqa: E402
from avmdvae.runtime import keep_freed_memory  # noqa: E402

MATMULS = {"mm", "addmm", "addmm_", "bmm", "baddbmm", "baddbmm_"}


def op_name(func: object) -> str:
    """'aten.addmm_.default' -> 'addmm_'."""
    return str(func).split(".")[1]


def matmul_flops(name: str, args: tuple) -> int:
    """FLOPs of one matmul call from its operands' shapes ((b,) m x k times k x n)."""
    a, b = [x for x in args if isinstance(x, torch.Tensor)][-2:] if name.startswith(("addmm", "baddbmm")) else args[:2]
    batch = a.shape[0] if a.dim() == 3 else 1
    return 2 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]


class StepTimer(TorchDispatchMode):
    """Times every aten op around its own call: matmuls and the rest in separate buckets; optionally
    records the matmul calls with copies of their operands (strides kept) for a replay."""

    def __init__(self, record: bool = False) -> None:
        super().__init__()
        self.seconds: dict[str, float] = defaultdict(float)
        self.per_op: dict[str, float] = defaultdict(float)
        self.calls: list[tuple[object, tuple, dict]] = []
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        name = op_name(func)
        is_mm = name in MATMULS
        if is_mm and self.record:
            self.calls.append((func, tuple(_copy(a) for a in args), {k: _copy(v) for k, v in kwargs.items()}))
        t0 = time.perf_counter()
        out = func(*args, **kwargs)
        dt = time.perf_counter() - t0
        self.seconds["matmuls" if is_mm else "other ops"] += dt
        if not is_mm:
            self.per_op[name] += dt
        return out


def _copy(x: object) -> object:
    if isinstance(x, torch.Tensor):
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype).copy_(x)
    return x


class LoopTimer:
    """Wraps the native library's loop entry points to add their wall time to seconds['native loops']."""

    NAMES = [name for name in native._SIGNATURES if not name.startswith("avm_set_")]  # the loops' entry points

    def __init__(self, seconds: dict[str, float]) -> None:
        self.lib = native.library()
        self.seconds = seconds
        self.saved: dict[str, Callable] = {}

    def __enter__(self) -> LoopTimer:
        if self.lib is not None:
            for name in self.NAMES:
                fn = self.saved[name] = getattr(self.lib, name)
                setattr(self.lib, name, self._timed(fn))
        return self

    def _timed(self, fn: Callable) -> Callable:
        def call(*args: object) -> None:
            t0 = time.perf_counter()
            fn(*args)
            self.seconds["native loops"] += time.perf_counter() - t0

        return call

    def __exit__(self, *exc: object) -> None:
        for name, fn in self.saved.items():
            setattr(self.lib, name, fn)


def loop_flops(d: MDVAEDims, B: int, T: int) -> float:
    """step_flops' FLOPs of the products that run inside the native loops, forward and backward: the GRUs'
    state products, and per chain its GRU input, its posterior's state and root-z parts and output layer.
    Inside a loop the backward forms the input gradients only (1x the forward); the weight gradients are
    matmuls after the loop."""
    N = B * T
    H, P = d.chain_hidden, d.post_hidden
    fwd = 2 * 2 * N * d.w_hidden * 3 * d.w_hidden  # two directions, h @ W_hh^T
    for z, parent in ((d.zav_dim, 0), (d.za_dim, d.zav_dim), (d.zv_dim, d.zav_dim)):
        fwd += 2 * N * (z * 3 * H + H * 3 * H + (H + parent) * P + P * 2 * z)
    return 2 * fwd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[64])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--T", type=int, default=30)
    ap.add_argument("--top", type=int, default=12, help="list this many of the costliest other ops")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    torch.manual_seed(0)
    d, T = MDVAEDims(), args.T
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, native loops "
        f"{'on' if native.library() is not None else 'UNAVAILABLE'}, T={T}, fp32, repeats {args.repeats}"
    )
    for B in args.batches:
        xa, xv, noise = random_batch(d, B, T, torch.device("cpu"))
        model = MDVAE(d)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        step = make_step(model, opt, torch.amp.GradScaler("cpu", enabled=False), xa, xv, noise, False, "fp32")
        probes = matmul_probes(torch.float32, B, T, d, torch.device("cpu"))
        for _ in range(args.warmup):
            step()
        recorder = StepTimer(record=True)
        with recorder:
            step()
        calls = recorder.calls
        mm_flops = sum(matmul_flops(op_name(f), a) for f, a, _ in calls)

        plain: list[float] = []
        alone: list[float] = []
        buckets: dict[str, list[float]] = defaultdict(list)
        per_op: dict[str, list[float]] = defaultdict(list)
        probe_times: list[list[float]] = [[] for _ in probes]
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            step()
            plain.append(time.perf_counter() - t0)
            timer = StepTimer()
            with timer, LoopTimer(timer.seconds):
                step()
            for k in ("matmuls", "native loops", "other ops"):
                buckets[k].append(timer.seconds[k])
            for k, v in timer.per_op.items():
                per_op[k].append(v)
            t0 = time.perf_counter()
            for f, a, k in calls:
                f(*a, **k)
            alone.append(time.perf_counter() - t0)
            for (_, fn), ts in zip(probes, probe_times, strict=True):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
        rate = max(f / statistics.median(ts) for (f, _), ts in zip(probes, probe_times, strict=True))
        total = step_flops(d, B, T)["total"]
        med = {k: statistics.median(v) for k, v in buckets.items()}
        t_step = statistics.median(plain)
        rest = t_step - sum(med.values())
        lf = loop_flops(d, B, T)
        floor = total / rate
        print(
            f"\nB={B}: step {t_step * 1e3:.1f} ms, floor {floor * 1e3:.1f} ms ({total / 1e9:.2f} GFLOP at "
            f"{rate / 1e9:.1f} GFLOP/s), step / floor {t_step / floor:.2f}x"
        )
        print("| part | ms | at the probe rate (ms) | over it (ms) |")
        print("|---|---:|---:|---:|")
        rows = [
            (f"matmuls ({len(calls)} calls, {mm_flops / 1e9:.2f} GFLOP)", med["matmuls"], mm_flops / rate),
            ("  the same, replayed alone", statistics.median(alone), mm_flops / rate),
            (f"native loops ({lf / 1e9:.2f} GFLOP)", med["native loops"], lf / rate),
            ("other aten ops", med["other ops"], 0.0),
            ("rest: Python, autograd, dispatch", rest, 0.0),
        ]
        for name, t, at_rate in rows:
            print(f"| {name} | {t * 1e3:.1f} | {at_rate * 1e3:.1f} | {(t - at_rate) * 1e3:.1f} |")
        extra = (mm_flops + lf - total) / 1e9
        print(f"(the step dispatches {extra:+.2f} GFLOP beyond step_flops: padded small outputs, bias sums as gemms)")
        top = sorted(((statistics.median(v), k) for k, v in per_op.items()), reverse=True)[: args.top]
        print("costliest other ops (ms per step): " + ", ".join(f"{k} {t * 1e3:.2f}" for t, k in top))


if __name__ == "__main__":
    main()

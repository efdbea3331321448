"""The MDVAE benchmark's FLOP count: the numerator of its matmul floor must be what a step computes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from avmdvae.models import MDVAE, MDVAEDims, native

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_mdvae import make_step, step_flops  # noqa: E402
from profile_mdvae import StepTimer, loop_flops, matmul_flops, op_name  # noqa: E402


@pytest.mark.skipif(native.library() is None, reason="needs the native loops (their products are not aten ops)")
@pytest.mark.parametrize("B", [2, 5])
def test_analytic_flops_match_the_products_a_step_dispatches(B: int) -> None:
    """step_flops (counted from the dims) against the matmuls one training step dispatches, recorded op by
    op, plus the products inside the native loops: within 1 % at the reference sizes (the model pads a few
    small outputs and forms bias gradients with ones-vector gemms, which the analytic count leaves out)."""
    torch.manual_seed(0)
    d, T = MDVAEDims(), 4
    model = MDVAE(d)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    xa, xv = torch.randn(B, T, d.feat_a), torch.randn(B, T, d.feat_v)
    step = make_step(model, opt, torch.amp.GradScaler("cpu", enabled=False), xa, xv, None, False, "fp32")
    recorder = StepTimer(record=True)
    with recorder:
        step()
    assert recorder.calls, "no matmul was recorded"
    dispatched = sum(matmul_flops(op_name(f), a) for f, a, _ in recorder.calls) + loop_flops(d, B, T)
    counted = step_flops(d, B, T)["total"]
    assert dispatched == pytest.approx(counted, rel=0.01)
    assert dispatched >= counted  # the extras only add

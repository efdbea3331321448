"""The native (C) time loops agree with the PyTorch loops they replace, and switch off cleanly."""

from __future__ import annotations

import ctypes
import shutil

import pytest
import torch

from avmdvae.models import DSAE, MDVAE, DSAEDims, MDVAEDims, native
from avmdvae.models.recurrence import BiGRUFinal, bigru_final

needs_native = pytest.mark.skipif(
    native.library() is None, reason="no C compiler or no sgemm exported by this PyTorch build"
)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def test_native_library_is_built_where_a_compiler_exists() -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine")
    if native._torch_symbol("sgemm_") is None:
        pytest.skip("this PyTorch build exports no sgemm_")
    assert native.library() is not None


def test_build_writes_once_into_the_cache(tmp_path, monkeypatch) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setenv("AVMDVAE_CACHE", str(tmp_path))
    first = native.build()
    assert first is not None and first.parent == tmp_path and first.stat().st_size > 0
    mtime = first.stat().st_mtime_ns
    assert native.build() == first and first.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind


def test_switched_off_by_environment(monkeypatch) -> None:
    monkeypatch.setenv("AVMDVAE_NATIVE", "0")
    assert native.library() is None
    assert native.usable(torch.zeros(2)) is None


@needs_native
def test_usable_only_for_contiguous_float32_cpu() -> None:
    x = torch.zeros(4, 3)
    assert native.usable(x) is not None
    assert native.usable(x.double()) is None
    assert native.usable(x.t()) is None


def _bigru_run(monkeypatch, use_native: bool):
    monkeypatch.setenv("AVMDVAE_NATIVE", "1" if use_native else "0")
    g = torch.Generator().manual_seed(0)
    T, B, E, H = 9, 5, 7, 24
    x = torch.randn(B, T, E, generator=g).requires_grad_()
    gru = torch.nn.GRU(E, H, bidirectional=True)
    with torch.no_grad():
        for p in gru.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    out = bigru_final(x, gru)
    out.backward(torch.randn(out.shape, generator=g))
    return out.detach(), x.grad, *(p.grad for p in gru.parameters())


@needs_native
def test_bigru_native_matches_torch_loop(monkeypatch) -> None:
    for ours, ref in zip(_bigru_run(monkeypatch, True), _bigru_run(monkeypatch, False), strict=True):
        assert _rel_err(ours, ref) < 1e-5


@needs_native
@pytest.mark.parametrize("B", [1, 5, 16])
def test_bigru_loop_same_bits_on_one_and_two_threads(B: int) -> None:
    """The C GRU runs one direction per thread (each with its own scratch rows): the loop's outputs and the
    input-gate gradients it writes must be those of the one-thread run, bit for bit."""
    g = torch.Generator().manual_seed(B)
    T, H = 7, 16
    gi = [torch.randn(B, T, 3 * H, generator=g).requires_grad_() for _ in range(2)]
    params = [0.3 * torch.randn(3 * H, H, generator=g) for _ in range(2)]
    params += [0.3 * torch.randn(3 * H, generator=g) for _ in range(4)]
    up = torch.randn(2, B, H, generator=g)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = BiGRUFinal.apply(*gi, *params, True)
            runs.append([out.detach(), *torch.autograd.grad(out, gi, up)])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def _step(monkeypatch, use_native: bool, model: torch.nn.Module, inputs, noise):
    monkeypatch.setenv("AVMDVAE_NATIVE", "1" if use_native else "0")
    model.zero_grad(set_to_none=True)
    out = model(*inputs, noise=noise)
    out.loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    return [out.loss.detach(), *(x.detach() for x in out.latents), *grads]


@needs_native
def test_mdvae_step_native_matches_torch_loops(monkeypatch) -> None:
    torch.manual_seed(0)
    d = MDVAEDims(feat_a=64, feat_v=96, proj_a=32, proj_v=48, w_hidden=40, chain_hidden=24)
    m = MDVAE(d)
    B, T = 13, 11  # >= 8 rows: the C loops split the batch over threads where there are two
    inputs = (torch.randn(B, T, d.feat_a), torch.randn(B, T, d.feat_v))
    noise = {
        "w": torch.randn(B, d.w_dim),
        "zav": torch.randn(B, T, d.zav_dim),
        "za": torch.randn(B, T, d.za_dim),
        "zv": torch.randn(B, T, d.zv_dim),
    }
    ours = _step(monkeypatch, True, m, inputs, noise)
    ref = _step(monkeypatch, False, m, inputs, noise)
    for a, b in zip(ours, ref, strict=True):
        assert _rel_err(a, b) < 1e-4


@needs_native
def test_dsae_step_native_matches_torch_loops(monkeypatch) -> None:
    torch.manual_seed(1)
    d = DSAEDims.tiny(feat=20)
    m = DSAE(d, "audio")
    B, T = 9, 8
    noise = {"w": torch.randn(B, d.w_dim), "z": torch.randn(B, T, m.z_dim)}
    x = torch.randn(B, T, d.feat)
    ours = _step(monkeypatch, True, m, (x,), noise)
    ref = _step(monkeypatch, False, m, (x,), noise)
    for a, b in zip(ours, ref, strict=True):
        assert _rel_err(a, b) < 1e-4


@needs_native
@pytest.mark.parametrize("B", [1, 16])  # one thread alone (chains below 8 rows), and a team
def test_loops_leave_the_callers_mkl_threads_as_they_were(B: int) -> None:
    """The loops hold MKL to one thread while they run; the caller's torch.mm must get its threads back."""
    mkl_max_threads = native._torch_symbol("MKL_Get_Max_Threads")
    if not mkl_max_threads:
        pytest.skip("this PyTorch build has no MKL")
    get = ctypes.CFUNCTYPE(ctypes.c_int)(mkl_max_threads)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        before = get()
        torch.manual_seed(2)
        d = MDVAEDims.tiny()
        m = MDVAE(d)
        m(torch.randn(B, 6, d.feat_a), torch.randn(B, 6, d.feat_v)).loss.backward()  # both loops, both ways
        assert before == 2 and get() == before
    finally:
        torch.set_num_threads(prev)

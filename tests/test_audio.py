"""Spectrogram front end: framing on the video clock, shapes, inversion (STFT, Griffin-Lim, phase)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avmdvae import audio as A
from avmdvae.constants import N_BINS, N_FFT, SAMPLE_RATE

SR = SAMPLE_RATE


def speechy(num_samples: int, seed: int = 0) -> torch.Tensor:
    """A harmonic chirp with vibrato plus a little noise: a stand-in for voiced speech."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples, dtype=torch.float64) / SR
    f0 = 140 + 30 * torch.sin(2 * math.pi * 3 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / SR
    x = sum(0.3 / h * torch.sin(h * phase) for h in range(1, 8))
    x = x * (0.6 + 0.4 * torch.sin(2 * math.pi * 2 * t))
    return (x + 0.01 * torch.randn(num_samples, generator=g, dtype=torch.float64)).float()


def test_constants() -> None:
    assert N_FFT == 1024 and N_BINS == 513 and SR == 16_000
    assert N_FFT / SR == pytest.approx(0.064)  # 64 ms window


@pytest.mark.parametrize("fps", [30.0, 29.97, 25.0, 60.0])
def test_frame_centers_do_not_drift_over_sixty_seconds(fps: float) -> None:
    n = int(60 * fps)
    c = A.frame_centers(n, fps).to(torch.float64)
    exact = torch.arange(n, dtype=torch.float64) * SR / fps
    assert (c - exact).abs().max() <= 0.5 + 1e-9  # within one sample at every frame, also the last
    hop = round(SR / fps)  # an integer-hop STFT drifts by |SR/fps - hop| per frame (not 25 fps: 640)
    if SR / fps != hop:
        assert abs(exact[-1] - (n - 1) * hop) > 100


def test_n_frames_for_is_inverse_of_num_samples_for() -> None:
    for fps in (30.0, 29.97, 25.0):
        for n in (1, 2, 3, 89, 90, 1800):
            assert A.n_frames_for(A.num_samples_for(n, fps), fps) == n
    assert A.n_frames_for(48_000) == 90 and A.num_samples_for(90) == 48_000
    assert A.n_frames_for(0) == 0 and A.n_frames_for(1) == 1


def test_stft_shapes_and_inputs() -> None:
    x = speechy(SR)  # 1 s
    spec = A.stft(x)
    assert spec.shape == (30, 513) and spec.is_complex()
    assert A.stft(x.numpy()).shape == (30, 513)  # numpy in
    batch = torch.stack([x, -x, 0.5 * x]).reshape(3, 1, -1)
    assert A.stft(batch).shape == (3, 1, 30, 513)
    assert torch.allclose(A.stft(batch)[2, 0], 0.5 * spec, atol=1e-5)
    p = A.power_spectrogram(x, n_frames=40)  # more video frames than audio: zeros at the end
    assert p.shape == (40, 513) and p.dtype == torch.float32
    assert torch.allclose(p[:30], spec.abs() ** 2, rtol=1e-4, atol=1e-6)
    assert p[31:].abs().max() == 0
    assert A.power_spectrogram(torch.zeros(SR, dtype=torch.int16)).shape == (30, 513)


def test_frame_k_is_centred_on_its_video_timestamp() -> None:
    n = 1800  # 60 s at 30 fps: the last frames must not drift
    x = torch.zeros(A.num_samples_for(n))
    ks = [0, 1, 2, 900, 1797, 1799]
    centers = A.frame_centers(n)
    x[centers[ks]] = 1.0
    mag = A.stft(x).abs()  # (N, 513)
    for k in ks:  # an impulse on the centre sees the window peak w[512] = 1 in every bin
        assert torch.allclose(mag[k], torch.ones(513), atol=1e-5)
    others = torch.ones(n, dtype=torch.bool)
    others[ks] = False
    assert mag[others].max() < 1e-6  # neighbours are 533 samples away, beyond the 512 half-window


@pytest.mark.parametrize("fps", [30.0, 25.0, 29.97])
def test_istft_reconstructs(fps: float) -> None:
    s = 2 * SR + 123
    x = speechy(s)
    n = A.n_frames_for(s, fps)
    y = A.istft(A.stft(x, fps=fps), fps=fps, num_samples=s)
    assert y.shape == x.shape
    covered = int(A.frame_centers(n, fps)[-1]) + 450  # past the last window's reach the output fades
    assert (y[:covered] - x[:covered]).abs().max() < 1e-5
    x64 = x.double()
    y64 = A.istft(A.stft(x64, fps=fps), fps=fps, num_samples=s)
    assert y64.dtype == torch.float64 and (y64[:covered] - x64[:covered]).abs().max() < 1e-12
    assert A.istft(A.stft(x, fps=fps), fps=fps).shape == (A.num_samples_for(n, fps),)


def test_istft_batch() -> None:
    x = torch.stack([speechy(SR, seed=i) for i in range(4)]).reshape(2, 2, SR)
    y = A.istft(A.stft(x), num_samples=SR)
    assert y.shape == (2, 2, SR)
    assert (y[..., :15_000] - x[..., :15_000]).abs().max() < 1e-5


def test_invert_with_phase_is_exact() -> None:
    x = speechy(SR)
    spec = A.stft(x)
    y = A.invert_with_phase(spec.abs() ** 2, torch.angle(spec), num_samples=SR)
    assert (y[:15_000] - x[:15_000]).abs().max() < 1e-5


def test_griffin_lim_converges_and_momentum_helps() -> None:
    x = speechy(SR)
    power = A.power_spectrogram(x)

    def sc(n_iter: int, momentum: float) -> float:
        g = torch.Generator().manual_seed(0)
        y = A.griffin_lim(power, n_iter=n_iter, momentum=momentum, num_samples=SR, generator=g)
        assert y.shape == (SR,) and torch.isfinite(y).all()
        return A.spectral_convergence(power, y)

    plain = [sc(n, 0.0) for n in (4, 16, 48)]
    fast = [sc(n, 0.99) for n in (4, 16, 48)]
    assert plain[0] > plain[1] > plain[2]  # improves with iterations
    assert fast[0] > fast[1] > fast[2]
    assert fast[1] < plain[1] and fast[2] < plain[2]  # momentum beats none at equal iterations
    assert fast[2] < 0.1
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = A.griffin_lim(power, n_iter=5, generator=g1)
    b = A.griffin_lim(power, n_iter=5, generator=g2)
    assert torch.equal(a, b)  # deterministic given a generator


def test_griffin_lim_batch_and_numpy() -> None:
    p = A.power_spectrogram(torch.stack([speechy(8000, 1), speechy(8000, 2)])).numpy()
    y = A.griffin_lim(p, n_iter=3, generator=torch.Generator().manual_seed(0))
    assert y.shape == (2, A.num_samples_for(p.shape[-2]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    x = speechy(SR)
    p_cpu = A.power_spectrogram(x)
    p_gpu = A.power_spectrogram(x.cuda())
    assert p_gpu.is_cuda and torch.allclose(p_gpu.cpu(), p_cpu, rtol=1e-3, atol=1e-4)
    y = A.istft(A.stft(x.cuda()), num_samples=SR)
    assert y.is_cuda and (y.cpu()[:15_000] - x[:15_000]).abs().max() < 1e-4
    g = torch.Generator(device="cuda").manual_seed(0)
    z = A.griffin_lim(p_gpu, n_iter=8, generator=g)
    assert z.is_cuda and torch.isfinite(z).all()
    assert np.isfinite(A.spectral_convergence(p_gpu, z))

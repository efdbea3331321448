"""Operations on latents: take factors from another clip, interpolate between clips.

Lengths: the output always has A's length (A gives the timeline, and the audio when `--phase
source`). B's dynamical factors (z(av), z(a), z(v)) are fitted to it by `stretch` (default: linear
interpolation in latent space over B's whole trajectory, so B's articulation is played slower or
faster) or `loop` (B's own speed: truncated when B is longer, continued back and forth when it is
shorter). w is static and needs no fitting.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from avmdvae.constants import MDVAE_LATENTS
from avmdvae.errors import ConfigError
from avmdvae.models.mdvae import Latents

LENGTH_MODES = ("stretch", "loop")


def check_factors(factors: Iterable[str], length: str = "stretch") -> list[str]:
    """Validated, de-duplicated factor names (in MDVAE_LATENTS order); ConfigError on unknown names/modes."""
    names = set(factors)
    unknown = names - set(MDVAE_LATENTS)
    if unknown:
        raise ConfigError(f"unknown factor(s) {', '.join(sorted(unknown))}: choose from {', '.join(MDVAE_LATENTS)}")
    if length not in LENGTH_MODES:
        raise ConfigError(f"unknown length mode {length!r}: use stretch or loop")
    return [f for f in MDVAE_LATENTS if f in names]


def stretch(x: torch.Tensor, n: int, mode: str = "stretch") -> torch.Tensor:
    """Resample a latent sequence (1, T, D) to (1, n, D).

    stretch: linear interpolation in latent space with the first and last frames kept (the whole
    trajectory, played faster or slower). loop: truncate, or repeat from the start (ping-pong, so that
    the joins are continuous) until n frames.
    """
    if mode not in LENGTH_MODES:
        raise ConfigError(f"unknown length mode {mode!r}: use stretch or loop")
    t = x.shape[1]
    if t == n:
        return x
    if mode == "stretch":
        if t == 1:
            return x.expand(-1, n, -1).clone()
        pos = (
            torch.linspace(0, t - 1, n, dtype=torch.float64, device=x.device)
            if n > 1
            else torch.zeros(1, dtype=torch.float64, device=x.device)
        )
        lo = pos.floor().long().clamp(max=t - 1)
        hi = (lo + 1).clamp(max=t - 1)
        frac = (pos - lo.double()).to(x.dtype)[None, :, None]
        return x[:, lo] * (1 - frac) + x[:, hi] * frac
    if mode == "loop":
        if t == 1:
            return x.expand(-1, n, -1).clone()
        period = 2 * (t - 1)
        k = torch.arange(n, device=x.device) % period
        idx = torch.where(k < t, k, period - k)
        return x[:, idx]
    raise ConfigError(f"unknown length mode {mode!r}: use stretch or loop")


def combine(a: Latents, b: Latents, factors: Iterable[str], length: str = "stretch") -> Latents:
    """A's latents with the named factors taken from B; B's dynamical factors fitted to A's length."""
    factors = set(check_factors(factors, length))
    n = a.zav.shape[1]
    parts = {}
    for name in MDVAE_LATENTS:
        src = b if name in factors else a
        v = getattr(src, name)
        parts[name] = v if name == "w" else stretch(v, n, length)
    return Latents(**parts)


def interpolate(
    a: Latents, b: Latents, factors: Iterable[str], alpha: float | torch.Tensor, length: str = "stretch"
) -> Latents:
    """(1 - alpha) * A + alpha * B for the named factors (B fitted to A's length), A's for the others.

    alpha: a float, or a (N,) tensor of per-frame weights (w then becomes per-frame, (1, N, Dw)).
    """
    factors = check_factors(factors, length)
    target = combine(a, b, factors, length)
    n = a.zav.shape[1]
    out = {}
    for name in MDVAE_LATENTS:
        va, vb = getattr(a, name), getattr(target, name)
        if name not in set(factors):
            out[name] = va
            continue
        if torch.is_tensor(alpha):
            al = alpha.to(va.dtype).to(va.device)
            if name == "w":
                out[name] = va[:, None] + (vb - va)[:, None] * al[None, :, None]
            else:
                out[name] = va + (vb - va) * al[None, :, None]
        else:
            out[name] = va + (vb - va) * float(alpha)
    if torch.is_tensor(alpha) and out["w"].dim() == 2:  # keep shapes consistent: per-frame w
        out["w"] = out["w"][:, None].expand(-1, n, -1)
    return Latents(**out)

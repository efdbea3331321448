"""Building blocks of the stage-2 models (mdvae.py, dsae.py), in plain PyTorch.

Shapes: B sequences, T frames; every tensor is batch-first.
    mlp            widths -> Linear + tanh per hidden layer, then an optional output Linear
    Standardize    per-dimension (x - mean) / std with training-set statistics kept as buffers
    GaussianHead   x -> (mean, logvar)
    StaticEncoder  q(w | e_{1:T}): bidirectional nn.GRU (cuDNN on a GPU), final states -> GaussianHead
    Chain          one dynamical latent: GRU state over its own past samples, prior and posterior heads
    unroll         advances several chains together, frame by frame (the models' only time loop)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from avmdvae.errors import ConfigError

LOG_2PI = math.log(2.0 * math.pi)
STD_FLOOR = 1e-3  # relative floor of a standardised dimension's std (a constant dimension stays finite)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int | None = None) -> nn.Sequential:
    """Linear + tanh for each hidden width, then Linear(., out_dim) unless out_dim is None.

    mlp(d, []) is the identity; its output width is `mlp_out(d, hidden, out_dim)`.
    """
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.Tanh()]
        in_dim = h
    if out_dim is not None:
        layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def mlp_out(in_dim: int, hidden: Sequence[int], out_dim: int | None = None) -> int:
    return out_dim if out_dim is not None else (hidden[-1] if hidden else in_dim)


def reparameterize(mean: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """mean + sigma * eps, with eps ~ N(0, I) given by the caller (zeros give the mean)."""
    return torch.addcmul(mean, torch.exp(0.5 * logvar), eps.to(mean.dtype))


def _wide(x: Tensor) -> Tensor:
    """x in at least float32 (losses of a bf16 / fp16 forward are summed in float32)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def gaussian_kl(mq: Tensor, lvq: Tensor, mp: Tensor | None = None, lvp: Tensor | None = None) -> Tensor:
    """Elementwise KL(N(mq, e^lvq) || N(mp, e^lvp)), at least float32; mp, lvp = None: N(0, I)."""
    mq, lvq = _wide(mq), _wide(lvq)
    if mp is None or lvp is None:
        return 0.5 * (lvq.exp() + mq.pow(2) - 1.0 - lvq)
    mp, lvp = _wide(mp), _wide(lvp)
    return 0.5 * (lvp - lvq + (lvq.exp() + (mq - mp).pow(2)) * torch.exp(-lvp) - 1.0)


def gaussian_nll(x: Tensor, mean: Tensor, logvar: Tensor | None) -> Tensor:
    """-log N(x; mean, e^logvar) summed over every element (a scalar, at least float32); logvar (D,) is
    per last-dim feature, None = unit variance. The squared error is summed per
    feature first, so that the big (..., D) tensors are read once forward and once backward."""
    sq = (_wide(x) - _wide(mean)).pow(2).flatten(0, -2).sum(0)  # (D,)
    n = x.numel() // x.shape[-1]  # elements per feature
    if logvar is None:
        return 0.5 * (sq.sum() + x.numel() * LOG_2PI)
    lv = _wide(logvar)
    return 0.5 * ((sq * torch.exp(-lv)).sum() + n * lv.sum() + x.numel() * LOG_2PI)


class Standardize(nn.Module):
    """x (..., D) -> (x - mean) / std per dimension; `inverse` undoes it.

    The statistics are buffers (saved in checkpoints), set once from training data by `fit`. A model
    whose statistics were never fitted refuses to run rather than silently using the raw features.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """x (N, D) training features (N >= 2)."""
        x = x.reshape(-1, self.mean.numel()).double()
        std = x.std(0)
        self.mean.copy_(x.mean(0))
        self.std.copy_(std.clamp_min(STD_FLOOR * float(std.max().clamp_min(1e-12))))
        self.fitted.fill_(True)

    def _check(self) -> None:
        if not torch.compiler.is_compiling() and not bool(self.fitted):  # (a compiled step was checked eagerly)
            raise ConfigError("the model's input statistics were never fitted: call `fit_input_stats` first")

    def forward(self, x: Tensor) -> Tensor:
        self._check()
        inv = 1.0 / self.std
        return torch.addcmul(-self.mean * inv, x, inv)  # (x - mean) / std in one pass

    def inverse(self, y: Tensor) -> Tensor:
        return y * self.std + self.mean


class GaussianHead(nn.Module):
    """x (..., in) -> MLP(hidden) -> (mean, logvar), each (..., out)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int) -> None:
        super().__init__()
        self.net = mlp(in_dim, hidden, 2 * out_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.net(x).chunk(2, -1)
        return mean, logvar


class StaticEncoder(nn.Module):
    """q(w | e_{1:T}): a bidirectional GRU reads the frames; its two final states -> GaussianHead."""

    def __init__(self, in_dim: int, hidden: int, head_hidden: Sequence[int], w_dim: int) -> None:
        super().__init__()
        self.gru = nn.GRU(in_dim, hidden, bidirectional=True, batch_first=True)
        self.head = GaussianHead(2 * hidden, head_hidden, w_dim)

    def forward(self, e: Tensor) -> tuple[Tensor, Tensor]:
        """e (B, T, in) -> (mean, logvar), each (B, w_dim)."""
        _, h_n = self.gru(e)  # (2, B, H): forward direction after frame T, backward after frame 1
        return self.head(torch.cat([h_n[0], h_n[1]], -1))


class StandardNormal(nn.Module):
    """A prior without dynamics: h (..., H) -> mean 0 and log-variance 0, each (..., z_dim)."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.z_dim = z_dim

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        zero = h.new_zeros(*h.shape[:-1], self.z_dim)
        return zero, zero


class Chain(nn.Module):
    """One dynamical latent z_t with its own recurrent state h_t over its past samples:

        h_1 = 0,  h_{t+1} = GRU(z_t, h_t)
        p(z_t | z_{<t})      = N(prior(h_t))          (dynamic_prior=False: N(0, I) at every frame)
        q(z_t | c_t, h_t, p_t) = N(post(tanh(A c_t + R [h_t, p_t]) ...))

    c_t is the part of the posterior's input known before the loop (the frame's features and w), so
    A c_t is computed for all frames at once (`context`); p_t is the parent chain's z_t (or nothing).
    """

    def __init__(
        self, z_dim: int, context_dim: int, parent_dim: int, hidden: int,
        post_hidden: Sequence[int], prior_hidden: Sequence[int], parent: str | None = None,
        dynamic_prior: bool = True,
    ) -> None:
        super().__init__()
        self.z_dim, self.hidden, self.parent = z_dim, hidden, parent
        self.cell = nn.GRUCell(z_dim, hidden)
        self.prior: nn.Module = GaussianHead(hidden, prior_hidden, z_dim) if dynamic_prior else StandardNormal(z_dim)
        self.post_context = nn.Linear(context_dim, post_hidden[0])
        self.post_recurrent = nn.Linear(hidden + parent_dim, post_hidden[0], bias=False)
        self.post_out = GaussianHead(post_hidden[0], post_hidden[1:], z_dim)

    def context(self, c: Tensor) -> Tensor:
        """c (B, T, context_dim) -> first-layer pre-activations (B, T, P) of every frame."""
        return self.post_context(c)

    def posterior(self, a_t: Tensor, h: Tensor, parent_z: Tensor | None) -> tuple[Tensor, Tensor]:
        """a_t (B, P) this frame's context part, h (B, H), parent_z (B, Zp) -> (mean, logvar) (B, z)."""
        r = h if parent_z is None else torch.cat([h, parent_z], -1)
        return self.post_out(torch.tanh(torch.addmm(a_t, r, self.post_recurrent.weight.t())))  # a_t + R r


@dataclass
class ChainOutput:
    """One chain over T frames, each (B, T, z_dim); state: h after the last frame (B, H)."""

    z: Tensor
    post: tuple[Tensor, Tensor]
    prior: tuple[Tensor, Tensor]
    state: Tensor


def unroll(
    chains: Mapping[str, Chain],
    contexts: Mapping[str, Tensor],
    eps: Mapping[str, Tensor],
    state: Mapping[str, Tensor] | None = None,
) -> dict[str, ChainOutput]:
    """Advance the chains together over T frames (a parent before its children, as `chains` orders them).

    contexts[name] (B, T, context_dim), eps[name] (B, T, z_dim) N(0, I) noise (zeros: posterior means),
    state[name] (B, H): the state after the previous frames (None: the start of a sequence).
    Only what depends on the recurrence runs per frame: the posterior's recurrent part, sampling and
    the GRU update. The context parts before the loop and the priors after it are batched over frames.
    """
    first = next(iter(contexts.values()))
    B, T = first.shape[:2]
    a = {n: c.context(contexts[n]).unbind(1) for n, c in chains.items()}  # per frame (B, P): one node, not T slices
    noise = {n: e.unbind(1) for n, e in eps.items()}
    h = {n: state[n] if state is not None else first.new_zeros(B, c.hidden) for n, c in chains.items()}
    hs: dict[str, list[Tensor]] = {n: [] for n in chains}
    zs: dict[str, list[Tensor]] = {n: [] for n in chains}
    means: dict[str, list[Tensor]] = {n: [] for n in chains}
    logvars: dict[str, list[Tensor]] = {n: [] for n in chains}
    for t in range(T):
        z_t: dict[str, Tensor] = {}
        for n, c in chains.items():
            mean, logvar = c.posterior(a[n][t], h[n], z_t[c.parent] if c.parent else None)
            z_t[n] = reparameterize(mean, logvar, noise[n][t])
            hs[n].append(h[n])
            zs[n].append(z_t[n])
            means[n].append(mean)
            logvars[n].append(logvar)
            h[n] = c.cell(z_t[n], h[n])
    out = {}
    for n, c in chains.items():
        h_all = torch.stack(hs[n], 1)  # (B, T, H): the state each frame's prior and posterior saw
        out[n] = ChainOutput(
            torch.stack(zs[n], 1), (torch.stack(means[n], 1), torch.stack(logvars[n], 1)), c.prior(h_all), h[n]
        )
    return out


@torch.no_grad()
def sample_chains(chains: Mapping[str, Chain], B: int, T: int, like: Tensor,
                  generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Ancestral samples of every chain from its dynamical prior -> name -> (B, T, z_dim)."""
    out = {}
    for n, c in chains.items():
        h = like.new_zeros(B, c.hidden)
        zs = []
        for _ in range(T):
            mean, logvar = c.prior(h)
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            zs.append(reparameterize(mean, logvar, noise))
            h = c.cell(zs[-1], h)
        out[n] = torch.stack(zs, 1)
    return out

"""Stage-2 multimodal dynamical VAE (MDVAE) on stage-1 VQ-VAE features.

Generative model for a window of T frames (audio features x_a (T, 512), visual x_v (T, 2048)):
    w ~ N(0, I)                                     static, 84
    z_t^c ~ N(mu_c(g_t^c), sigma_c(g_t^c))          c in {av (16), a (8), v (4)}, g_t^c = GRU(z_{<t}^c)
    x_t^a ~ N(dec_a(w, z_t^av, z_t^a), s_a^2)       Gaussian in the stage-1 feature space
    x_t^v ~ N(dec_v(w, z_t^av, z_t^v), s_v^2)
Likelihood variance s^2: unit (fixed) by default, learned per dimension with `learn_obs_var`.

Inference model:
    q(w | x_{1:T})  bidirectional GRU over [e_a, e_v] (per-frame projections of both modalities)
    q(z_t^av | e_t^a, e_t^v, w, g_t^av)
    q(z_t^a | e_t^a, w, g_t^a, z_t^av),   q(z_t^v | e_t^v, w, g_t^v, z_t^av)
where g_t^c is the same GRU state over the chain's own past samples that parametrises its prior.

Efficiency: only the recurrences run in Python loops over time, and each loop (the static encoder's
bidirectional GRU, the three dynamical chains advanced together) is one autograd node with a
hand-written backward (recurrence.py). Every matrix product that does not depend on a recurrence is
batched over all frames: the input projections, the GRU input transforms, the feature and w parts of
the posterior heads, the priors (from the stored states) and the decoders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avmdvae.errors import ConfigError
from avmdvae.models.config import MDVAEDims
from avmdvae.models.recurrence import bigru_final, chains_loop

LOG_2PI = math.log(2.0 * math.pi)
MDVAE_LATENTS = ("w", "zav", "za", "zv")


class Latents(NamedTuple):
    """MDVAE latents (samples or posterior means)."""

    w: Tensor  # (B, w_dim)
    zav: Tensor  # (B, T, zav_dim)
    za: Tensor  # (B, T, za_dim)
    zv: Tensor  # (B, T, zv_dim)


@dataclass
class SeqVAEOutput:
    """What MDVAE.forward / DSAE.forward return.

    loss: scalar to minimise = (sum of NLLs + kl_weight * sum_k beta_k KL_k) / T, mean over batch
          (a per-frame weighted negative ELBO).
    elbo: scalar, unweighted ELBO per sequence (sum over frames), mean over batch.
    terms: per-sequence (summed over frames and dims, mean over batch) positive terms:
           "rec_<modality>" = Gaussian negative log-likelihood, "kl_<latent>".
    latents: the posterior samples used (Latents or DSAELatents).
    posterior / prior: latent name -> (mean, logvar); shapes as the latent (w's prior is N(0, I)).
    recon (property): modality ("audio" / "visual") -> decoded feature mean (B, T, D), detached; formed
    on demand from the target and the residual mean - x that the loss computes (residuals).
    """

    loss: Tensor
    elbo: Tensor
    terms: dict[str, Tensor]
    latents: NamedTuple
    posterior: dict[str, tuple[Tensor, Tensor]]
    prior: dict[str, tuple[Tensor, Tensor]]
    residuals: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # modality -> (x, mean - x)

    @property
    def recon(self) -> dict[str, Tensor]:
        return {k: (x + r).to(x.dtype) for k, (x, r) in self.residuals.items()}

    def metrics(self) -> dict[str, Tensor]:
        """Detached scalars for logging: loss, elbo and every term."""
        out = {"loss": self.loss.detach(), "elbo": self.elbo.detach()}
        out.update({k: v.detach() for k, v in self.terms.items()})
        return out


MDVAEOutput = SeqVAEOutput


# ---------------------------------------------------------------------------------------------
# Gaussian helpers
# ---------------------------------------------------------------------------------------------
def gaussian_kl(mq: Tensor, lvq: Tensor, mp: Tensor, lvp: Tensor) -> Tensor:
    """Elementwise KL(N(mq, e^lvq) || N(mp, e^lvp)), float32."""
    mq, lvq, mp, lvp = mq.float(), lvq.float(), mp.float(), lvp.float()
    return 0.5 * (lvp - lvq + (lvq.exp() + (mq - mp).pow(2)) * torch.exp(-lvp) - 1.0)


def gaussian_kl_std(mq: Tensor, lvq: Tensor) -> Tensor:
    """Elementwise KL(N(mq, e^lvq) || N(0, 1)), float32."""
    mq, lvq = mq.float(), lvq.float()
    return 0.5 * (lvq.exp() + mq.pow(2) - 1.0 - lvq)


class _HalfSquaredError(torch.autograd.Function):
    """(0.5 * sum(prec * r^2), r) for the residual r = mean - x; prec (D,) broadcasts over the last dim, or None.

    One pass forms r, one BLAS dot reduces it and backward is one multiply. r is returned (not
    differentiable) so that the reconstruction can be formed on demand as x + r.
    """

    @staticmethod
    def forward(ctx, x: Tensor, mean: Tensor, prec: Tensor | None) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        r = mean - x
        wr = r if prec is None else r * prec
        ctx.save_for_backward(wr, r if prec is not None and ctx.needs_input_grad[2] else None)
        ctx.mark_non_differentiable(r)
        ctx.set_materialize_grads(False)  # r gets no gradient: no (N, D) zero tensor for it
        return 0.5 * torch.dot(r.reshape(-1), wr.reshape(-1)), r

    @staticmethod
    def backward(ctx, g: Tensor, _: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        wr, r = ctx.saved_tensors
        d_mean = wr * g
        d_prec = None if r is None else 0.5 * g * r.pow(2).reshape(-1, wr.shape[-1]).sum(0)
        return (-d_mean if ctx.needs_input_grad[0] else None), d_mean, d_prec


class _OutputLayerHalfSquaredError(torch.autograd.Function):
    """A decoder's output layer fused with its squared error: for h (N, K), weight (D, K), bias (D,),
    x (N, D) and prec (D,) or None -> (0.5 * sum(prec * r^2), r) with r = h @ weight.T + bias - x.

    At the reference sizes the visual output is (64 * 30, 2048) per step and each pass over it costs
    3-4 ms on a 2-core machine. Here r is one subtraction and a gemm accumulating into it (no broadcast
    copy of the bias, no separate mean - x), and the backward folds the incoming gradient into the
    (D, K) / (N, K) operands instead of scaling r. Same values as fc2 followed by _HalfSquaredError.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, h: Tensor, weight: Tensor, bias: Tensor, x: Tensor, prec: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        r = torch.sub(bias, x).addmm_(h, weight.t())
        wr = r if prec is None else r * prec
        ctx.save_for_backward(h, weight, wr, r if prec is not None and ctx.needs_input_grad[4] else None)
        ctx.mark_non_differentiable(r)
        ctx.set_materialize_grads(False)  # r gets no gradient: no (N, D) zero tensor for it
        return 0.5 * torch.dot(r.reshape(-1), wr.reshape(-1)), r

    @staticmethod
    def backward(ctx, g: Tensor, _: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        h, weight, wr, r = ctx.saved_tensors
        need = ctx.needs_input_grad
        d_h = wr @ (weight * g) if need[0] else None
        d_w = (wr.t() @ h).mul_(g) if need[1] else None
        d_b = wr.sum(0).mul_(g) if need[2] else None
        d_x = wr * -g if need[3] else None
        d_prec = None if r is None else 0.5 * g * r.pow(2).sum(0)
        return d_h, d_w, d_b, d_x, d_prec


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def decoder_nll(decoder: FrameDecoder, w: Tensor, z: Tensor, x: Tensor, logvar: Tensor | None) -> tuple[Tensor, Tensor]:
    """Gaussian NLL of x (B, T, D) under the mean decoder(w, z) and variance e^logvar -> (the NLL summed
    over all but dim 0 and averaged over dim 0, float32; the residual mean - x (B, T, D), detached).

    logvar (D,) broadcasts over (B, T, D); None = unit variance. Outside autocast the output layer is
    fused with the error (_OutputLayerHalfSquaredError); under autocast it runs in the autocast dtype
    and the error in float32.
    """
    h = decoder.hidden(w, z)
    fc2 = decoder.fc2
    fused = not _autocast_on(x.device.type) and h.dtype == fc2.weight.dtype == x.dtype
    mean = None if fused else fc2(h)
    B, n = x.shape[0], x.numel()
    with torch.autocast(x.device.type, enabled=False):
        prec = None if logvar is None else torch.exp(-logvar.float())
        if mean is None:
            half_sq, r = _OutputLayerHalfSquaredError.apply(
                h.reshape(-1, h.shape[-1]), fc2.weight, fc2.bias, x.reshape(-1, x.shape[-1]), prec
            )
        else:
            half_sq, r = _HalfSquaredError.apply(x.float(), mean.float(), prec)
        const = 0.5 * n * LOG_2PI
        if logvar is not None:
            const = const + 0.5 * (n // logvar.numel()) * logvar.float().sum()
    return (half_sq.float() + const) / B, r.view(x.shape)


def resolve_beta(beta: float | Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    """A float for every KL term or a mapping latent name -> weight (missing names get 1)."""
    if isinstance(beta, Mapping):
        unknown = sorted(set(beta) - set(names))
        if unknown:
            raise ConfigError(f"unknown beta key(s) {', '.join(unknown)}; valid: {', '.join(names)}")
        return {n: float(beta.get(n, 1.0)) for n in names}
    return {n: float(beta) for n in names}


def assemble_elbo(
    nll: dict[str, Tensor], kl: dict[str, Tensor], beta: dict[str, float], kl_weight: float, T: int
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Per-sequence sums (B,) or their batch means (scalars) -> (loss, elbo, terms); see SeqVAEOutput."""
    terms = {f"rec_{k}": v.mean() for k, v in nll.items()}
    terms.update({f"kl_{k}": v.mean() for k, v in kl.items()})
    rec = sum(terms[f"rec_{k}"] for k in nll)
    kls = sum(terms[f"kl_{k}"] for k in kl)
    weighted = sum(beta[k] * terms[f"kl_{k}"] for k in kl)
    loss = (rec + kl_weight * weighted) / T
    return loss, -(rec + kls), terms  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Building blocks (shared with dsae.py)
# ---------------------------------------------------------------------------------------------
class GaussianHead(nn.Module):
    """x (..., in) -> tanh(fc1) -> fc2 -> (mean, logvar), each (..., out)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, 2 * out_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.fc2(torch.tanh(self.fc1(x))).chunk(2, -1)
        return mean, logvar


class FeatureProjection(nn.Module):
    """Per-frame input projection of a stage-1 feature: (..., D) -> tanh(Linear) (..., P)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.fc(x))


class StaticEncoder(nn.Module):
    """q(w | e_{1:T}): bidirectional GRU, final states of both directions -> Gaussian head (linear).

    The GRU's parameters live in an nn.GRU (its state-dict names); the recurrence runs in `bigru_final`.
    """

    def __init__(self, in_dim: int, hidden: int, w_dim: int) -> None:
        super().__init__()
        self.gru = nn.GRU(in_dim, hidden, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 2 * w_dim)

    def forward(self, e: Tensor) -> tuple[Tensor, Tensor]:
        """e (B, T, in) -> (mean, logvar) each (B, w_dim)."""
        h_n = bigru_final(e, self.gru)  # (2, B, H)
        mean, logvar = self.head(torch.cat([h_n[0], h_n[1]], -1)).chunk(2, -1)
        return mean, logvar


class FrameDecoder(nn.Module):
    """Per-frame decoder [w, z_t] -> tanh(fc1) -> fc2 -> feature mean (D).

    fc1's input is the concatenation [w, z]; the w part is computed once per sequence.
    """

    def __init__(self, w_dim: int, z_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.w_dim = w_dim
        self.fc1 = nn.Linear(w_dim + z_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def hidden(self, w: Tensor, z: Tensor) -> Tensor:
        """w (B, Dw), z (B, T, Dz) -> hidden layer (B, T, hidden)."""
        wpart = F.linear(w, self.fc1.weight[:, : self.w_dim], self.fc1.bias)  # (B, hidden)
        return torch.tanh(F.linear(z, self.fc1.weight[:, self.w_dim :]) + wpart[:, None])

    def forward(self, w: Tensor, z: Tensor) -> Tensor:
        """w (B, Dw), z (B, T, Dz) -> (B, T, out)."""
        return self.fc2(self.hidden(w, z))


@dataclass(frozen=True)
class ChainSpec:
    """One dynamical latent chain. parent: index of the chain whose z_t this one's posterior sees."""

    name: str
    z_dim: int
    feat_dim: int  # size of the per-frame features its posterior sees
    parent: int | None = None


@dataclass
class ChainsResult:
    """Per chain (in spec order), batch-first: z, posterior and prior parameters (B, T, z_dim)."""

    z: list[Tensor]
    post_mean: list[Tensor]
    post_logvar: list[Tensor]
    prior_mean: list[Tensor]
    prior_logvar: list[Tensor]
    # (h (C, B, H), z_prev (C, B, z_max)) after the last frame: pass it as `state` to continue the
    # chains on the next frames (chunked inference of long clips gives the one-pass result).
    state: tuple[Tensor, Tensor] | None = None


class DynamicalChains(nn.Module):
    """Dynamical latents with GRU priors over their own past samples and causal posteriors.

    Chain 0 is the root (no parent); every other chain has parent 0 (or the chain list has one chain).
    Per chain c: cells[c] = GRUCell(z_dim, hidden) with g_t = cell(z_{t-1}, g_{t-1}), g_0 = 0, z_0 = 0;
    post[c] = GaussianHead over [feat_t, w, g_t, (z_t^parent)]; prior[c] = GaussianHead over g_t.
    """

    def __init__(
        self, specs: Sequence[ChainSpec], w_dim: int, hidden: int, post_hidden: int, prior_hidden: int
    ) -> None:
        super().__init__()
        if specs[0].parent is not None or any(s.parent != 0 for s in specs[1:]):
            raise ValueError("DynamicalChains supports one root chain (0) with children of chain 0")
        self.specs = list(specs)
        self.w_dim, self.hidden, self.post_hidden = w_dim, hidden, post_hidden
        self.z_max = max(s.z_dim for s in specs)
        self.cells = nn.ModuleList(nn.GRUCell(s.z_dim, hidden) for s in specs)
        self.post = nn.ModuleList(
            GaussianHead(
                s.feat_dim + w_dim + hidden + (specs[0].z_dim if s.parent is not None else 0),
                post_hidden,
                s.z_dim,
            )
            for s in specs
        )
        self.prior = nn.ModuleList(GaussianHead(hidden, prior_hidden, s.z_dim) for s in specs)

    # ---- fused weights (rebuilt from the per-chain modules at each call; differentiable) -------
    def _pad_rows(self, x: Tensor, n: int) -> Tensor:
        return F.pad(x, (0, 0, 0, n - x.shape[0])) if x.shape[0] < n else x

    def _pad_gauss_out(self, lin: nn.Linear) -> tuple[Tensor, Tensor]:
        """fc2 of a head (2z, P) -> transposed weight (P, 2*z_max) and bias (2*z_max,), each half zero padded."""
        z, zm = lin.out_features // 2, self.z_max
        if z == zm:
            return lin.weight.t(), lin.bias
        # one pad of the (mean | logvar) halves seen as a leading dim: one autograd node, not slices and cats
        w = F.pad(lin.weight.view(2, z, -1), (0, 0, 0, zm - z)).view(2 * zm, -1)
        b = F.pad(lin.bias.view(2, z), (0, zm - z)).view(2 * zm)
        return w.t(), b

    def forward(
        self,
        feats: Sequence[Tensor],
        w: Tensor,
        eps: Sequence[Tensor],
        state: tuple[Tensor, Tensor] | None = None,
    ) -> ChainsResult:
        """feats[c] (B, T, feat_dim_c); w (B, w_dim); eps[c] (B, T, z_dim_c) N(0,1) noise.

        state: ChainsResult.state of the previous frames (None: start of the sequence).
        """
        specs, C, H, Zm, Dw = self.specs, len(self.specs), self.hidden, self.z_max, self.w_dim
        B, T = feats[0].shape[:2]
        K = C - 1
        Z0 = specs[0].z_dim
        # Everything that does not depend on the recurrence is built here under autograd, batched over
        # frames; the time loop itself is one autograd node with a hand-written backward (recurrence.py).
        # the posterior fc1 weights' column blocks [features | w | state | root z (children)]: one split
        # each (one autograd node whose backward is one cat, where slices would each fill a zero weight)
        fc1 = [
            p.fc1.weight.split([s.feat_dim, Dw, H, p.fc1.in_features - s.feat_dim - Dw - H], 1)
            for p, s in zip(self.post, specs, strict=True)
        ]
        # posterior fc1 contributions of the frame features and w, for all frames, time-major: (C, T, B, P)
        a = torch.stack(
            [
                (F.linear(feats[c], fc1[c][0]) + F.linear(w, fc1[c][1], self.post[c].fc1.bias)[:, None]).transpose(0, 1)
                for c in range(C)
            ]
        )
        # the GRUs' weights and biases packed as (C, H + Zm + 1, 4H), columns [gh_n | r, u | gi_n]: rows :H
        # state weights (columns :3H), rows H:H+Zm input weights (columns H:), last row the biases
        w_hh = torch.stack([cell.weight_hh.t() for cell in self.cells])  # (C, H, 3H) columns r, u, n
        w_ih = torch.stack([self._pad_rows(cell.weight_ih.t(), Zm) for cell in self.cells])  # (C, Zm, 3H)
        b_ih = torch.stack([cell.bias_ih for cell in self.cells])[:, None]  # (C, 1, 3H)
        b_hh = torch.stack([cell.bias_hh for cell in self.cells])[:, None]
        w_big = torch.cat(
            [
                F.pad(torch.cat([w_hh[..., 2 * H :], w_hh[..., : 2 * H]], -1), (0, H)),
                F.pad(w_ih, (H, 0)),
                torch.cat([b_hh[..., 2 * H :], b_ih[..., : 2 * H] + b_hh[..., : 2 * H], b_ih[..., 2 * H :]], -1),
            ],
            1,
        )
        # state columns of the posterior fc1: (C, H, P)
        w_ph = torch.stack([fc1[c][2].t() for c in range(C)])
        root_out = self.post[0].fc2
        w_pz = w_ko = b_ko = None
        if K:
            # children see z_t^root: (Z0, K*P); their output layers padded to z_max: (K, P, 2Zm)
            w_pz = torch.cat([fc1[c][3] for c in range(1, C)], 0).t()
            outs = [self._pad_gauss_out(self.post[c].fc2) for c in range(1, C)]
            w_ko = torch.stack([o[0] for o in outs])
            b_ko = torch.stack([o[1] for o in outs])[:, None]
        eps_all = torch.stack([F.pad(e.transpose(0, 1), (0, Zm - s.z_dim)) for e, s in zip(eps, specs, strict=True)])

        if state is None:
            hz0 = a.new_zeros(C, B, H + Zm)
        else:  # continue a sequence: the state after the previous chunk's last frame
            hz0 = torch.cat(state, -1)
        # hs (C, T, B, H), zs (C, T, B, Zm), o_root (T, B, 2Z0), o_kid (K, T, B, 2Zm)
        hs, zs, o_root, o_kid = chains_loop(
            a, eps_all, hz0, w_big, w_ph, root_out.weight, root_out.bias, w_pz, w_ko, b_ko
        )

        # priors from the stored states, batched over time and chains: (C, T*B, 2Zm)
        hs_all = hs.reshape(C, T * B, H)
        w_p1 = torch.stack([p.fc1.weight.t() for p in self.prior])
        b_p1 = torch.stack([p.fc1.bias for p in self.prior])[:, None]
        pouts = [self._pad_gauss_out(p.fc2) for p in self.prior]
        w_p2 = torch.stack([o[0] for o in pouts])
        b_p2 = torch.stack([o[1] for o in pouts])[:, None]
        prior = torch.baddbmm(b_p2, torch.tanh(torch.baddbmm(b_p1, hs_all, w_p1)), w_p2).view(C, T, B, 2 * Zm)

        res = ChainsResult([], [], [], [], [], state=(hs[:, -1], zs[:, -1]))
        for c, s in enumerate(specs):
            z = s.z_dim
            res.z.append(zs[c].transpose(0, 1)[..., :z])  # (B, T, z)
            if c:
                o = o_kid[c - 1].transpose(0, 1)  # (B, T, 2Zm)
                res.post_mean.append(o[..., :z])
                res.post_logvar.append(o[..., Zm : Zm + z])
            else:
                o = o_root.transpose(0, 1)  # (B, T, 2Z0)
                res.post_mean.append(o[..., :Z0])
                res.post_logvar.append(o[..., Z0:])
            pc = prior[c].transpose(0, 1)  # (B, T, 2Zm)
            res.prior_mean.append(pc[..., :z])
            res.prior_logvar.append(pc[..., Zm : Zm + z])
        return res

    @torch.no_grad()
    def sample_prior(
        self, batch: int, T: int, device: torch.device | None = None, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """Ancestral samples of every chain from its dynamical prior -> list of (B, T, z_dim)."""
        out = []
        for cell, prior in zip(self.cells, self.prior, strict=True):
            h = torch.zeros(batch, self.hidden, device=device)
            z = torch.zeros(batch, cell.input_size, device=device)
            zs = []
            for _ in range(T):
                h = cell(z, h)
                mean, logvar = prior(h)
                noise = torch.randn(mean.shape, generator=generator, device=device)
                z = mean + torch.exp(0.5 * logvar) * noise
                zs.append(z)
            out.append(torch.stack(zs, 1))
        return out


def draw_noise(
    noise: Mapping[str, Tensor] | None, name: str, shape: tuple[int, ...], like: Tensor, sample: bool = True
) -> Tensor:
    """noise[name] if given (checked against shape), else N(0, 1) (or zeros when not sampling)."""
    if noise is not None and name in noise:
        n = noise[name]
        if tuple(n.shape) != shape:
            raise ValueError(f"noise[{name!r}] has shape {tuple(n.shape)}, expected {shape}")
        return n.to(device=like.device, dtype=torch.float32)
    if not sample:
        return torch.zeros(shape, device=like.device)
    return torch.randn(shape, device=like.device)


def check_seq(x: Tensor, dim: int, name: str) -> None:
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ConfigError(f"{name} must have shape (B, T, {dim}); got {tuple(x.shape)}: check the stage-1 model")


# ---------------------------------------------------------------------------------------------
# MDVAE
# ---------------------------------------------------------------------------------------------
class MDVAE(nn.Module):
    """Multimodal dynamical VAE. See the module docstring for the model."""

    def __init__(self, dims: MDVAEDims | None = None) -> None:
        super().__init__()
        self.dims = d = dims or MDVAEDims()
        self.proj_a = FeatureProjection(d.feat_a, d.proj_a)
        self.proj_v = FeatureProjection(d.feat_v, d.proj_v)
        self.static = StaticEncoder(d.proj_a + d.proj_v, d.w_hidden, d.w_dim)
        self.chains = DynamicalChains(
            [
                ChainSpec("zav", d.zav_dim, d.proj_a + d.proj_v),
                ChainSpec("za", d.za_dim, d.proj_a, parent=0),
                ChainSpec("zv", d.zv_dim, d.proj_v, parent=0),
            ],
            d.w_dim,
            d.chain_hidden,
            d.post_hidden,
            d.prior_hidden,
        )
        self.dec_a = FrameDecoder(d.w_dim, d.zav_dim + d.za_dim, d.dec_hidden_a, d.feat_a)
        self.dec_v = FrameDecoder(d.w_dim, d.zav_dim + d.zv_dim, d.dec_hidden_v, d.feat_v)
        if d.learn_obs_var:
            self.obs_logvar_a = nn.Parameter(torch.zeros(d.feat_a))
            self.obs_logvar_v = nn.Parameter(torch.zeros(d.feat_v))
        else:
            self.register_buffer("obs_logvar_a", torch.zeros(d.feat_a), persistent=False)
            self.register_buffer("obs_logvar_v", torch.zeros(d.feat_v), persistent=False)

    def _infer(self, xa: Tensor, xv: Tensor, noise: Mapping[str, Tensor] | None, sample: bool):
        d = self.dims
        check_seq(xa, d.feat_a, "audio features")
        check_seq(xv, d.feat_v, "visual features")
        if xa.shape[:2] != xv.shape[:2]:
            raise ConfigError(f"audio {tuple(xa.shape[:2])} and visual {tuple(xv.shape[:2])} windows differ")
        B, T = xa.shape[:2]
        ea = self.proj_a(xa)  # (B, T, Pa)
        ev = self.proj_v(xv)  # (B, T, Pv)
        eav = torch.cat([ea, ev], -1)  # (B, T, Pa + Pv)
        w_mean, w_logvar = self.static(eav)
        w = w_mean + torch.exp(0.5 * w_logvar) * draw_noise(noise, "w", (B, d.w_dim), xa, sample)
        eps = [
            draw_noise(noise, n, (B, T, z), xa, sample)
            for n, z in (("zav", d.zav_dim), ("za", d.za_dim), ("zv", d.zv_dim))
        ]
        ch = self.chains([eav, ea, ev], w, eps)
        return w, w_mean, w_logvar, ch

    def forward(
        self,
        xa: Tensor,
        xv: Tensor,
        beta: float | Mapping[str, float] = 1.0,
        kl_weight: float = 1.0,
        noise: Mapping[str, Tensor] | None = None,
    ) -> SeqVAEOutput:
        """xa (B, T, feat_a), xv (B, T, feat_v) stage-1 features -> SeqVAEOutput.

        beta: weight of every KL term, or {"w", "zav", "za", "zv"} -> weight. kl_weight: warm-up factor
        multiplying all KL terms. noise: optional reparameterisation noise {"w": (B, w_dim),
        "zav": (B, T, 16), "za": (B, T, 8), "zv": (B, T, 4)} (missing entries drawn N(0, 1)).
        """
        d = self.dims
        betas = resolve_beta(beta, MDVAE_LATENTS)
        w, w_mean, w_logvar, ch = self._infer(xa, xv, noise, sample=True)
        zav, za, zv = ch.z
        nll_a, res_a = decoder_nll(
            self.dec_a, w, torch.cat([zav, za], -1), xa, self.obs_logvar_a if d.learn_obs_var else None
        )
        nll_v, res_v = decoder_nll(
            self.dec_v, w, torch.cat([zav, zv], -1), xv, self.obs_logvar_v if d.learn_obs_var else None
        )
        nll = {"audio": nll_a, "visual": nll_v}
        kl = {"w": gaussian_kl_std(w_mean, w_logvar).sum(1)}
        for i, name in enumerate(MDVAE_LATENTS[1:]):
            kl[name] = gaussian_kl(ch.post_mean[i], ch.post_logvar[i], ch.prior_mean[i], ch.prior_logvar[i]).sum((1, 2))
        loss, elbo, terms = assemble_elbo(nll, kl, betas, kl_weight, xa.shape[1])
        posterior = {"w": (w_mean, w_logvar)}
        prior = {"w": (torch.zeros_like(w_mean), torch.zeros_like(w_logvar))}
        for i, name in enumerate(MDVAE_LATENTS[1:]):
            posterior[name] = (ch.post_mean[i], ch.post_logvar[i])
            prior[name] = (ch.prior_mean[i], ch.prior_logvar[i])
        return SeqVAEOutput(
            loss,
            elbo,
            terms,
            Latents(w, zav, za, zv),
            posterior,
            prior,
            {"audio": (xa, res_a), "visual": (xv, res_v)},
        )

    def encode(
        self, xa: Tensor, xv: Tensor, sample: bool = False, noise: Mapping[str, Tensor] | None = None
    ) -> Latents:
        """Latents of (B, T, feat) windows. sample=False: posterior means (each chain is fed its means)."""
        w, _, _, ch = self._infer(xa, xv, noise, sample)
        return Latents(w, *ch.z)

    def decode(self, latents: Latents) -> tuple[Tensor, Tensor]:
        """Latents -> (xa_mean (B, T, feat_a), xv_mean (B, T, feat_v)) in the stage-1 feature space."""
        w, zav, za, zv = latents
        return self.dec_a(w, torch.cat([zav, za], -1)), self.dec_v(w, torch.cat([zav, zv], -1))

    @torch.no_grad()
    def sample_prior(
        self, batch: int, T: int, w: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Latents:
        """Latents drawn from the generative model (w from N(0, I) unless given)."""
        dev = self.obs_logvar_a.device
        if w is None:
            w = torch.randn(batch, self.dims.w_dim, generator=generator, device=dev)
        zav, za, zv = self.chains.sample_prior(batch, T, dev, generator)
        return Latents(w, zav, za, zv)

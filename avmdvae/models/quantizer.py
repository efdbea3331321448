"""EMA vector quantiser with dead-code restart (the bottleneck of both VQ-VAEs).

The codebook is not trained by gradients: each training step moves every code towards the mean of
the encoder outputs assigned to it with an exponential moving average (decay 0.99). The encoder gets
the commitment loss 0.25 * ||z_e - sg(e)||^2 and the decoder's gradient through a straight-through
estimator. A code with no assignment for `dead_after` consecutive steps is restarted on a random
current encoder output. Under torch.distributed the per-step statistics are summed over ranks and
restarts/initialisation are broadcast from rank 0, so every rank keeps the same codebook.

Layout: any (B, D, *spatial) tensor; codes come back as (B, *spatial).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_DECAY = 0.99
DEFAULT_COMMITMENT = 0.25


class QuantizeResult(NamedTuple):
    z_q: Tensor  # (B, D, *spatial) quantised vectors with straight-through gradient to z_e
    codes: Tensor  # (B, *spatial) int64 indices
    commit_loss: Tensor  # scalar: commitment * mean ||z_e - sg(e)||^2
    perplexity: Tensor  # scalar: exp(entropy of the code histogram of this batch)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizer(nn.Module):
    """Codebook of `n_codes` vectors of size `dim` with EMA updates.

    Buffers (all in the state dict): codebook (K, D), cluster_size (K,), embed_sum (K, D),
    unused_steps (K,) consecutive training steps without assignment, initialised (bool).
    """

    def __init__(
        self,
        n_codes: int,
        dim: int,
        decay: float = DEFAULT_DECAY,
        commitment: float = DEFAULT_COMMITMENT,
        dead_after: int = 200,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.n_codes, self.dim = n_codes, dim
        self.decay, self.commitment, self.dead_after, self.eps = decay, commitment, dead_after, eps
        init = torch.randn(n_codes, dim)
        self.register_buffer("codebook", init)
        self.register_buffer("cluster_size", torch.ones(n_codes))
        self.register_buffer("embed_sum", init.clone())
        self.register_buffer("unused_steps", torch.zeros(n_codes, dtype=torch.long))
        self.register_buffer("initialised", torch.tensor(False))
        self.last_counts: Tensor | None = None  # code histogram of the last batch (for logging)
        self.last_restarts: int = 0  # codes restarted by the last training step

    @staticmethod
    def usage(codes: Tensor, n_codes: int) -> Tensor:
        """Fraction of the codebook used by `codes` (any shape) -> scalar tensor."""
        counts = torch.bincount(codes.reshape(-1), minlength=n_codes)
        return (counts > 0).float().mean()

    # ---- layout helpers ----------------------------------------------------------------------
    @staticmethod
    def _flatten(z: Tensor) -> Tensor:
        """(B, D, *S) -> (B * prod(S), D)."""
        return z.movedim(1, -1).reshape(-1, z.shape[1])

    def lookup(self, codes: Tensor) -> Tensor:
        """codes (B, *S) -> vectors (B, D, *S)."""
        return F.embedding(codes, self.codebook).movedim(-1, 1)

    def nearest(self, flat: Tensor) -> Tensor:
        """flat (N, D) -> code indices (N,) by squared Euclidean distance."""
        cb = self.codebook
        dist2 = (flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ cb.t()) + cb.pow(2).sum(1)[None]
        return dist2.argmin(1)

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, z_e: Tensor, update: bool | None = None) -> QuantizeResult:
        """Quantise z_e (B, D, *S). EMA/restart updates happen when `update` (default: self.training)."""
        if z_e.shape[1] != self.dim:
            raise ValueError(f"quantizer expects {self.dim} channels in dim 1, got shape {tuple(z_e.shape)}")
        update = self.training if update is None else update
        with torch.autocast(z_e.device.type, enabled=False):
            z = z_e.float()
            flat = self._flatten(z)
            if update and not bool(self.initialised):
                self._init_from(flat.detach())
            codes_flat = self.nearest(flat.detach())
            onehot_counts = torch.bincount(codes_flat, minlength=self.n_codes).to(flat.dtype)
            if update:
                self._ema_update(flat.detach(), codes_flat, onehot_counts)
            q_flat = F.embedding(codes_flat, self.codebook)
            commit = self.commitment * F.mse_loss(flat, q_flat.detach())
            # straight-through: forward value = code vector, gradient flows to z_e unchanged
            q_flat = flat + (q_flat - flat).detach()
            spatial = z.shape[2:]
            z_q = q_flat.reshape(z.shape[0], *spatial, self.dim).movedim(-1, 1)
            codes = codes_flat.reshape(z.shape[0], *spatial)
            probs = onehot_counts / onehot_counts.sum().clamp_min(1.0)
            perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
            self.last_counts = onehot_counts.detach()
        return QuantizeResult(z_q.to(z_e.dtype), codes, commit, perplexity)

    # ---- EMA machinery -----------------------------------------------------------------------
    @torch.no_grad()
    def _random_rows(self, flat: Tensor, n: int) -> Tensor:
        """n random rows of flat (repeated with jitter if flat has fewer rows), same on all ranks."""
        idx = torch.randint(0, flat.shape[0], (n,), device=flat.device)
        rows = flat[idx].clone()
        if flat.shape[0] < n:
            rows += 0.01 * rows.std().clamp_min(1e-3) * torch.randn_like(rows)
        if _distributed():
            dist.broadcast(rows, src=0)
        return rows

    @torch.no_grad()
    def _init_from(self, flat: Tensor) -> None:
        rows = self._random_rows(flat, self.n_codes)
        self.codebook.copy_(rows)
        self.embed_sum.copy_(rows)
        self.cluster_size.fill_(1.0)
        self.unused_steps.zero_()
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, codes: Tensor, counts: Tensor) -> None:
        sums = torch.zeros(self.n_codes, self.dim, device=flat.device, dtype=flat.dtype)
        sums.index_add_(0, codes, flat)
        counts = counts.clone()
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.n_codes * self.eps) * n
        self.codebook.copy_(self.embed_sum / smoothed[:, None])
        used = counts > 0
        self.unused_steps.add_(1).masked_fill_(used, 0)
        dead = self.unused_steps >= self.dead_after
        n_dead = int(dead.sum())
        self.last_restarts = n_dead
        if n_dead:
            rows = self._random_rows(flat, n_dead)
            self.codebook[dead] = rows
            self.embed_sum[dead] = rows
            self.cluster_size[dead] = 1.0
            self.unused_steps[dead] = 0

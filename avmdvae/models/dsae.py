"""VQ-DSAE baselines (audio-only / visual-only): static w + one dynamical latent z.

Same framework as the MDVAE (mdvae.py building blocks): per-frame projection e_t of the stage-1
feature, q(w | e_{1:T}) by a bidirectional GRU, one dynamical chain z_t with a GRU prior over its
past samples and posterior q(z_t | e_t, w, g_t), decoder [w, z_t] -> Gaussian mean in feature space.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from avmdvae.errors import ConfigError
from avmdvae.models.config import DSAEDims
from avmdvae.models.mdvae import (
    ChainSpec,
    DynamicalChains,
    FeatureProjection,
    FrameDecoder,
    SeqVAEOutput,
    StaticEncoder,
    assemble_elbo,
    check_seq,
    decoder_nll,
    draw_noise,
    gaussian_kl,
    gaussian_kl_std,
    resolve_beta,
)

DSAE_LATENTS = ("w", "z")
MODALITIES = ("audio", "visual")


class DSAELatents(NamedTuple):
    w: Tensor  # (B, w_dim)
    z: Tensor  # (B, T, z_dim)


class DSAE(nn.Module):
    """Unimodal dynamical VAE baseline for `modality` ("audio" or "visual")."""

    def __init__(self, dims: DSAEDims | None = None, modality: str = "audio") -> None:
        super().__init__()
        if modality not in MODALITIES:
            raise ConfigError(f"unknown modality {modality!r}; use 'audio' or 'visual'")
        self.modality = modality
        self.dims = d = dims or DSAEDims.for_modality(modality)
        self.z_dim = z = d.resolved_z_dim(modality)
        self.proj = FeatureProjection(d.feat, d.proj)
        self.static = StaticEncoder(d.proj, d.w_hidden, d.w_dim)
        self.chains = DynamicalChains(
            [ChainSpec("z", z, d.proj)], d.w_dim, d.chain_hidden, d.post_hidden, d.prior_hidden
        )
        self.dec = FrameDecoder(d.w_dim, z, d.dec_hidden, d.feat)
        if d.learn_obs_var:
            self.obs_logvar = nn.Parameter(torch.zeros(d.feat))
        else:
            self.register_buffer("obs_logvar", torch.zeros(d.feat), persistent=False)

    def _infer(self, x: Tensor, noise: Mapping[str, Tensor] | None, sample: bool):
        check_seq(x, self.dims.feat, f"{self.modality} features")
        B, T = x.shape[:2]
        e = self.proj(x)  # (B, T, P)
        w_mean, w_logvar = self.static(e)
        w = w_mean + torch.exp(0.5 * w_logvar) * draw_noise(noise, "w", (B, self.dims.w_dim), x, sample)
        eps = draw_noise(noise, "z", (B, T, self.z_dim), x, sample)
        return w, w_mean, w_logvar, self.chains([e], w, [eps])

    def forward(
        self,
        x: Tensor,
        beta: float | Mapping[str, float] = 1.0,
        kl_weight: float = 1.0,
        noise: Mapping[str, Tensor] | None = None,
    ) -> SeqVAEOutput:
        """x (B, T, feat) -> SeqVAEOutput with terms rec_<modality>, kl_w, kl_z (see MDVAE.forward)."""
        betas = resolve_beta(beta, DSAE_LATENTS)
        w, w_mean, w_logvar, ch = self._infer(x, noise, sample=True)
        z = ch.z[0]
        nll_x, res = decoder_nll(self.dec, w, z, x, self.obs_logvar if self.dims.learn_obs_var else None)
        nll = {self.modality: nll_x}
        kl = {
            "w": gaussian_kl_std(w_mean, w_logvar).sum(1),
            "z": gaussian_kl(ch.post_mean[0], ch.post_logvar[0], ch.prior_mean[0], ch.prior_logvar[0]).sum((1, 2)),
        }
        loss, elbo, terms = assemble_elbo(nll, kl, betas, kl_weight, x.shape[1])
        return SeqVAEOutput(
            loss,
            elbo,
            terms,
            DSAELatents(w, z),
            {"w": (w_mean, w_logvar), "z": (ch.post_mean[0], ch.post_logvar[0])},
            {
                "w": (torch.zeros_like(w_mean), torch.zeros_like(w_logvar)),
                "z": (ch.prior_mean[0], ch.prior_logvar[0]),
            },
            {self.modality: (x, res)},
        )

    def encode(self, x: Tensor, sample: bool = False, noise: Mapping[str, Tensor] | None = None) -> DSAELatents:
        w, _, _, ch = self._infer(x, noise, sample)
        return DSAELatents(w, ch.z[0])

    def decode(self, latents: DSAELatents) -> Tensor:
        """-> feature mean (B, T, feat)."""
        return self.dec(latents.w, latents.z)

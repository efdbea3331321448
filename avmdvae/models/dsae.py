"""VQ-DSAE baselines (audio-only / visual-only): a static w and one dynamical latent z.

The MDVAE's framework (seqvae.py, layers.py) on one modality: per-frame embedding e_t of the
standardised stage-1 feature, q(w | e_{1:T}) by a bidirectional GRU, one chain z_t with a GRU prior over
its past samples and posterior q(z_t | e_t, w, h_t), decoder [w, z_t] -> Gaussian mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from avmdvae.constants import MODALITIES
from avmdvae.errors import ConfigError
from avmdvae.models.config import DSAEDims
from avmdvae.models.layers import Chain, Standardize, StaticEncoder, mlp, mlp_out
from avmdvae.models.seqvae import SequenceVAE


class DSAELatents(NamedTuple):
    w: Tensor  # (B, w_dim), or per frame (B, T, w_dim) for decoding
    z: Tensor  # (B, T, z_dim)


class DSAE(SequenceVAE):
    """Unimodal dynamical VAE baseline for `modality` ("audio" or "visual"); API as MDVAE's."""

    Latents = DSAELatents

    def __init__(self, dims: DSAEDims | None = None, modality: str = "audio") -> None:
        super().__init__()
        if modality not in MODALITIES:
            raise ConfigError(f"unknown modality {modality!r}; use 'audio' or 'visual'")
        self.modality = modality
        self.modalities = (modality,)
        self.dims = d = dims or DSAEDims.for_modality(modality)
        self.w_dim, self.seq_len = d.w_dim, d.seq_len
        self.z_dim = z = d.resolved_z_dim(modality)
        e = mlp_out(d.feat, d.proj)
        self.norm = nn.ModuleDict({modality: Standardize(d.feat)})
        self.embed = nn.ModuleDict({modality: mlp(d.feat, d.proj)})
        self.q_w = StaticEncoder(e, d.w_hidden, d.w_head, d.w_dim)
        self.chains = nn.ModuleDict({"z": Chain(z, e + d.w_dim, 0, d.chain_hidden, d.post_hidden, d.prior_hidden)})
        self.decoders = nn.ModuleDict({modality: mlp(d.w_dim + z, d.dec_hidden, d.feat)})
        self._init_likelihood({modality: d.feat}, d.learn_obs_var)

    def contexts(self, e: Mapping[str, Tensor], w: Tensor) -> dict[str, Tensor]:
        return {"z": torch.cat([e[self.modality], w], -1)}

    def decoder_inputs(self, w: Tensor, z: dict[str, Tensor]) -> dict[str, Tensor]:
        return {self.modality: torch.cat([w, z["z"]], -1)}

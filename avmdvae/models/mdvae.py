"""Stage-2 multimodal dynamical VAE (MDVAE, Sadok et al. 2024) on stage-1 VQ-VAE features.

Generative model of a sequence of T frames, audio features x^a_t and visual features x^v_t
(standardised per dimension with training-set statistics):

    w ~ N(0, I)                                          static: speaker, global emotion      (84)
    z^c_t ~ N(prior_c(h^c_t)),  h^c_{t+1} = GRU_c(z^c_t, h^c_t),  h^c_1 = 0,  c in {av, a, v}
                                                         (dynamic_prior false: z^c_t ~ N(0, I))
                                                         z^av: lips, formants (16)  z^a: pitch (8)
                                                         z^v: eyes, head (4)
    x^a_t ~ N(dec_a(w, z^av_t, z^a_t), s_a^2)            s^2 = 1, or learned per dim (learn_obs_var)
    x^v_t ~ N(dec_v(w, z^av_t, z^v_t), s_v^2)            dec: an MLP over [w, z's] (decoder_z "centred-za" /
                                                         "centred-za-zv" / "centred": z^a / z^a and z^v /
                                                         every z enters the decoders minus its mean over
                                                         the T frames)

Inference model, with per-frame embeddings e^a_t = proj_a(x^a_t) and e^v_t = proj_v(x^v_t):

    q(w | x_{1:T})                        bidirectional GRU over [e^a_t, e^v_t], final states -> Gaussian
    q(z^av_t | e^a_t, e^v_t, w, h^av_t)
    q(z^a_t  | e^a_t, w, h^a_t, z^av_t)   (za_band k: e^a_t replaced by b_t = proj_b(x^a_t's k lowest
                                          frequency positions), the band where f0's harmonics are resolved)
    q(z^v_t  | e^v_t, w, h^v_t, z^av_t)

where h^c_t is the same GRU state over the chain's own past samples that parametrises its prior. The
loss is the negative ELBO (sum over frames, KL terms weighted by beta and the warm-up factor), divided by
T; seqvae.py holds it, together with whole-clip inference (`encode_sequence`) and `decode`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from avmdvae.models.config import DECODER_Z, MDVAEDims
from avmdvae.models.layers import Chain, Standardize, StaticEncoder, mlp, mlp_out
from avmdvae.models.seqvae import SequenceVAE, SeqVAEOutput

MDVAEOutput = SeqVAEOutput


class Latents(NamedTuple):
    """MDVAE latents (samples or posterior means)."""

    w: Tensor  # (B, w_dim), or per frame (B, T, w_dim) for decoding
    zav: Tensor  # (B, T, zav_dim)
    za: Tensor  # (B, T, za_dim)
    zv: Tensor  # (B, T, zv_dim)


class MDVAE(SequenceVAE):
    """Multimodal dynamical VAE. See the module docstring for the model.

        out = model(xa, xv)                     # xa (B, T, feat_a), xv (B, T, feat_v) -> SeqVAEOutput
        lat = model.encode_sequence(xa, xv)     # whole clips (B, N, .) -> Latents of posterior means
        xa_hat, xv_hat = model.decode(lat)      # -> (B, N, feat_a), (B, N, feat_v)
    """

    modalities = ("audio", "visual")
    Latents = Latents

    def __init__(self, dims: MDVAEDims | None = None) -> None:
        super().__init__()
        self.dims = d = dims or MDVAEDims()
        self.w_dim, self.seq_len = d.w_dim, d.seq_len
        self.centred = DECODER_Z[d.decoder_z]
        self.norm = nn.ModuleDict({"audio": Standardize(d.feat_a), "visual": Standardize(d.feat_v)})
        self.embed = nn.ModuleDict({"audio": mlp(d.feat_a, d.proj_a), "visual": mlp(d.feat_v, d.proj_v)})
        ea, ev = mlp_out(d.feat_a, d.proj_a), mlp_out(d.feat_v, d.proj_v)
        band = d.feat_a // d.audio_positions * d.za_band  # (channels x k positions) of the audio feature
        self.band = mlp(band, d.proj_a) if d.za_band else None
        eb = mlp_out(band, d.proj_a) if d.za_band else ea

        self.q_w = StaticEncoder(ea + ev, d.w_hidden, d.w_head, d.w_dim)
        H, post, prior = d.chain_hidden, d.post_hidden, d.prior_hidden
        self.chains = nn.ModuleDict({
            "zav": Chain(d.zav_dim, ea + ev + d.w_dim, 0, H, post, prior, dynamic_prior=d.dynamic_prior),
            "za": Chain(d.za_dim, eb + d.w_dim, d.zav_dim, H, post, prior, "zav", d.dynamic_prior),
            "zv": Chain(d.zv_dim, ev + d.w_dim, d.zav_dim, H, post, prior, "zav", d.dynamic_prior),
        })
        self.decoders = nn.ModuleDict({
            "audio": mlp(d.w_dim + d.zav_dim + d.za_dim, d.dec_hidden_a, d.feat_a),
            "visual": mlp(d.w_dim + d.zav_dim + d.zv_dim, d.dec_hidden_v, d.feat_v),
        })
        self._init_likelihood({"audio": d.feat_a, "visual": d.feat_v}, d.learn_obs_var)

    def _embeddings(self, y: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per-modality embeddings, plus with za_band the low band's ("audio_band", (B, T, E_b)): the stage-1
        audio feature is (channels, positions) flattened channel-major, lowest frequencies first."""
        e = super()._embeddings(y)
        if self.band is not None:
            ya = y["audio"].unflatten(-1, (-1, self.dims.audio_positions))  # (B, T, channels, positions)
            e["audio_band"] = self.band(ya[..., : self.dims.za_band].flatten(-2))
        return e

    def contexts(self, e: Mapping[str, Tensor], w: Tensor) -> dict[str, Tensor]:
        """What each posterior sees besides its own state (and z^av_t for the children)."""
        ea, ev = e["audio"], e["visual"]
        eb = e.get("audio_band", ea)
        return {"zav": torch.cat([ea, ev, w], -1), "za": torch.cat([eb, w], -1), "zv": torch.cat([ev, w], -1)}

    def decoder_inputs(self, w: Tensor, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Audio is decoded from [w, z^av, z^a], the face from [w, z^av, z^v] (the z's in `centred` minus
        their mean over the T frames)."""
        z = {n: v - v.mean(1, keepdim=True) if n in self.centred else v for n, v in z.items()}
        return {"audio": torch.cat([w, z["zav"], z["za"]], -1), "visual": torch.cat([w, z["zav"], z["zv"]], -1)}

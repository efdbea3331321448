"""Stage-2 multimodal dynamical VAE (MDVAE, Sadok et al. 2024) on stage-1 VQ-VAE features.

Generative model of a sequence of T frames, audio features x^a_t and visual features x^v_t
(standardised per dimension with training-set statistics):

    w ~ N(0, I)                                          static: speaker, global emotion      (84)
    z^c_t ~ N(prior_c(h^c_t)),  h^c_{t+1} = GRU_c(z^c_t, h^c_t),  h^c_1 = 0,  c in {av, a, v}
                                                         (dynamic_prior false: z^c_t ~ N(0, I))
                                                         z^av: lips, formants (16)  z^a: pitch (8)
                                                         z^v: eyes, head (4)
    x^a_t ~ N(dec_a(w, z^av_t, z^a_t), s_a^2)            s^2 = 1, or learned per dim or per modality
                                                         (learn_obs_var, obs_var_per)
    x^v_t ~ N(dec_v(w, z^av_t, z^v_t), s_v^2)            dec: an MLP over [w, z's], or (decoder "film")
                                                         one over the z's whose hidden units w modulates
                                                         ("concat-film": over [w, z's], w modulating too);
                                                         (decoder_z "centred-za" / "centred-za-zv" /
                                                         "centred": z^a / z^a and z^v / every z enters the
                                                         decoders minus its mean over the T frames)

Inference model, with per-frame embeddings e^a_t = proj_a(x^a_t) and e^v_t = proj_v(x^v_t):

    q(w | x_{1:T})                    bidirectional GRU over [e^a_t, e^v_t], final states -> Gaussian
    q(z^av_t | e^a_t, e^v_t, w, h^av_t)   (zav_modality_dropout p: in training, a share p of the windows
                                      show it one modality, the other's e zeroed)
    q(z^a_t  | e^a_t, w, h^a_t, z^av_t)   (za_band k: e^a_t replaced by b_t = proj_b(x^a_t's k lowest
                                      frequency positions), the band where f0's harmonics are resolved)
    q(z^v_t  | e^v_t, w, h^v_t, z^av_t)   (zv_view "own": e^v_t replaced by an embedding of its own of x^v_t;
                                      "eyes": [e^v_t, an embedding of the grid rows where the eyes lie])
                                      (chain_inputs "deviations" / "normalised": the chains see e^m_t
                                      minus its mean over the window / also over its std)

With swap_cycle > 0, the loss also has a swap-consistency term (`swap_cycle`): latents of different
windows of the batch are combined (w of one window, z^av of another, z^a and z^v of others), decoded,
and encoded again; the squared distance (halved, summed over dims and frames) of the posterior means to
the latents they were made from is added with that weight per frame. Its gradient reaches the decoders
and the second encoding, not the latents it starts from.

With za_critic > 0, the loss also has a term played by an adversary (layers.ClipCritic) that tells from
z^a alone whether two half-windows come from the same window; the encoder is trained to hide it.

where h^c_t is the same GRU state over the chain's own past samples that parametrises its prior. The
loss is the negative ELBO (sum over frames, KL terms weighted by beta and the warm-up factor), divided by
T; seqvae.py holds it, together with whole-clip inference (`encode_sequence`) and `decode`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from avmdvae.errors import ConfigError
from avmdvae.models.config import DECODER_Z, EYE_ROWS, MDVAEDims
from avmdvae.models.layers import Chain, ClipCritic, Standardize, StaticEncoder, decoder, mlp, mlp_out
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
        self.w_dim, self.seq_len, self.chain_inputs = d.w_dim, d.seq_len, d.chain_inputs
        self.centred = DECODER_Z[d.decoder_z]
        self.norm = nn.ModuleDict({"audio": Standardize(d.feat_a), "visual": Standardize(d.feat_v)})
        self.embed = nn.ModuleDict({"audio": mlp(d.feat_a, d.proj_a), "visual": mlp(d.feat_v, d.proj_v)})
        ea, ev = mlp_out(d.feat_a, d.proj_a), mlp_out(d.feat_v, d.proj_v)
        band = d.feat_a // d.audio_positions * d.za_band  # (channels x k positions) of the audio feature
        self.band = mlp(band, d.proj_a) if d.za_band else None
        eb = mlp_out(band, d.proj_a) if d.za_band else ea
        # q(z^v)'s own view of the face (zv_view): the whole feature, or the eye rows of its grid (channel-major)
        G = d.visual_grid
        self.eye_rows = slice(round(EYE_ROWS[0] * G), round(EYE_ROWS[1] * G))
        rows = self.eye_rows.stop - self.eye_rows.start
        zv_in = {"own": d.feat_v, "eyes": d.feat_v // G * rows}.get(d.zv_view)  # None: the shared embedding only
        self.zv_embed = mlp(zv_in, d.proj_v) if zv_in else None
        ezv = (0 if d.zv_view == "own" else ev) + (mlp_out(zv_in, d.proj_v) if zv_in else 0)

        self.q_w = StaticEncoder(ea + ev, d.w_hidden, d.w_head, d.w_dim)
        H, post, prior = d.chain_hidden, d.post_hidden, d.prior_hidden
        self.chains = nn.ModuleDict({
            "zav": Chain(d.zav_dim, ea + ev + d.w_dim, 0, H, post, prior, dynamic_prior=d.dynamic_prior),
            "za": Chain(d.za_dim, eb + d.w_dim, d.zav_dim, H, post, prior, "zav", d.dynamic_prior),
            "zv": Chain(d.zv_dim, ezv + d.w_dim, d.zav_dim, H, post, prior, "zav", d.dynamic_prior),
        })
        self.decoders = nn.ModuleDict({
            "audio": decoder(d.decoder, d.w_dim, d.zav_dim + d.za_dim, d.dec_hidden_a, d.feat_a),
            "visual": decoder(d.decoder, d.w_dim, d.zav_dim + d.zv_dim, d.dec_hidden_v, d.feat_v),
        })
        self._init_likelihood({"audio": d.feat_a, "visual": d.feat_v}, d.learn_obs_var, d.obs_var_per)
        self.critic = ClipCritic(d.za_dim) if d.za_critic > 0 else None

    def forward(self, *xs: Tensor, **options: Any) -> MDVAEOutput:
        """SequenceVAE.forward (the negative ELBO), plus in training the swap-consistency term when
        swap_cycle > 0 (term "swap_cycle", per window) and the clip critic's when there is one:
        terms "critic_za" (its cross-entropy, nats) and "critic_za_acc" (its accuracy)."""
        out = super().forward(*xs, **options)
        if self.dims.swap_cycle > 0 and self.training:
            out.terms["swap_cycle"] = cycle = self.swap_cycle(out.latents)
            out.loss = out.loss + self.dims.swap_cycle * cycle / out.latents.zav.shape[1]
        if self.critic is not None and self.training:
            loss, acc = self.critic(out.latents.za)
            out.terms["critic_za"], out.terms["critic_za_acc"] = loss, acc
            out.loss = out.loss + self.dims.za_critic * loss
        return out

    def swap_cycle(self, lat: Latents, generator: torch.Generator | None = None) -> Tensor:
        """Swap consistency of a batch of latents (w (B, Dw), z's (B, T, Dz)), B >= 2 -> a scalar, mean over
        the batch: each latent taken from a random window (a permutation per latent), the combination decoded,
        the decoded (standardised) features encoded again (posterior means), and 1/2 the squared distance
        of the new means to the combined latents, summed over dims and frames. The latents are detached."""
        B = lat.w.shape[0]
        if B < 2:
            raise ConfigError("the swap-consistency term needs at least 2 windows per batch")
        mixed = self.Latents(*(v.detach()[torch.randperm(B, generator=generator, device=v.device)] for v in lat))
        y = self._decode(mixed.w, {n: getattr(mixed, n) for n in self.chains})
        e = self._embeddings(y)
        zeros = self._noise(None, B, mixed.zav.shape[1], y[self.modalities[0]], sample=False)  # posterior means
        (w_mean, _), _, ch = self._infer(e, zeros)
        err = (w_mean - mixed.w).pow(2).sum() + sum((o.post[0] - getattr(mixed, n)).pow(2).sum() for n, o in ch.items())
        return 0.5 * err / B

    def _embeddings(self, y: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per-modality embeddings, plus with za_band the low band's ("audio_band", (B, T, E_b)): the stage-1
        audio feature is (channels, positions) flattened channel-major, lowest frequencies first; and with
        zv_view "own" / "eyes" q(z^v)'s view of the face ("visual_zv", (B, T, E_zv)): the stage-1 visual
        feature is (channels, G, G) flattened channel-major."""
        e = super()._embeddings(y)
        if self.band is not None:
            ya = y["audio"].unflatten(-1, (-1, self.dims.audio_positions))  # (B, T, channels, positions)
            e["audio_band"] = self.band(ya[..., : self.dims.za_band].flatten(-2))
        if self.zv_embed is not None:
            yv = y["visual"]
            if self.dims.zv_view == "eyes":
                G = self.dims.visual_grid
                yv = yv.unflatten(-1, (-1, G, G))[..., self.eye_rows, :].flatten(-3)  # (B, T, C * rows * G)
            e["visual_zv"] = self.zv_embed(yv)
        return e

    def contexts(self, e: dict[str, Tensor], w: Tensor) -> dict[str, Tensor]:
        """What each posterior sees besides its own state (and z^av_t for the children)."""
        ea, ev = e["audio"], e["visual"]
        p = self.dims.zav_modality_dropout
        if self.training and p > 0:  # per window: u < p/2 hides the audio, p/2 <= u < p the face
            u = torch.rand(ea.shape[0], 1, 1, device=ea.device)
            ea_av, ev_av = ea * (u >= p / 2), ev * ((u < p / 2) | (u >= p))
        else:
            ea_av, ev_av = ea, ev
        eb = e.get("audio_band", ea)
        ezv = ([] if self.dims.zv_view == "own" else [ev]) + ([e["visual_zv"]] if "visual_zv" in e else [])
        return {"zav": torch.cat([ea_av, ev_av, w], -1), "za": torch.cat([eb, w], -1), "zv": torch.cat([*ezv, w], -1)}

    def decoder_inputs(self, w: Tensor, z: dict[str, Tensor]) -> dict[str, Tensor]:
        """Audio is decoded from [w, z^av, z^a], the face from [w, z^av, z^v] (the z's in `centred` minus
        their mean over the T frames)."""
        z = {n: v - v.mean(1, keepdim=True) if n in self.centred else v for n, v in z.items()}
        return {"audio": torch.cat([w, z["zav"], z["za"]], -1), "visual": torch.cat([w, z["zav"], z["zv"]], -1)}

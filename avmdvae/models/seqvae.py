"""What the MDVAE (mdvae.py) and the DSAE baselines (dsae.py) share: the ELBO and whole-clip inference.

A `SequenceVAE` has, per modality m, a `Standardize` of its stage-1 features, an input MLP (embed) and a
Gaussian decoder; one static latent w inferred by a `StaticEncoder` over all embeddings; and dynamical
`Chain`s advanced together by `layers.unroll`. A subclass says only how they are wired: which inputs
each chain's posterior sees (`contexts`) and which latents each decoder reads (`decoder_inputs`).

Units: the model works on standardised features (training-set mean and std per dimension, stored in
the checkpoint), so that both modalities weigh in the likelihood whatever the scale of their stage-1
features. Inputs to `forward` / `encode_sequence` and outputs of `decode` are raw stage-1 features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from avmdvae.errors import ConfigError
from avmdvae.models.layers import (
    ChainOutput,
    Standardize,
    StaticEncoder,
    gaussian_kl,
    gaussian_nll,
    reparameterize,
    sample_chains,
    unroll,
)


@dataclass
class SeqVAEOutput:
    """What `forward` returns.

    loss: scalar to minimise = (sum of NLLs + kl_weight * sum_k beta_k KL_k) / T, mean over the batch.
    elbo: unweighted ELBO per sequence (sum over frames), mean over the batch.
    terms: "rec_<modality>" (Gaussian NLL of the standardised features) and "kl_<latent>", each
           summed over frames and dims, mean over the batch.
    latents: the posterior samples used. posterior / prior: latent -> (mean, logvar) (w's prior N(0, I)).
    recon (property): modality -> decoded mean in raw feature units (B, T, D), detached; formed on demand
    from the standardised means (`standardised_recon`) and the model's standardisations (`norm`).
    """

    loss: Tensor
    elbo: Tensor
    terms: dict[str, Tensor]
    latents: NamedTuple
    posterior: dict[str, tuple[Tensor, Tensor]]
    prior: dict[str, tuple[Tensor, Tensor]]
    standardised_recon: dict[str, Tensor] = field(default_factory=dict)
    norm: Mapping[str, Standardize] = field(default_factory=dict)

    @property
    def recon(self) -> dict[str, Tensor]:
        return {m: self.norm[m].inverse(v) for m, v in self.standardised_recon.items()}

    def metrics(self) -> dict[str, Tensor]:
        """Detached scalars for logging: loss, elbo and every term."""
        out = {"loss": self.loss.detach(), "elbo": self.elbo.detach()}
        out.update({k: v.detach() for k, v in self.terms.items()})
        return out


# torch.compile settings for these models: dynamo breaks the graph at an nn.GRU unless told to keep it as
# one op (the recurrence of q(w): cuDNN on a GPU). Use as `torch._dynamo.config.patch(**COMPILE_CONFIG)`.
COMPILE_CONFIG = {"allow_rnn": True}


def compile_model(model: nn.Module, **options: Any) -> Any:
    """torch.compile(model, **options) with COMPILE_CONFIG: one graph per forward (tests/test_models.py)."""
    for key, value in COMPILE_CONFIG.items():
        setattr(torch._dynamo.config, key, value)
    return torch.compile(model, **options)


def resolve_beta(beta: float | Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    """A float for every KL term, or a mapping latent name -> weight (missing names get 1)."""
    if isinstance(beta, Mapping):
        unknown = sorted(set(beta) - set(names))
        if unknown:
            raise ConfigError(f"unknown beta key(s) {', '.join(unknown)}; valid: {', '.join(names)}")
        return {n: float(beta.get(n, 1.0)) for n in names}
    return {n: float(beta) for n in names}


def windows(n: int, length: int, hop: int | None = None) -> list[tuple[int, int]]:
    """[a, b) windows of `length` frames every `hop` (default: `length`) covering [0, n), the last one
    aligned to the end; one window [0, n) when n <= length."""
    if n <= length:
        return [(0, n)]
    hop = hop or length
    starts = list(range(0, n - length + 1, hop))
    if starts[-1] + length < n:
        starts.append(n - length)
    return [(s, s + length) for s in starts]


class SequenceVAE(nn.Module):
    """Base of the stage-2 models; see the module docstring. Subclasses set the attributes below."""

    modalities: tuple[str, ...]
    Latents: type  # a NamedTuple class: w, then one field per chain
    norm: nn.ModuleDict  # modality -> Standardize
    embed: nn.ModuleDict  # modality -> input MLP
    q_w: StaticEncoder
    chains: nn.ModuleDict  # chain name -> Chain, a parent before its children
    decoders: nn.ModuleDict  # modality -> MLP to the standardised feature mean
    obs_logvar: nn.ParameterDict | None  # modality -> log-variance (D,) of the likelihood; None: unit
    w_dim: int
    seq_len: int

    def _init_likelihood(self, dims: Mapping[str, int], learn: bool) -> None:
        """One learned log-variance per feature dimension, or none (learn False: unit variance)."""
        self.obs_logvar = nn.ParameterDict({m: torch.zeros(d) for m, d in dims.items()}) if learn else None

    # ---- wiring, per model
    def contexts(self, e: Mapping[str, Tensor], w: Tensor) -> dict[str, Tensor]:
        """Embeddings e[m] (B, T, E_m) and w (B, T, Dw) -> chain name -> posterior context (B, T, C)."""
        raise NotImplementedError

    def decoder_inputs(self, w: Tensor, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """w (B, T, Dw) and chain name -> z (B, T, Dz) -> modality -> decoder input (B, T, I)."""
        raise NotImplementedError

    # ---- shared machinery
    @property
    def latent_names(self) -> tuple[str, ...]:
        return ("w", *self.chains.keys())

    def noise_shapes(self, T: int) -> dict[str, tuple[int, ...]]:
        """Per-sequence shapes of the reparameterisation noise of every latent."""
        shapes: dict[str, tuple[int, ...]] = {"w": (self.w_dim,)}
        shapes.update({n: (T, c.z_dim) for n, c in self.chains.items()})
        return shapes

    @torch.no_grad()
    def fit_input_stats(self, features: Mapping[str, Tensor]) -> None:
        """Set each modality's standardisation from training features (N, D)."""
        for m in self.modalities:
            self.norm[m].fit(features[m])

    def _check(self, xs: Sequence[Tensor]) -> dict[str, Tensor]:
        if len(xs) != len(self.modalities):
            raise ConfigError(f"expected {len(self.modalities)} feature tensors ({', '.join(self.modalities)})")
        x = dict(zip(self.modalities, xs, strict=True))
        for m, t in x.items():
            want = self.norm[m].mean.numel()
            if t.dim() != 3 or t.shape[-1] != want:
                raise ConfigError(f"{m} features must be (B, T, {want}); got {tuple(t.shape)}: check the stage-1 model")
        if len({t.shape[:2] for t in x.values()}) > 1:
            raise ConfigError(f"the modalities' windows differ: {[tuple(t.shape[:2]) for t in x.values()]}")
        return x

    def _noise(
        self, noise: Mapping[str, Tensor] | None, B: int, T: int, like: Tensor, sample: bool
    ) -> dict[str, Tensor]:
        out = {}
        for name, shape in self.noise_shapes(T).items():
            if noise is not None and name in noise:
                if tuple(noise[name].shape) != (B, *shape):
                    raise ValueError(f"noise[{name!r}] has shape {tuple(noise[name].shape)}, expected {(B, *shape)}")
                out[name] = noise[name].to(like.device)
            else:
                out[name] = torch.randn(B, *shape, device=like.device) if sample else like.new_zeros(B, *shape)
        return out

    def _embed(self, x: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Raw features -> (standardised y per modality, embeddings e: `_embeddings(y)`)."""
        y = {m: self.norm[m](x[m]) for m in self.modalities}
        return y, self._embeddings(y)

    def _embeddings(self, y: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Standardised features -> one embedding per modality (what q(w) reads); a subclass may add views
        that only its chains read (`contexts`)."""
        return {m: self.embed[m](y[m]) for m in self.modalities}

    def _infer(
        self, e: Mapping[str, Tensor], eps: Mapping[str, Tensor]
    ) -> tuple[tuple[Tensor, Tensor], Tensor, dict[str, ChainOutput]]:
        """Embeddings e[m] (B, T, E_m) and noise (`noise_shapes`; zeros: posterior means) -> (q(w)'s mean and
        log-variance, the w drawn (B, Dw), chain name -> ChainOutput)."""
        T = next(iter(e.values())).shape[1]
        w_mean, w_logvar = self.q_w(torch.cat([e[m] for m in self.modalities], -1))
        w = reparameterize(w_mean, w_logvar, eps["w"])
        return (w_mean, w_logvar), w, unroll(self.chains, self.contexts(e, w[:, None].expand(-1, T, -1)), eps)

    def _decode(self, w: Tensor, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """-> modality -> standardised feature mean (B, T, D); w (B, Dw) or per frame (B, T, Dw)."""
        T = next(iter(z.values())).shape[1]
        w = w[:, None].expand(-1, T, -1) if w.dim() == 2 else w
        return {m: self.decoders[m](i) for m, i in self.decoder_inputs(w, z).items()}

    def forward(
        self,
        *xs: Tensor,
        beta: float | Mapping[str, float] = 1.0,
        kl_weight: float = 1.0,
        noise: Mapping[str, Tensor] | None = None,
    ) -> SeqVAEOutput:
        """Stage-1 features (B, T, D_m), one per modality -> SeqVAEOutput (negative ELBO as the loss).

        beta: weight of every KL term, or latent name -> weight. kl_weight: warm-up factor on all KL
        terms. noise: reparameterisation noise by latent (`noise_shapes`); missing ones drawn N(0, I).
        """
        x = self._check(xs)
        B, T = xs[0].shape[:2]
        betas = resolve_beta(beta, self.latent_names)
        eps = self._noise(noise, B, T, xs[0], sample=True)
        y, e = self._embed(x)
        (w_mean, w_logvar), w, ch = self._infer(e, eps)
        means = self._decode(w, {n: o.z for n, o in ch.items()})

        nll = {m: gaussian_nll(y[m], means[m], self.obs_logvar[m] if self.obs_logvar else None) for m in y}
        kl = {"w": gaussian_kl(w_mean, w_logvar).sum()}
        kl.update({n: gaussian_kl(*o.post, *o.prior).sum() for n, o in ch.items()})
        terms = {f"rec_{m}": v / B for m, v in nll.items()} | {f"kl_{k}": v / B for k, v in kl.items()}
        rec = sum(terms[f"rec_{m}"] for m in nll)
        kls = sum(terms[f"kl_{k}"] for k in kl)
        weighted = sum(betas[k] * terms[f"kl_{k}"] for k in kl)
        return SeqVAEOutput(
            loss=(rec + kl_weight * weighted) / T,  # type: ignore[operator]
            elbo=-(rec + kls),  # type: ignore[operator]
            terms=terms,
            latents=self.Latents(w, *(o.z for o in ch.values())),
            posterior={"w": (w_mean, w_logvar)} | {n: o.post for n, o in ch.items()},
            prior={"w": (torch.zeros_like(w_mean), torch.zeros_like(w_logvar))} | {n: o.prior for n, o in ch.items()},
            standardised_recon={m: v.detach() for m, v in means.items()},
            norm=self.norm,
        )

    # ---- inference on whole clips
    @torch.no_grad()
    def encode_sequence(self, *xs: Tensor, hop: int | None = None) -> Any:
        """Posterior means of whole clips of any length N >= 1: features (B, N, D_m) -> Latents with
        w (B, Dw) and every z (B, N, Dz).

        Inference sees what training saw, T = seq_len-frame windows with the chains starting from a zero
        state. w is the precision-weighted mean of q(w | window) over windows tiling the clip (the product
        of the Gaussian posteriors: independent evidence about one static factor). The z's come from
        windows of T frames every `hop` frames (default T // 2), all run as one batch: each frame takes
        its z from the earliest window that contains it, so that beyond the first T frames every frame
        has at least T - hop frames of history, and no chain state ever runs longer than in training.
        (Carrying the state across the whole clip instead scored worse on held-out clips: docs/results.md.)
        """
        x = self._check(xs)
        B, N = xs[0].shape[:2]
        T = self.seq_len
        hop = hop or max(1, T // 2)
        _, e = self._embed(x)
        eav = torch.cat([e[m] for m in self.modalities], -1)

        tiles = windows(N, T)
        w_mean, w_logvar = self.q_w(torch.cat([eav[:, a:b] for a, b in tiles]))  # (len(tiles) * B, Dw)
        prec = torch.exp(-w_logvar.double()).view(len(tiles), B, -1)
        w = ((prec * w_mean.double().view(len(tiles), B, -1)).sum(0) / prec.sum(0)).to(eav.dtype)  # (B, Dw)

        wins = windows(N, T, hop)
        L = wins[0][1] - wins[0][0]
        ew = {m: torch.cat([v[:, a:b] for a, b in wins]) for m, v in e.items()}  # (len(wins) * B, L, E)
        ww = w.repeat(len(wins), 1)[:, None].expand(-1, L, -1)
        zeros = {n: eav.new_zeros(len(wins) * B, L, c.z_dim) for n, c in self.chains.items()}
        ch = unroll(self.chains, self.contexts(ew, ww), zeros)
        # frame i from the earliest window containing it
        starts = torch.tensor([a for a, _ in wins], device=eav.device)
        idx = torch.arange(N, device=eav.device)
        k = torch.searchsorted(starts + L, idx, right=True)  # first window whose end is past i
        pos = idx - starts[k]
        z = {n: o.post[0].view(len(wins), B, L, -1)[k, :, pos].transpose(0, 1) for n, o in ch.items()}
        return self.Latents(w, *z.values())

    @torch.no_grad()
    def decode(self, latents: Any) -> tuple[Tensor, ...]:
        """Latents (w (B, Dw) or per frame (B, N, Dw), z's (B, N, Dz)) -> raw feature means (B, N, D_m),
        one per modality in `modalities` order."""
        w, *zs = latents
        means = self._decode(w, dict(zip(self.chains.keys(), zs, strict=True)))
        return tuple(self.norm[m].inverse(means[m]) for m in self.modalities)

    @torch.no_grad()
    def sample_prior(self, batch: int, T: int, w: Tensor | None = None,
                     generator: torch.Generator | None = None) -> Any:
        """Latents drawn from the generative model (w from N(0, I) unless given)."""
        like = self.norm[self.modalities[0]].mean
        if w is None:
            w = torch.randn(batch, self.w_dim, generator=generator, device=like.device)
        return self.Latents(w, *sample_chains(self.chains, batch, T, like, generator).values())

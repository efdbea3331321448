"""Dimension dataclasses of every model, with the paper's reference sizes as defaults.

Each dataclass round-trips through plain dicts (`to_dict` / `from_dict`) so that a YAML file under
`models/` can set every size; unknown keys raise `ConfigError` with a one-line message.
`tiny()` presets give small models for tests and demos (seconds on a CPU).

Reference sizes (Sadok et al., 2024, VQ-MDVAE):
- visual VQ-VAE: 64x64x3 face -> three stride-2 convs (64 -> 32 -> 16 -> 8) -> 8x8 grid of 32-dim
  vectors, codebook of 512 entries; MDVAE visual feature = 8 * 8 * 32 = 2048 values per frame.
- audio VQ-VAE: 513-bin power spectrum frame -> three stride-2 1-D convs (513 -> 256 -> 128 -> 64)
  -> 64 positions of 8-dim vectors, codebook of 64 entries; MDVAE audio feature = 64 * 8 = 512.
- MDVAE: static w (84), dynamical z(av) (16), z(a) (8), z(v) (4); sequences of T = 30 frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from avmdvae.constants import FACE_SIZE, N_BINS
from avmdvae.errors import ConfigError

# MDVAEDims.decoder_z -> the latents the decoders read minus their mean over the sequence (MDVAE.decoder_inputs)
DECODER_Z: dict[str, tuple[str, ...]] = {
    "absolute": (), "centred-za": ("za",), "centred-za-zv": ("za", "zv"), "centred": ("zav", "za", "zv"),
}

_D = TypeVar("_D", bound="_Dims")


class _Dims:
    """Mixin: dict round trip with a clear error on unknown keys or wrong types."""

    may_be_zero: ClassVar[tuple[str, ...]] = ()  # integer fields for which 0 is valid (all others: > 0)
    # keys of removed switches -> the one value still accepted (what the model now always does; None: any);
    # configs of older runs hold them, so they are dropped at that value and refused at any other
    retired: ClassVar[dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_D], d: dict[str, Any] | None) -> _D:
        d = dict(d or {})
        for k, kept in cls.retired.items():
            if k in d:
                check_retired(f"{cls.__name__}.{k}", d.pop(k), kept)
        names = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} key(s) {', '.join(unknown)}; valid keys: {', '.join(names)}"
            )
        out: dict[str, Any] = {}
        for k, v in d.items():
            default = getattr(cls(), k)  # type: ignore[call-arg]
            if isinstance(default, bool):
                if not isinstance(v, bool):
                    raise ConfigError(f"{cls.__name__}.{k} must be true or false, got {v!r}")
            elif isinstance(default, list):  # layer widths: a list of integers, or one integer for one layer
                v = [v] if _is_int(v) else v
                if not (isinstance(v, list) and all(_is_int(x) for x in v)):
                    raise ConfigError(f"{cls.__name__}.{k} must be a list of layer widths (integers), got {v!r}")
            elif isinstance(default, int) and not _is_int(v):
                raise ConfigError(f"{cls.__name__}.{k} must be an integer, got {v!r}")
            elif isinstance(default, float):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ConfigError(f"{cls.__name__}.{k} must be a number, got {v!r}")
                v = float(v)
            out[k] = v
        obj = cls(**out)  # type: ignore[call-arg]
        obj.validate()  # type: ignore[attr-defined]
        return obj

    def validate(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if _is_int(v) and v <= 0 and f.name not in self.may_be_zero:
                raise ConfigError(f"{type(self).__name__}.{f.name} must be positive, got {v}")
            if isinstance(v, list) and any(x <= 0 for x in v):
                raise ConfigError(f"{type(self).__name__}.{f.name} layer widths must be positive, got {v}")


def check_retired(name: str, value: Any, kept: Any) -> None:
    """A removed switch's key is accepted at the value the model now always has (kept; None: any value)."""
    if kept is not None and value != kept:
        raise ConfigError(
            f"{name} was an ablation switch and has been removed (only {kept!r} is accepted): "
            f"see docs/results.md, 'Switches removed', to rerun it"
        )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class QuantizerDims(_Dims):
    """EMA vector quantiser settings (shared by both VQ-VAEs)."""

    decay: float = 0.99  # EMA decay of the codebook statistics
    commitment: float = 0.25  # weight of ||z_e - sg(z_q)||^2
    dead_after: int = 200  # training steps without any assignment before a code is restarted
    eps: float = 1e-5  # Laplace smoothing of the EMA cluster sizes


class _VQVAEDims(_Dims):
    """What both stage-1 dims share: a nested `quantizer` section and the same tiny preset."""

    may_be_zero: ClassVar[tuple[str, ...]] = ("n_res_blocks",)

    @classmethod
    def from_dict(cls: type[_V], d: dict[str, Any] | None) -> _V:
        d = dict(d or {})
        q = QuantizerDims.from_dict(d.pop("quantizer", None))
        obj = super().from_dict(d)  # type: ignore[misc]
        obj.quantizer = q
        return obj

    @classmethod
    def tiny(cls: type[_V]) -> _V:
        return cls(hidden=16, n_res_blocks=1, res_hidden=8, code_dim=4, n_codes=16,  # type: ignore[call-arg]
                   quantizer=QuantizerDims(dead_after=20))


_V = TypeVar("_V", bound=_VQVAEDims)


@dataclass
class VisualVQVAEDims(_VQVAEDims):
    """64x64x3 -> (code_dim, 8, 8) -> 64x64x3."""

    image_size: int = FACE_SIZE
    in_channels: int = 3
    hidden: int = 128  # channels of the last strided conv and of the residual stack
    n_down: int = 3  # stride-2 convs: 64 / 2**3 = 8 -> an 8x8 grid
    n_res_blocks: int = 2
    res_hidden: int = 64
    code_dim: int = 32
    n_codes: int = 512
    quantizer: QuantizerDims = dataclasses.field(default_factory=QuantizerDims)

    @property
    def grid(self) -> int:
        return self.image_size // 2**self.n_down

    @property
    def feature_dim(self) -> int:
        """Flattened pre-quantisation encoder output: 32 * 8 * 8 = 2048 at reference sizes."""
        return self.code_dim * self.grid * self.grid

    def validate(self) -> None:
        super().validate()
        if self.image_size % 2**self.n_down:
            raise ConfigError(f"VisualVQVAEDims.image_size {self.image_size} is not divisible by 2**n_down")


@dataclass
class AudioVQVAEDims(_VQVAEDims):
    """513-bin power spectrum frame -> (code_dim, 64) -> positive power spectrum."""

    n_bins: int = N_BINS
    hidden: int = 64  # channels of the strided 1-D convs and residual stack
    n_down: int = 3  # 513 -> 256 -> 128 -> 64 positions (kernel 4, stride 2, padding 1)
    n_res_blocks: int = 2
    res_hidden: int = 32
    code_dim: int = 8
    n_codes: int = 64
    quantizer: QuantizerDims = dataclasses.field(default_factory=QuantizerDims)

    @property
    def positions(self) -> int:
        n = self.n_bins
        for _ in range(self.n_down):
            n = (n + 2 - 4) // 2 + 1
        return n

    @property
    def feature_dim(self) -> int:
        """Flattened pre-quantisation encoder output: 8 * 64 = 512 at reference sizes."""
        return self.code_dim * self.positions


def _widths(*w: int) -> Any:
    return dataclasses.field(default_factory=lambda: list(w))


@dataclass
class MDVAEDims(_Dims):
    """Stage-2 MDVAE sizes. feat_a / feat_v must equal the stage-1 `feature_dim`s.

    Every MLP is given by its hidden layer widths (tanh after each); an empty list is no hidden layer
    (for the input MLPs proj_a / proj_v: the features are passed on unprojected). models/mdvae.yaml
    holds these defaults, models/mdvae-official.yaml the authors' released architecture.
    """

    may_be_zero: ClassVar[tuple[str, ...]] = ("za_band",)

    feat_a: int = 512  # audio VQ-VAE feature (64 * 8)
    audio_positions: int = 64  # frequency positions of that feature, lowest first (feat_a / audio_positions channels)
    feat_v: int = 2048  # visual VQ-VAE feature (8 * 8 * 32)
    w_dim: int = 84
    zav_dim: int = 16
    za_dim: int = 8
    zv_dim: int = 4
    proj_a: list[int] = _widths(256)  # per-frame input MLP of the (standardised) audio features
    proj_v: list[int] = _widths(512)  # per-frame input MLP of the visual features
    w_hidden: int = 256  # hidden size per direction of the bidirectional GRU that infers w
    w_head: list[int] = _widths()  # MLP from the GRU's two final states to q(w)
    chain_hidden: int = 128  # GRU state over the past samples of each dynamical latent
    post_hidden: list[int] = _widths(128)  # posterior heads q(z_t | features_t, w, state, ...); >= 1 layer
    prior_hidden: list[int] = _widths(64)  # prior heads p(z_t | state)
    dec_hidden_a: list[int] = _widths(256)  # audio decoder [w, zav, za] -> feature mean
    dec_hidden_v: list[int] = _widths(512)  # visual decoder [w, zav, zv] -> feature mean
    learn_obs_var: bool = False  # False: unit-variance Gaussian likelihood; True: one learned variance per dim
    # False: p(z_t) = N(0, I) at every frame, so content that stays put costs its KL at every frame
    # in a dynamical latent and once in w (docs/results.md, quality benchmark ablations)
    dynamic_prior: bool = True
    # what the decoders read of the dynamical latents: "absolute" (z_t as it is, the paper), "centred-za"
    # (z^a_t minus its mean over the sequence), "centred-za-zv" (z^a and z^v) or "centred" (every z): a
    # constant in a centred latent cannot reach the decoders, so it has to come through w (or z^av)
    decoder_z: str = "absolute"
    # what q(z^a) reads of the audio: 0, the audio embedding (the paper); k > 0, an embedding of its own (an MLP
    # of proj_a's widths) of the k lowest frequency positions of the stage-1 feature only (k = 8 of 64: up to
    # about 1 kHz, where the harmonics of the voice's f0 are resolved), so that z^a is inferred from where the
    # pitch shows and not from the spectral envelope above it
    za_band: int = 0
    seq_len: int = 30  # training window length T (frames at 30 fps = 1 s)

    # switches of refuted ablations, removed on 2026-12-06 (docs/results.md, "Switches removed")
    retired: ClassVar[dict[str, Any]] = {
        "obs_var_per": "dim", "chain_inputs": "frames", "decoder": "concat", "za_critic": 0.0,
        "zav_modality_dropout": 0.0, "swap_cycle": 0.0, "zv_view": "shared", "visual_grid": None,
    }

    def validate(self) -> None:
        super().validate()
        if not self.post_hidden:
            raise ConfigError("MDVAEDims.post_hidden needs at least one layer width")
        if self.za_band and (self.feat_a % self.audio_positions or not 0 < self.za_band <= self.audio_positions):
            raise ConfigError(
                f"MDVAEDims.za_band must be in [0, audio_positions = {self.audio_positions}] and feat_a "
                f"({self.feat_a}) a multiple of audio_positions, got za_band {self.za_band}"
            )
        if self.decoder_z not in DECODER_Z:
            raise ConfigError(f"MDVAEDims.decoder_z must be one of {', '.join(DECODER_Z)}, got {self.decoder_z!r}")

    @classmethod
    def tiny(cls, feat_a: int = 16, feat_v: int = 64) -> MDVAEDims:
        return cls(
            feat_a=feat_a,
            feat_v=feat_v,
            w_dim=6,
            zav_dim=4,
            za_dim=3,
            zv_dim=2,
            proj_a=[12],
            proj_v=[16],
            w_hidden=10,
            chain_hidden=8,
            post_hidden=[9],
            prior_hidden=[7],
            dec_hidden_a=[11],
            dec_hidden_v=[13],
            seq_len=8,
        )


@dataclass
class DSAEDims(_Dims):
    """Unimodal baseline (VQ-DSAE-audio / -visual): static w + one dynamical latent z.

    z_dim = None means z(av) + z(modality) of the reference MDVAE: 16 + 8 = 24 for audio, 16 + 4 = 20
    for visual, so that each baseline has the latent capacity of the MDVAE for that modality.
    MLP widths as in MDVAEDims.
    """

    feat: int = 512  # stage-1 feature of the modality (512 audio, 2048 visual)
    w_dim: int = 84
    z_dim: int | None = None
    proj: list[int] = _widths(256)
    w_hidden: int = 256
    w_head: list[int] = _widths()
    chain_hidden: int = 128
    post_hidden: list[int] = _widths(128)
    prior_hidden: list[int] = _widths(64)
    dec_hidden: list[int] = _widths(256)
    learn_obs_var: bool = False
    seq_len: int = 30

    def validate(self) -> None:
        super().validate()
        if not self.post_hidden:
            raise ConfigError("DSAEDims.post_hidden needs at least one layer width")

    def resolved_z_dim(self, modality: str) -> int:
        if self.z_dim is not None:
            return self.z_dim
        return 16 + (8 if modality == "audio" else 4)

    @classmethod
    def for_modality(cls, modality: str) -> DSAEDims:
        if modality == "audio":
            return cls(feat=512, proj=[256], dec_hidden=[256])
        if modality == "visual":
            return cls(feat=2048, proj=[512], dec_hidden=[512])
        raise ConfigError(f"unknown modality {modality!r}; use 'audio' or 'visual'")

    @classmethod
    def tiny(cls, feat: int = 16) -> DSAEDims:
        return cls(
            feat=feat,
            w_dim=6,
            z_dim=5,
            proj=[12],
            w_hidden=10,
            chain_hidden=8,
            post_hidden=[9],
            prior_hidden=[7],
            dec_hidden=[11],
            seq_len=8,
        )

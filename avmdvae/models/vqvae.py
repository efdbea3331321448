"""Stage-1 VQ-VAEs, trained on single frames (no temporal model).

VisualVQVAE: face (B, 3, 64, 64) in [0, 1] -> strided convs + residual blocks -> z_e (B, 32, 8, 8)
    -> EMA codebook (512) -> mirrored transposed convs -> sigmoid image; MSE loss.
AudioVQVAE: power spectrum (B, 513) -> normalised log power -> strided 1-D convs -> z_e (B, 8, 64)
    -> EMA codebook (64) -> transposed convs -> log power -> exp = positive power; Itakura-Saito loss.

Both expose the contract API: encode, quantize, decode, loss(batch) -> (loss, metrics),
feature(x) -> (..., D) flattened continuous encoder output (the MDVAE input) and
decode_feature(f (..., D)) -> media-space output (quantise with the codebook, then decode).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avmdvae.models.config import AudioVQVAEDims, VisualVQVAEDims
from avmdvae.models.quantizer import QuantizeResult, VectorQuantizer

# log(power + POWER_FLOOR): -18.4 for digital silence; a full-scale 1024-point Hann-windowed sine
# peaks near (1024 / 4)^2 = 65536 -> +11. Default normalisation maps that range to about [-2.7, 3.2];
# `set_input_stats` replaces it with per-bin statistics of the training corpus.
FRAME_CHUNK = 512  # frames per forward pass of encode_frames / decode_frames (~0.1 GB of activations)
POWER_FLOOR = 1e-8
DEFAULT_LOG_MEAN = -5.0
DEFAULT_LOG_STD = 5.0


def faces_to_input(x: Tensor) -> Tensor:
    """uint8 faces (..., H, W, 3) -> float (..., 3, H, W) in [0, 1]; float input is returned as is."""
    if x.dtype == torch.uint8:
        return x.movedim(-1, -3).float().div_(255.0)
    return x


def _make_quantizer(d: VisualVQVAEDims | AudioVQVAEDims) -> VectorQuantizer:
    q = d.quantizer
    return VectorQuantizer(d.n_codes, d.code_dim, q.decay, q.commitment, q.dead_after, q.eps)


class _QuantizerMixin:
    quantizer: VectorQuantizer
    dims: VisualVQVAEDims | AudioVQVAEDims
    modality: str
    media_shape: tuple[int, ...]
    feature: Callable[[Tensor], Tensor]
    decode_feature: Callable[[Tensor], Tensor]
    parameters: Callable[[], Iterator[nn.Parameter]]

    @property
    def feature_dim(self) -> int:
        """Size of the flattened pre-quantisation encoder output per frame (the MDVAE's input)."""
        return self.dims.feature_dim

    def quantize(self, z_e: Tensor, update: bool | None = None) -> QuantizeResult:
        """z_e (B, D, *S) -> (z_q, codes, commit_loss, perplexity); EMA update in training mode."""
        return self.quantizer(z_e, update=update)

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray | Tensor, chunk: int = FRAME_CHUNK) -> np.ndarray:
        """Continuous features (N, D) float32 of many frames (faces (N, 64, 64, 3) uint8 or power spectra
        (N, 513), e.g. memory-mapped), `chunk` frames per forward pass on the model's device."""
        device = next(self.parameters()).device
        out = np.empty((len(frames), self.feature_dim), np.float32)
        for a in range(0, len(frames), chunk):
            part = frames[a : a + chunk]
            x = (part if torch.is_tensor(part) else torch.from_numpy(np.array(part))).to(device)
            out[a : a + len(x)] = self.feature(x).float().cpu().numpy()
        return out

    @torch.no_grad()
    def decode_frames(self, features: np.ndarray | Tensor, chunk: int = FRAME_CHUNK) -> np.ndarray:
        """Media of features (N, D): quantise (no codebook update) and decode, `chunk` frames at a time ->
        faces (N, 64, 64, 3) uint8 or power spectra (N, 513) float32."""
        device = next(self.parameters()).device
        out = []
        for a in range(0, len(features), chunk):
            y = self.decode_feature(torch.as_tensor(features[a : a + chunk]).to(device)).float()
            out.append(y.clamp(0, 1).mul(255).round().to(torch.uint8).movedim(-3, -1) if y.dim() == 4 else y)
        if not out:
            return np.zeros((0, *self.media_shape), np.uint8 if self.modality == "visual" else np.float32)
        return torch.cat(out).cpu().numpy()


class _ResBlock(nn.Module):
    """x + conv1(relu(conv_k(relu(x)))) for 1-D or 2-D feature maps."""

    def __init__(self, conv: type[nn.Conv1d] | type[nn.Conv2d], channels: int, hidden: int) -> None:
        super().__init__()
        self.conv_a = conv(channels, hidden, 3, padding=1)
        self.conv_b = conv(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_b(F.relu(self.conv_a(F.relu(x))))


def _down_channels(hidden: int, n_down: int) -> list[int]:
    """Channel counts of the strided convs, doubling up to `hidden`: 128, 3 -> [32, 64, 128]."""
    return [max(hidden // 2 ** (n_down - 1 - i), 1) for i in range(n_down)]


class VisualVQVAE(_QuantizerMixin, nn.Module):
    modality = "visual"

    @property
    def media_shape(self) -> tuple[int, ...]:
        return (self.dims.image_size, self.dims.image_size, 3)

    def __init__(self, dims: VisualVQVAEDims | None = None) -> None:
        super().__init__()
        self.dims = d = dims or VisualVQVAEDims()
        chans = _down_channels(d.hidden, d.n_down)
        enc: list[nn.Module] = []
        c_in = d.in_channels
        for c in chans:
            enc += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.ReLU()]
            c_in = c
        enc.append(nn.Conv2d(d.hidden, d.hidden, 3, padding=1))
        enc += [_ResBlock(nn.Conv2d, d.hidden, d.res_hidden) for _ in range(d.n_res_blocks)]
        enc += [nn.ReLU(), nn.Conv2d(d.hidden, d.code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(d.code_dim, d.hidden, 3, padding=1)]
        dec += [_ResBlock(nn.Conv2d, d.hidden, d.res_hidden) for _ in range(d.n_res_blocks)]
        dec.append(nn.ReLU())
        outs = list(reversed(chans[:-1])) + [d.in_channels]
        c_in = d.hidden
        for i, c in enumerate(outs):
            dec.append(nn.ConvTranspose2d(c_in, c, 4, stride=2, padding=1))
            if i < len(outs) - 1:
                dec.append(nn.ReLU())
            c_in = c
        self.decoder = nn.Sequential(*dec)
        self.quantizer = _make_quantizer(d)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.dims.code_dim, self.dims.grid, self.dims.grid)

    def encode(self, x: Tensor) -> Tensor:
        """x float (B, 3, 64, 64) in [0, 1] or uint8 (B, 64, 64, 3) -> z_e (B, 32, 8, 8)."""
        return self.encoder(faces_to_input(x))

    def decode(self, z_q: Tensor) -> Tensor:
        """z_q (B, 32, 8, 8) -> image (B, 3, 64, 64) in [0, 1]."""
        return torch.sigmoid(self.decoder(z_q))

    def forward(self, x: Tensor) -> tuple[Tensor, QuantizeResult]:
        q = self.quantize(self.encode(x))
        return self.decode(q.z_q), q

    def loss(self, batch: Tensor | Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """MSE + commitment. batch: faces tensor or {"visual": faces}. Metrics are detached 0-d tensors."""
        x = batch["visual"] if isinstance(batch, Mapping) else batch
        x = faces_to_input(x)
        x_hat, q = self(x)
        rec = F.mse_loss(x_hat.float(), x.float())
        loss = rec + q.commit_loss
        return loss, _metrics(loss, rec, q, self.dims.n_codes)

    def feature(self, x: Tensor) -> Tensor:
        """Faces (..., 3, 64, 64) float or (..., 64, 64, 3) uint8 -> continuous features (..., 2048)."""
        x = faces_to_input(x)
        lead = x.shape[:-3]
        z = self.encode(x.reshape(-1, *x.shape[-3:]))
        return z.reshape(*lead, -1)

    def decode_feature(self, f: Tensor) -> Tensor:
        """Features (..., 2048) -> quantise (no codebook update) -> images (..., 3, 64, 64) in [0, 1]."""
        lead = f.shape[:-1]
        z = f.reshape(-1, *self.latent_shape)
        x = self.decode(self.quantize(z, update=False).z_q)
        return x.reshape(*lead, *x.shape[1:])

    def decode_codes(self, codes: Tensor) -> Tensor:
        """codes (B, 8, 8) -> images (B, 3, 64, 64)."""
        return self.decode(self.quantizer.lookup(codes))


class AudioVQVAE(_QuantizerMixin, nn.Module):
    modality = "audio"

    @property
    def media_shape(self) -> tuple[int, ...]:
        return (self.dims.n_bins,)

    def __init__(self, dims: AudioVQVAEDims | None = None) -> None:
        super().__init__()
        self.dims = d = dims or AudioVQVAEDims()
        self.register_buffer("log_mean", torch.full((d.n_bins,), DEFAULT_LOG_MEAN))
        self.register_buffer("log_std", torch.full((d.n_bins,), DEFAULT_LOG_STD))
        chans = _down_channels(d.hidden, d.n_down)
        lengths = [d.n_bins]
        for _ in range(d.n_down):
            lengths.append((lengths[-1] + 2 - 4) // 2 + 1)
        enc: list[nn.Module] = []
        c_in = 1
        for c in chans:
            enc += [nn.Conv1d(c_in, c, 4, stride=2, padding=1), nn.ReLU()]
            c_in = c
        enc.append(nn.Conv1d(d.hidden, d.hidden, 3, padding=1))
        enc += [_ResBlock(nn.Conv1d, d.hidden, d.res_hidden) for _ in range(d.n_res_blocks)]
        enc += [nn.ReLU(), nn.Conv1d(d.hidden, d.code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv1d(d.code_dim, d.hidden, 3, padding=1)]
        dec += [_ResBlock(nn.Conv1d, d.hidden, d.res_hidden) for _ in range(d.n_res_blocks)]
        dec.append(nn.ReLU())
        outs = list(reversed(chans[:-1])) + [1]
        c_in = d.hidden
        for i, c in enumerate(outs):
            # (L - 1) * 2 - 2 + 4 = 2L; output_padding 1 restores odd lengths (256 -> 513)
            target, length = lengths[-2 - i], lengths[-1 - i]
            dec.append(
                nn.ConvTranspose1d(c_in, c, 4, stride=2, padding=1, output_padding=target - 2 * length)
            )
            if i < len(outs) - 1:
                dec.append(nn.ReLU())
            c_in = c
        self.decoder = nn.Sequential(*dec)
        self.quantizer = _make_quantizer(d)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.dims.code_dim, self.dims.positions)

    @torch.no_grad()
    def set_input_stats(self, power: Tensor) -> None:
        """Per-bin mean/std of log power over frames (N, 513) of the training corpus."""
        logp = torch.log(power.float().reshape(-1, self.dims.n_bins) + POWER_FLOOR)
        self.log_mean.copy_(logp.mean(0))
        self.log_std.copy_(logp.std(0).clamp_min(0.1) if logp.shape[0] > 1 else torch.ones_like(self.log_std))

    def encode(self, x: Tensor) -> Tensor:
        """Power spectrum (B, 513) -> z_e (B, 8, 64)."""
        logp = torch.log(x.float() + POWER_FLOOR)
        return self.encoder(((logp - self.log_mean) / self.log_std)[:, None])

    def decode_log(self, z_q: Tensor) -> Tensor:
        """z_q (B, 8, 64) -> log power (B, 513)."""
        y = self.decoder(z_q)[:, 0]
        return y.float() * self.log_std + self.log_mean

    def decode(self, z_q: Tensor) -> Tensor:
        """z_q (B, 8, 64) -> positive power spectrum (B, 513)."""
        return torch.exp(self.decode_log(z_q))

    def forward(self, x: Tensor) -> tuple[Tensor, QuantizeResult]:
        """Returns (log power estimate (B, 513), quantiser result)."""
        q = self.quantize(self.encode(x))
        return self.decode_log(q.z_q), q

    def loss(self, batch: Tensor | Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Itakura-Saito divergence (mean over bins and frames) + commitment."""
        x = batch["audio"] if isinstance(batch, Mapping) else batch
        log_hat, q = self(x)
        rec = itakura_saito(x, log_hat)
        loss = rec + q.commit_loss
        return loss, _metrics(loss, rec, q, self.dims.n_codes)

    def feature(self, x: Tensor) -> Tensor:
        """Power spectra (..., 513) -> continuous features (..., 512)."""
        lead = x.shape[:-1]
        return self.encode(x.reshape(-1, x.shape[-1])).reshape(*lead, -1)

    def decode_feature(self, f: Tensor) -> Tensor:
        """Features (..., 512) -> quantise (no codebook update) -> power spectra (..., 513)."""
        lead = f.shape[:-1]
        z = f.reshape(-1, *self.latent_shape)
        return self.decode(self.quantize(z, update=False).z_q).reshape(*lead, -1)

    def decode_codes(self, codes: Tensor) -> Tensor:
        """codes (B, 64) -> power spectra (B, 513)."""
        return self.decode(self.quantizer.lookup(codes))


def itakura_saito(power: Tensor, log_hat: Tensor) -> Tensor:
    """Mean IS divergence d(x | x_hat) = x/x_hat - log(x/x_hat) - 1 with x_hat = exp(log_hat).

    Computed in the log domain (no overflow/division by zero); both sides floored at POWER_FLOOR.
    """
    log_x = torch.log(power.float() + POWER_FLOOR)
    log_hat = torch.logaddexp(log_hat.float(), torch.tensor(POWER_FLOOR, device=log_hat.device).log())
    diff = log_x - log_hat
    return (torch.exp(diff) - diff - 1.0).mean()


def _metrics(loss: Tensor, rec: Tensor, q: QuantizeResult, n_codes: int) -> dict[str, Tensor]:
    return {
        "loss": loss.detach(),
        "rec": rec.detach(),
        "commit": q.commit_loss.detach(),
        "perplexity": q.perplexity.detach(),
        "usage": VectorQuantizer.usage(q.codes, n_codes),
    }

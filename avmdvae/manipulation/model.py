"""A trained VQ-MDVAE loaded once for inference: media -> latents -> media.

    clip = model.read(video)                  # faces (N,64,64,3) uint8, power (N,513), audio (S,)
    lat = model.encode(clip)                  # Latents(w (1,Dw), zav (1,N,16), za (1,N,8), zv (1,N,4))
    out = model.decode(lat)                   # Decoded(faces (N,64,64,3) uint8, power (N,513))
    wave = model.to_audio(out.power, phase_from=clip.audio)   # or Griffin-Lim (phase_from=None)

How a clip of any length is encoded:

* Stage-1 features are computed in chunks of CHUNK frames (per-frame models: chunking is exact).
* Latents: `MDVAE.encode_sequence` (posterior means, deterministic): w pooled over the clip's
  T-frame windows, the z's from overlapping T-frame windows, as in training (see its docstring).
* Decoding: the MDVAE's decoders over the whole clip ([w, z_t] -> feature), then the stage-1
  decoders in chunks.

A missing modality (`drop="audio"|"visual"`): its features are replaced by their training-set mean
(the MDVAE's input standardisation, stored in the checkpoint), w and the z's are inferred from the
other modality, and both modalities are decoded from the latents. With
`impute_iters > 0` the dropped features are then replaced by their decoded value and the clip is
re-encoded, that many times.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from avmdvae import audio as audio_mod
from avmdvae import media
from avmdvae.constants import Progress, no_progress
from avmdvae.corpus import PreprocessParams
from avmdvae.errors import ConfigError, MediaError
from avmdvae.models.mdvae import MDVAE, Latents

Modality = Literal["audio", "visual"]

CHUNK = 512  # frames per stage-1 / decoder batch (17 s at 30 fps; 512 x 2048 x 4 B = 4 MB of features)
# Features of longer clips are kept in a temporary memory-mapped file instead of RAM:
# 256 MB = about 25k frames (14 min at 30 fps) of 2048 + 512 float32 features.
MAX_RAM_FEATURE_BYTES = 256 << 20



@dataclass
class Clip:
    """An analysed input: what the model sees plus what resynthesis needs."""

    faces: np.ndarray  # (N, 64, 64, 3) uint8 aligned face crops
    power: np.ndarray  # (N, 513) float32 power spectrogram, one frame per video frame
    audio: np.ndarray  # (S,) float32 mono waveform at 16 kHz, sample 0 = frame 0
    fps: float
    source: str = ""

    @property
    def n_frames(self) -> int:
        return len(self.faces)

    @property
    def seconds(self) -> float:
        return self.n_frames / self.fps


@dataclass
class Decoded:
    faces: np.ndarray  # (N, 64, 64, 3) uint8
    power: np.ndarray  # (N, 513) float32


def _alloc(n: int, d: int) -> np.ndarray:
    """(n, d) float32 buffer: RAM when small, else a temporary memory-mapped file (deleted on close)."""
    if n * d * 4 <= MAX_RAM_FEATURE_BYTES:
        return np.empty((n, d), np.float32)
    f = tempfile.TemporaryFile(prefix="avmdvae-feat-")
    return np.memmap(f, dtype=np.float32, mode="w+", shape=(n, d))


class AVModel:
    """A stage-2 MDVAE run with its two stage-1 VQ-VAEs, in eval mode, on one device."""

    def __init__(
        self,
        mdvae: MDVAE,
        vq_audio: torch.nn.Module,
        vq_visual: torch.nn.Module,
        params: PreprocessParams,
        device: str | torch.device = "cpu",
        run: Any = None,
    ) -> None:
        self.mdvae = mdvae.eval()
        self.vq_audio = vq_audio.eval()
        self.vq_visual = vq_visual.eval()
        self.params = params
        self.device = torch.device(device)
        self.run = run  # training.LoadedRun (None for models built in memory)
        self._cropper = None
        d = mdvae.dims
        if vq_audio.feature_dim != d.feat_a or vq_visual.feature_dim != d.feat_v:
            raise ConfigError(
                f"stage-1 features ({vq_audio.feature_dim}, {vq_visual.feature_dim}) do not "
                f"match the MDVAE inputs ({d.feat_a}, {d.feat_v}): use the run's own VQ-VAEs"
            )
        if vq_visual.dims.image_size != params.face_size:
            raise ConfigError(
                f"visual VQ-VAE takes {vq_visual.dims.image_size}px faces but the corpus was "
                f"cropped at {params.face_size}px: use matching runs"
            )

    # ------------------------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls, run: str | os.PathLike[str], device: str | torch.device = "cpu", which: str = "best"
    ) -> AVModel:
        """Load an MDVAE run directory (or .pt) and the stage-1 checkpoints recorded in it."""
        from avmdvae.training import load_run

        path = Path(run)
        if not path.exists():
            raise ConfigError(f"model run {path} not found: pass the -o folder of `avmdvae train mdvae`")
        loaded = load_run(path, which=which, device=device)
        if loaded.kind != "mdvae":
            raise ConfigError(
                f"{path} is a {loaded.kind} run; manipulation needs an MDVAE run (`avmdvae train mdvae`)"
            )
        for m in ("audio", "visual"):
            if m not in loaded.stage1:
                raise ConfigError(
                    f"{path} does not record its {m} VQ-VAE: retrain it with `avmdvae train mdvae`"
                )
        vq = loaded.stage1_models(device=device)  # finds moved run folders; ConfigError when missing
        params = PreprocessParams.from_dict(loaded.corpus["params"])
        return cls(loaded.model, vq["audio"], vq["visual"], params, device, run=loaded)  # type: ignore[arg-type]

    @property
    def fps(self) -> float:
        return self.params.fps

    @property
    def seq_len(self) -> int:
        return self.mdvae.dims.seq_len

    # ------------------------------------------------------------------------------------ analysis
    def cropper(self):  # noqa: ANN201 (FaceCropper)
        if self._cropper is None:
            from avmdvae.preprocess import make_cropper

            self._cropper = make_cropper(self.params, device=str(self.device))
        return self._cropper

    def read(self, video: str | os.PathLike[str], progress: Progress = no_progress) -> Clip:
        """Decode a video, crop its face track and compute its spectrogram (the corpus pipeline).

        Raises MediaError (no audio, unreadable, too short) or NoFaceError, one line each.
        """
        from avmdvae.layouts import SourceClip
        from avmdvae.preprocess import process_clip

        path = Path(video)
        info = media.probe(path)  # MediaError for missing / unreadable files
        if not info.has_audio:
            raise MediaError(f"{path}: no audio track; the model needs the sound as well as the face")
        total = max(1, int(round(info.duration * self.fps)))
        name = f"analyse {path.name}"

        class _Counting:  # wraps the cropper to report frames as they stream through it
            def __init__(self, inner: Any) -> None:
                self.inner = inner

            def crop_clip(self, frames: Iterable[np.ndarray], **kw: Any) -> np.ndarray:
                def counted() -> Iterator[np.ndarray]:
                    for k, f in enumerate(frames):
                        if k % 10 == 0:
                            progress(name, k, total)
                        yield f

                return self.inner.crop_clip(counted(), **kw)

        src = SourceClip(clip_id=path.stem, video=path, speaker="")
        faces, power, _ = process_clip(src, self.params, _Counting(self.cropper()))  # type: ignore[arg-type]
        progress(name, total, total)
        audio = media.read_audio(path, sample_rate=self.params.sample_rate)
        return Clip(faces, power, audio, self.fps, str(path))

    def clip_from_arrays(
        self,
        faces: np.ndarray,
        power: np.ndarray | None = None,
        audio: np.ndarray | None = None,
        fps: float | None = None,
    ) -> Clip:
        """A Clip from arrays: faces (N,64,64,3) uint8 and power (N,513) and/or audio (S,)."""
        fps = self.fps if fps is None else fps
        if abs(fps - self.fps) > 1e-6:
            raise ConfigError(
                f"clip is at {fps:g} fps but the model was trained at {self.fps:g} fps: "
                "resample the frames (media.iter_frames(fps=...)) first"
            )
        faces = np.asarray(faces)
        s = self.params.face_size
        if faces.ndim != 4 or faces.shape[1:] != (s, s, 3) or faces.dtype != np.uint8:
            raise ConfigError(f"faces must be (N, {s}, {s}, 3) uint8, got {faces.shape} {faces.dtype}")
        n = len(faces)
        if audio is None and power is None:
            raise ConfigError("give the audio waveform or its power spectrogram")
        if audio is None:
            audio = np.zeros(audio_mod.num_samples_for(n, fps), np.float32)
        if power is None:
            power = audio_mod.power_spectrogram(
                torch.from_numpy(np.asarray(audio, np.float32)), fps=fps, n_frames=n
            ).numpy()
        if len(power) != n:
            raise ConfigError(f"{n} face frames but {len(power)} spectrogram frames: they must match")
        return Clip(faces, np.asarray(power, np.float32), np.asarray(audio, np.float32), fps)

    # ------------------------------------------------------------------------------------ features
    @torch.no_grad()
    def features(self, clip: Clip, progress: Progress = no_progress) -> tuple[np.ndarray, np.ndarray]:
        """Stage-1 continuous features: (audio (N, Da), visual (N, Dv)) float32, computed in chunks."""
        if abs(clip.fps - self.fps) > 1e-6:
            raise ConfigError(
                f"clip analysed at {clip.fps:g} fps but the model runs at {self.fps:g} fps: "
                "analyse it with this model (AVModel.read)"
            )
        n = clip.n_frames
        xa = _alloc(n, self.mdvae.dims.feat_a)
        xv = _alloc(n, self.mdvae.dims.feat_v)
        for a in range(0, n, CHUNK):
            b = min(a + CHUNK, n)
            xa[a:b] = self.vq_audio.encode_frames(clip.power[a:b])
            xv[a:b] = self.vq_visual.encode_frames(clip.faces[a:b])
            progress("stage-1 encode", b, n)
        return xa, xv

    # ------------------------------------------------------------------------------------ encoding
    @torch.no_grad()
    def encode_features(self, xa: np.ndarray, xv: np.ndarray, progress: Progress = no_progress) -> Latents:
        """Posterior-mean latents of one clip's features (N, Da), (N, Dv): `MDVAE.encode_sequence`."""
        n = len(xa)
        if n == 0 or len(xv) != n:
            raise ConfigError(
                f"need the same number (>= 1) of audio and visual frames, got {len(xa)}, {len(xv)}"
            )
        lat = self.mdvae.encode_sequence(*(torch.from_numpy(np.asarray(x))[None].to(self.device) for x in (xa, xv)))
        progress("encode", n, n)
        return lat

    def encode(
        self,
        clip: Clip,
        drop: Modality | None = None,
        impute_iters: int = 0,
        progress: Progress = no_progress,
    ) -> Latents:
        """Clip -> Latents (batch 1). drop: infer everything from the other modality (module docstring)."""
        xa, xv = self.features(clip, progress)
        if drop is None:
            return self.encode_features(xa, xv, progress)
        if drop not in ("audio", "visual"):
            raise ConfigError(f"--drop {drop!r}: use audio or visual")
        target = xa if drop == "audio" else xv
        target[:] = self.mdvae.norm[drop].mean.cpu().numpy()  # the training-set mean of these features
        lat = self.encode_features(xa, xv, progress)
        for _ in range(impute_iters):
            fa, fv = self.mdvae.decode(lat)
            target[:] = (fa if drop == "audio" else fv)[0].cpu().numpy()
            lat = self.encode_features(xa, xv, progress)
        return lat

    # ------------------------------------------------------------------------------------ decoding
    @torch.no_grad()
    def decode(self, lat: Latents, progress: Progress = no_progress) -> Decoded:
        """Latents (batch 1) -> faces (N, 64, 64, 3) uint8 and power spectrogram (N, 513).

        The MDVAE decodes the whole clip at once (a centred latent, `MDVAEDims.decoder_z`, is centred
        over the clip); the stage-1 decoders run in chunks of CHUNK frames."""
        n = lat.zav.shape[1]
        s = self.params.face_size
        faces = np.empty((n, s, s, 3), np.uint8)
        power = np.empty((n, self.vq_audio.dims.n_bins), np.float32)
        fa, fv = self.mdvae.decode(lat)  # (1, N, feat_a), (1, N, feat_v): 10 KB per frame
        for a in range(0, n, CHUNK):
            b = min(a + CHUNK, n)
            power[a:b] = self.vq_audio.decode_frames(fa[0, a:b])
            faces[a:b] = self.vq_visual.decode_frames(fv[0, a:b])
            progress("decode", b, n)
        return Decoded(faces, power)

    # ------------------------------------------------------------------------------------ audio
    def to_audio(
        self,
        power: np.ndarray,
        phase_from: np.ndarray | None = None,
        n_iter: int = audio_mod.GL_ITERS,
        seed: int = 0,
        progress: Progress = no_progress,
        loudness_from: np.ndarray | None = None,
    ) -> np.ndarray:
        """Waveform (S,) float32 of a power spectrogram (N, 513) at this model's clocks: `audio.to_waveform`."""
        return audio_mod.to_waveform(power, self.fps, self.params.sample_rate, phase_from, n_iter, seed,
                                     progress, loudness_from)


__all__ = [
    "AVModel",
    "Clip",
    "Decoded",
    "Latents",
    "Progress",
]

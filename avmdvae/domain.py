"""Is an input like what the model was trained on? The stage-1 reconstruction error says.

A stage-1 VQ-VAE reconstructs frames like its training data well and anything else badly: a model
trained on drawn faces turns a real face into a cartoon. So each stage-1 run records, at every
validation, its own per-frame reconstruction error on the validation split (checkpoint key
"domain", with a description of the corpus), and `check` measures the same error on a user's
clip: above OUT_OF_DOMAIN_RATIO times the model's validation error, the input is out of the
model's domain and the output will not look or sound like it.

Errors per frame: faces, the mean squared error in [0, 1] units (PSNR = -10 log10 MSE); spectra, the
log-spectral distance in dB (RMS over bins of the dB difference, avmdvae.evaluation.metrics). Frames
go through `feature` -> `decode_feature`, the path resynthesis takes.

Runs trained before this was recorded (the shipped models/demo/ too) get the reference from their
corpus when it is still on disk (cached next to the run in domain.json), else the check is skipped
and says so.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from avmdvae import audio as audio_mod

if TYPE_CHECKING:
    from avmdvae.corpus import Corpus
    from avmdvae.manipulation.model import AVModel, Clip

log = logging.getLogger("avmdvae.domain")

DOMAIN_KEY = "domain"  # checkpoint key of the reference
CACHE_FILE = "domain.json"  # reference computed from the corpus of an older run, next to its checkpoint
REFERENCE_FRAMES = 1024  # validation frames measured (evenly spaced over the split)
INPUT_FRAMES = 256  # frames of an input clip measured (evenly spaced)
CHUNK = 256  # frames per forward pass
# Out of domain above this multiple of the validation error (median over frames). 3x the face MSE is
# 4.8 dB less PSNR; in-domain clips of the test corpora stay within 1.5x.
OUT_OF_DOMAIN_RATIO = 3.0
LSD_EPS = 1e-10  # power floor of the log-spectral distance (as in evaluation.metrics)
SILENT = "the sound is silent"
METRIC = {"visual": "face MSE", "audio": "spectrum log-spectral distance (dB)"}


# ------------------------------------------------------------------------------------ measuring
@torch.no_grad()
def frame_errors(vqvae: nn.Module, modality: str, frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-frame reconstruction error (N,) float64 of a stage-1 VQ-VAE in eval mode.

    frames: faces (N, H, W, 3) uint8 or power spectra (N, 513).
    """
    device = next(vqvae.parameters()).device
    out = []
    for a in range(0, len(frames), CHUNK):
        part = frames[a : a + CHUNK]
        x = (part if torch.is_tensor(part) else torch.from_numpy(np.array(part))).to(device)
        y = vqvae.decode_feature(vqvae.feature(x)).double()
        if modality == "visual":
            ref = x.movedim(-1, -3).double() / 255.0 if x.dtype == torch.uint8 else x.double()
            err = (y - ref).square().flatten(1).mean(1)
        else:
            d = 10 * torch.log10((x.double().clamp_min(0) + LSD_EPS) / (y.clamp_min(0) + LSD_EPS))
            err = d.square().mean(-1).sqrt()
        out.append(err.cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _spaced(n: int, k: int) -> np.ndarray:
    """Up to k indices evenly spaced over [0, n)."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64)) if n else np.zeros(0, np.int64)


def summarise(errors: np.ndarray, modality: str) -> dict[str, Any]:
    """Reference statistics of per-frame errors (plain floats: stored in checkpoints)."""
    out: dict[str, Any] = {
        "metric": METRIC[modality],
        "median": float(np.median(errors)),
        "p90": float(np.percentile(errors, 90)),
        "frames": int(len(errors)),
    }
    if modality == "visual":
        out["psnr_db"] = _psnr(out["median"])
    return out


def _psnr(mse: float) -> float:
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def describe_corpus(corpus: Corpus) -> str:
    """One line: what a corpus holds (clips, speakers, duration, splits, faces, where it came from)."""
    clips = corpus.clips
    p = corpus.params
    minutes = sum(c.n_frames for c in clips) / p.fps / 60
    splits = ", ".join(f"{n} {s}" for s, n in sorted(Counter(c.split for c in clips).items()))
    parents = [str(Path(c.source).parent) for c in clips if c.source]
    try:
        origin = f"; sources under {os.path.commonpath(parents)}" if parents else ""
    except ValueError:  # mixed drives or relative/absolute paths
        origin = ""
    return (
        f"{Path(corpus.root).name}: {len(clips)} clips ({splits}) of {len({c.speaker for c in clips})} "
        f"speakers, {minutes:.1f} min, {p.face_size}px faces at {p.fps:g} fps{origin}"
    )


def corpus_reference(
    vqvae: nn.Module, modality: str, corpus: Corpus, split: str = "validation"
) -> dict[str, Any] | None:
    """The reference of a stage-1 model measured on frames of `split` (any clips when it is empty)."""
    clips = [c for c in corpus.split(split) if c.n_frames > 0] or [c for c in corpus.clips if c.n_frames > 0]
    if not clips:
        return None
    per_clip = max(1, REFERENCE_FRAMES // len(clips))
    errors = []
    for c in clips:
        arr = corpus.faces(c.clip_id) if modality == "visual" else corpus.spec(c.clip_id)
        errors.append(frame_errors(vqvae, modality, arr[_spaced(c.n_frames, per_clip)]))
    return summarise(np.concatenate(errors), modality)


# ------------------------------------------------------------------------------------- checking
@dataclass
class ModalityCheck:
    modality: str
    metric: str
    input_error: float  # median over the frames of the input clip where it is largest
    reference_error: float  # the model's median validation error
    out_of_domain: bool
    clip: str  # that clip's name

    @property
    def ratio(self) -> float:
        return self.input_error / self.reference_error if self.reference_error > 0 else math.inf

    def describe(self) -> str:
        if self.modality == "visual":
            return (
                f"faces of {self.clip}: PSNR {_psnr(self.input_error):.1f} dB vs {_psnr(self.reference_error):.1f} dB "
                f"on its validation faces (MSE {self.ratio:.1f}x)"
            )
        return (
            f"sound of {self.clip}: log-spectral distance {self.input_error:.1f} dB vs {self.reference_error:.1f} dB "
            f"on its validation clips ({self.ratio:.1f}x)"
        )


@dataclass
class DomainCheck:
    """What `check` found for one input; `skipped` says why a modality could not be judged."""

    checks: list[ModalityCheck]
    skipped: dict[str, str]
    corpus: str  # description of the corpus the model was trained on ("" when unknown)

    @property
    def out_of_domain(self) -> list[ModalityCheck]:
        return [c for c in self.checks if c.out_of_domain]


def _stage1_reference(model: AVModel, modality: str) -> tuple[dict[str, Any] | None, str, str]:
    """(reference stats or None, corpus description, why there is none)."""
    from avmdvae.corpus import Corpus
    from avmdvae.errors import AvmdvaeError
    from avmdvae.training import checkpoint as ck

    run = model.run
    if run is None or modality not in run.stage1:
        return None, "", "the model does not record its stage-1 runs"
    path = ck.stage1_checkpoint(run.checkpoint, run.stage1[modality])
    state = ck.load_checkpoint(path)
    stored = state.get(DOMAIN_KEY) or {}
    if modality in stored:
        return stored[modality], stored.get("corpus", ""), ""
    cache = path.parent / CACHE_FILE
    sha = run.stage1[modality]["sha256"]
    if cache.is_file():
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("sha256") == sha and modality in cached:
            return cached[modality], cached.get("corpus", ""), ""
    corpus_path = state["corpus"].get("path", "")
    try:
        corpus = Corpus.open(corpus_path) if corpus_path else None
    except AvmdvaeError:
        corpus = None
    if corpus is None:
        return None, "", (
            f"the {modality} VQ-VAE predates recorded validation errors and its training corpus "
            f"({corpus_path or 'path not recorded'}) is not available"
        )
    vq = model.vq_visual if modality == "visual" else model.vq_audio
    ref = corpus_reference(vq, modality, corpus)
    if ref is None:
        return None, "", f"the training corpus {corpus_path} of the {modality} VQ-VAE has no frames"
    desc = describe_corpus(corpus)
    if os.access(path.parent, os.W_OK):
        from avmdvae.atomic import write_json

        write_json(cache, {"sha256": sha, "corpus": desc, modality: ref})
    return ref, desc, ""


def check(model: AVModel, clips: Sequence[Clip]) -> DomainCheck:
    """Measure the stage-1 reconstruction error of `clips` against the model's validation error
    (silent sound is left out of the audio check: there is nothing to judge)."""
    checks: list[ModalityCheck] = []
    skipped: dict[str, str] = {}
    corpus = ""
    for modality in ("visual", "audio"):
        judged = [c for c in clips if modality == "visual" or not audio_mod.is_silent(c.audio)]
        if not judged:
            skipped[modality] = SILENT
            continue
        ref, desc, why = _stage1_reference(model, modality)
        corpus = corpus or desc
        if ref is None:
            skipped[modality] = why
            continue
        vq = model.vq_visual if modality == "visual" else model.vq_audio
        errors = {  # median per clip: one clip unlike the training data is enough
            _name(c): float(np.median(frame_errors(vq, modality, arr[_spaced(len(arr), INPUT_FRAMES)])))
            for c, arr in ((c, c.faces if modality == "visual" else c.power) for c in judged)
        }
        worst = max(errors, key=errors.__getitem__)
        err = errors[worst]
        checks.append(
            ModalityCheck(
                modality, ref["metric"], err, ref["median"], err > OUT_OF_DOMAIN_RATIO * ref["median"], worst
            )
        )
    return DomainCheck(checks, skipped, corpus)


def warn(result: DomainCheck) -> None:
    """One plain warning (logger `avmdvae.domain`) when an input is out of the model's domain, or a
    note when the check could not be made."""
    bad = result.out_of_domain
    if bad:
        trained = f" ({result.corpus})" if result.corpus else ""
        log.warning(
            f"warning: this input is unlike what the model was trained on{trained}: "
            + "; ".join(c.describe() for c in bad)
            + ". The output will not look or sound like the input. Train on videos like yours: "
            "avmdvae preprocess VIDEOS CORPUS, then avmdvae train vqvae and mdvae on CORPUS (docs/reproduce.md)"
        )
    elif not result.checks and any(k for k in result.skipped if result.skipped[k] != SILENT):
        reasons = "; ".join(dict.fromkeys(v for v in result.skipped.values() if v != SILENT))  # each reason once
        log.warning(f"note: could not check whether the input is like the training data ({reasons})")


def _name(clip: Clip) -> str:
    return Path(clip.source).name or "the input"


def input_problems(clip: Clip, seq_len: int, name: str) -> list[str]:
    """Plain sentences about inputs the model cannot do much with: silent sound, too few frames."""
    out = []
    if audio_mod.is_silent(clip.audio):
        out.append(
            f"the sound of {name} is silent (peak below -80 dBFS): the output sound is made up by the model "
            "from the face alone"
        )
    if clip.n_frames < seq_len:
        out.append(
            f"{name} has {clip.n_frames} frames, fewer than the model's window of {seq_len} frames "
            f"({seq_len / clip.fps:.2f} s): its static factors (w) are inferred from less than the "
            "model was trained on; give a longer clip"
        )
    return out


def audio_unscorable(clip: Clip) -> str | None:
    """Why STOI and SI-SDR against `clip`'s sound cannot be computed (None when they can)."""
    from avmdvae.evaluation.metrics import STOI_MIN_SECONDS

    if audio_mod.is_silent(clip.audio):
        return "the clean sound is silent (peak below -80 dBFS)"
    if clip.seconds < STOI_MIN_SECONDS:
        return f"the clip is {clip.seconds:.2f} s long, STOI needs at least {STOI_MIN_SECONDS:g} s"
    return None


def check_inputs(model: AVModel, clips: Sequence[Clip]) -> DomainCheck:
    """The checks manipulation makes before its work: silent sound and too-short clips (one warning
    line each), then `check` and `warn` (one line at most). Returns what `check` found."""
    for clip in clips:
        for problem in input_problems(clip, model.seq_len, _name(clip)):
            log.warning(f"warning: {problem}")
    result = check(model, clips)
    warn(result)
    return result


__all__ = [
    "DOMAIN_KEY",
    "OUT_OF_DOMAIN_RATIO",
    "audio_unscorable",
    "DomainCheck",
    "ModalityCheck",
    "check",
    "check_inputs",
    "corpus_reference",
    "describe_corpus",
    "frame_errors",
    "input_problems",
    "summarise",
    "warn",
]

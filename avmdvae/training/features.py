"""Stage-2 inputs: continuous stage-1 encoder outputs, computed once per corpus and cached.

Layout, inside the corpus folder (one sub-folder per stage-1 checkpoint, named by its hash, so
several stage-1 runs never mix and a retrained VQ-VAE gets fresh features)::

    CORPUS/features/<sha256 of the stage-1 checkpoint, first 16 hex>/meta.json
    CORPUS/features/<...>/<clip_id>.audio.npy     (N, Da) float32, row k = feature of frame k
    CORPUS/features/<...>/<clip_id>.visual.npy    (N, Dv) float32

Each file is written atomically, so an interrupted computation resumes where it stopped (finished
clips are skipped). Under DDP each rank computes every W-th clip. Training then reads windows of
T frames through memory maps (`training.datasets.FeatureWindows`), never loading the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from avmdvae.atomic import save_npy, write_json
from avmdvae.corpus import ClipRecord, Corpus

FEATURES_DIR = "features"
HASH_CHARS = 16  # 64 bits of the sha256: no accidental collisions between a user's stage-1 runs

FeatureProgress = Callable[[str, int, int], None]  # (what, clips done, clips to do)


def feature_dir(corpus_root: str | Path, stage1_sha256: str) -> Path:
    return Path(corpus_root) / FEATURES_DIR / stage1_sha256[:HASH_CHARS]


def feature_file(directory: Path, clip_id: str, modality: str) -> Path:
    return directory / f"{clip_id}.{modality}.npy"


def _complete(path: Path, n_frames: int, dim: int) -> bool:
    """The file exists and has the expected shape (reading only the .npy header)."""
    if not path.is_file():
        return False
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return arr.shape == (n_frames, dim) and arr.dtype == np.float32


@torch.no_grad()
def compute_features(
    corpus: Corpus,
    vqvae: nn.Module,
    modality: str,
    stage1_sha256: str,
    device: torch.device,
    clips: Sequence[ClipRecord] | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: FeatureProgress | None = None,
) -> Path:
    """Encode every clip (of `clips`, default all) with `vqvae.feature` into the cache; returns its folder.

    Clips already cached with the right shape are skipped. fp32, eval mode (no codebook updates).
    `progress(name, clips done, clips to do)` is called on rank 0 as clips are encoded.
    """
    out = feature_dir(corpus.root, stage1_sha256)
    dim = int(vqvae.feature_dim)
    if rank == 0 and not (out / "meta.json").is_file():
        write_json(out / "meta.json", {"stage1_sha256": stage1_sha256, "modality": modality, "dim": dim})
    out.mkdir(parents=True, exist_ok=True)
    clips = list(corpus.clips if clips is None else clips)
    todo = [c for i, c in enumerate(clips) if i % world_size == rank and c.n_frames > 0]
    todo = [c for c in todo if not _complete(feature_file(out, c.clip_id, modality), c.n_frames, dim)]
    if not todo:
        return out
    was_training = vqvae.training
    vqvae.eval()
    report = progress if progress is not None and rank == 0 else None
    try:
        for done, clip in enumerate(todo, 1):
            arr = corpus.spec(clip.clip_id) if modality == "audio" else corpus.faces(clip.clip_id)
            save_npy(feature_file(out, clip.clip_id, modality), vqvae.encode_frames(arr))
            if report is not None:
                report(f"{modality} features", done, len(todo))
    finally:
        vqvae.train(was_training)
    return out

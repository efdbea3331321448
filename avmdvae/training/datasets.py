"""What the training loop reads: single frames of a corpus (stage 1) and T-frame windows of cached
stage-1 features (stage 2), both through memory maps, a whole batch per `ds[list of indices]`.

    FrameDataset(corpus, "train", "visual")[[3, 7]]      -> {"visual": uint8 (2, 64, 64, 3)}
    FeatureWindows(corpus, "train", dirs, T, hop)[[0, 5]] -> {"audio": (2, T, Da), "visual": (2, T, Dv)}
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from avmdvae.constants import MODALITIES
from avmdvae.corpus import Corpus
from avmdvae.errors import CorpusError
from avmdvae.training.features import feature_file

# Open memory maps per dataset. Each holds a file descriptor (the usual soft limit is 1024), so a corpus of
# 30k clips cannot keep them all open; a miss re-opens the .npy (tens of microseconds, small next to a copy).
MEMMAP_CACHE_SIZE = 256


class MemmapCache:
    """Least-recently-used memory maps, opened by `open(key)` on first use. Never pickled with the
    dataset that owns it (spawned DataLoader workers reopen their maps lazily)."""

    def __init__(self, open: Callable[[Any], np.ndarray], size: int | None = None) -> None:
        self.open = open
        self.size = MEMMAP_CACHE_SIZE if size is None else size
        self._maps: OrderedDict[Hashable, np.ndarray] = OrderedDict()

    def get(self, key: Hashable) -> np.ndarray:
        m = self._maps.get(key)
        if m is None:
            m = self._maps[key] = self.open(key)
            if len(self._maps) > self.size:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(key)
        return m

    def __getstate__(self) -> dict[str, Any]:
        return {"open": self.open, "size": self.size, "_maps": OrderedDict()}


class FrameDataset(Dataset):
    """Single frames of one modality over all clips of a split (stage-1 training).

    Item i maps to a clip through cumulative frame offsets. `gather(indices)` (or `ds[list]`) returns a
    whole batch at once: (B, 513) float32 power spectra or (B, 64, 64, 3) uint8 faces.
    """

    def __init__(self, corpus: Corpus, split: str = "train", modality: str = "visual") -> None:
        if modality not in MODALITIES:
            raise CorpusError(f"unknown modality {modality}; use audio or visual")
        self.modality, self.corpus, self.split = modality, corpus, split
        self.clips = [c for c in corpus.split(split) if c.n_frames > 0]
        if not self.clips:
            raise CorpusError(f"split {split!r} of corpus {corpus.root} has no clips; "
                              f"`avmdvae info {corpus.root}` shows the splits")
        self._offsets = np.concatenate([[0], np.cumsum([c.n_frames for c in self.clips])]).astype(np.int64)
        self._cache = MemmapCache(self._open)

    def _open(self, c: int) -> np.ndarray:
        clip_id = self.clips[c].clip_id
        return self.corpus.spec(clip_id) if self.modality == "audio" else self.corpus.faces(clip_id)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(clip index, frame index within the clip) of item `index`."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        c = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return c, index - int(self._offsets[c])

    def __getitem__(self, index: int | Sequence[int]) -> dict[str, torch.Tensor]:
        if not isinstance(index, (int, np.integer)):
            return {self.modality: self.gather(list(index))}
        c, f = self.locate(int(index))
        return {self.modality: torch.from_numpy(np.array(self._cache.get(c)[f]))}

    def gather(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Frames at `indices` stacked: (B, 513) float32 or (B, 64, 64, 3) uint8."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError("frame index out of range")
        clip_idx = np.searchsorted(self._offsets, idx, side="right") - 1
        order = np.argsort(clip_idx, kind="stable")
        first = self._cache.get(0)
        out = np.empty((len(idx), *first.shape[1:]), dtype=first.dtype)
        for c in np.unique(clip_idx):
            sel = order[clip_idx[order] == c]
            out[sel] = self._cache.get(int(c))[idx[sel] - self._offsets[c]]
        return torch.from_numpy(out)


class FeatureWindows(Dataset):
    """Windows of T consecutive frames of cached stage-1 features (training.features), for one split.

    Window starts of a clip: 0, hop, 2*hop, ... while the window fits (deterministic, so that data
    order depends only on the sampler's (seed, epoch)). Clips shorter than T are left out (`n_short`).
    `ds[list of indices]` -> {modality: float32 (B, T, D)}; a single index gives (T, D).
    """

    def __init__(self, corpus: Corpus, split: str, dirs: dict[str, Path], length: int, hop: int) -> None:
        self.corpus, self.split, self.dirs, self.length = corpus, split, dirs, int(length)
        clips = corpus.split(split)
        self.clips = [c for c in clips if c.n_frames >= self.length]
        self.n_short = len(clips) - len(self.clips)
        starts = [np.arange(0, c.n_frames - self.length + 1, hop, dtype=np.int64) for c in self.clips]
        self._clip = np.concatenate([np.full(len(s), i) for i, s in enumerate(starts)] or [np.zeros(0)]).astype(
            np.int64
        )
        self._start = np.concatenate(starts or [np.zeros(0, dtype=np.int64)])
        for c in self.clips:
            for m, d in dirs.items():
                if not feature_file(d, c.clip_id, m).is_file():
                    raise CorpusError(
                        f"feature cache {d} lacks {c.clip_id}.{m}.npy: delete {d} and train again to recompute it"
                    )
        self._cache = MemmapCache(self._open)

    def _open(self, key: tuple[int, str]) -> np.ndarray:
        c, modality = key
        return np.load(feature_file(self.dirs[modality], self.clips[c].clip_id, modality), mmap_mode="r")

    def __len__(self) -> int:
        return len(self._start)

    def __getitem__(self, index: int | Sequence[int]) -> dict[str, Any]:
        single = isinstance(index, (int, np.integer))
        idx = [int(index)] if single else [int(i) for i in index]
        out: dict[str, Any] = {}
        for m in self.dirs:
            rows = [self._cache.get((int(self._clip[i]), m))[self._start[i] :][: self.length] for i in idx]
            batch = torch.from_numpy(np.stack(rows).astype(np.float32, copy=False))
            out[m] = batch[0] if single else batch
        return out

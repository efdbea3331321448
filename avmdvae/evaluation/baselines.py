"""The unimodal VQ-DSAE baselines as `avmdvae eval` uses them: a DSAE run with its stage-1 VQ-VAE."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from avmdvae.errors import ConfigError
from avmdvae.models.dsae import DSAELatents


class UniModel:
    """A VQ-DSAE run with its stage-1 VQ-VAE: features, encoding of whole clips, decoding to media."""

    def __init__(self, dsae: torch.nn.Module, vq: torch.nn.Module, modality: str, stage1_sha: str,
                 device: torch.device) -> None:
        self.dsae, self.vq, self.modality, self.stage1_sha, self.device = dsae.eval(), vq.eval(), modality, \
            stage1_sha, device

    @classmethod
    def load(cls, run: str | os.PathLike[str], modality: str, device: torch.device) -> UniModel:
        from avmdvae.training import load_run

        if not Path(run).exists():
            raise ConfigError(f"--dsae-{modality} {run} not found: pass the -o folder of "
                              "`avmdvae train dsae`")
        loaded = load_run(run, device=device)
        if loaded.kind != "dsae" or loaded.modality != modality:
            raise ConfigError(f"--dsae-{modality} {run} is a {loaded.kind} {loaded.modality or ''} run: "
                              f"pass a `avmdvae train dsae --modality {modality}` run")
        vq = loaded.stage1_models(device=device)[modality]
        return cls(loaded.model, vq, modality, loaded.stage1[modality]["sha256"], device)

    @property
    def name(self) -> str:
        return f"VQ-DSAE-{self.modality}"

    @torch.no_grad()
    def features(self, media_frames: np.ndarray) -> np.ndarray:
        return self.vq.encode_frames(media_frames)

    @torch.no_grad()
    def encode(self, x: np.ndarray) -> DSAELatents:
        """Features (N, D) -> posterior means, w (1, Dw) and z (1, N, Dz): `DSAE.encode_sequence`."""
        return self.dsae.encode_sequence(torch.from_numpy(np.ascontiguousarray(x))[None].to(self.device))

    @torch.no_grad()
    def decode(self, lat: DSAELatents) -> np.ndarray:
        """-> faces (N, 64, 64, 3) uint8 or power (N, 513) float32."""
        return self.vq.decode_frames(self.dsae.decode(lat)[0][0])

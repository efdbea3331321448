"""Models: stage-1 VQ-VAEs, stage-2 MDVAE and the unimodal DSAE baselines."""

from typing import Any

from torch import nn

from avmdvae.errors import ConfigError
from avmdvae.models.config import AudioVQVAEDims, DSAEDims, MDVAEDims, QuantizerDims, VisualVQVAEDims
from avmdvae.models.dsae import DSAE, DSAELatents
from avmdvae.models.mdvae import MDVAE, Latents, MDVAEOutput, SeqVAEOutput
from avmdvae.models.quantizer import QuantizeResult, VectorQuantizer
from avmdvae.models.vqvae import AudioVQVAE, VisualVQVAE, faces_to_input


def build_model(kind: str, modality: str | None, config: dict[str, Any]) -> nn.Module:
    """The untrained model of a run from its config (used by the tasks and by load_run)."""
    section = config["model"]
    if kind == "vqvae":
        if modality == "visual":
            return VisualVQVAE(VisualVQVAEDims.from_dict(section))
        if modality == "audio":
            return AudioVQVAE(AudioVQVAEDims.from_dict(section))
    elif kind == "mdvae":
        return MDVAE(MDVAEDims.from_dict(section))
    elif kind == "dsae":
        if modality in ("audio", "visual"):
            return DSAE(DSAEDims.from_dict(section), modality)  # type: ignore[arg-type]
    raise ConfigError(f"unknown model {kind!r} / modality {modality!r}: use vqvae, mdvae or dsae")


__all__ = [
    "AudioVQVAE",
    "AudioVQVAEDims",
    "DSAE",
    "DSAEDims",
    "DSAELatents",
    "Latents",
    "MDVAE",
    "MDVAEDims",
    "MDVAEOutput",
    "QuantizeResult",
    "QuantizerDims",
    "SeqVAEOutput",
    "VectorQuantizer",
    "VisualVQVAE",
    "VisualVQVAEDims",
    "build_model",
    "faces_to_input",
]

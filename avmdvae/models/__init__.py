"""Models: stage-1 VQ-VAEs, stage-2 MDVAE and the unimodal DSAE baselines."""

from avmdvae.models.config import AudioVQVAEDims, DSAEDims, MDVAEDims, QuantizerDims, VisualVQVAEDims
from avmdvae.models.dsae import DSAE, DSAELatents
from avmdvae.models.mdvae import MDVAE, Latents, MDVAEOutput, SeqVAEOutput
from avmdvae.models.quantizer import QuantizeResult, VectorQuantizer
from avmdvae.models.vqvae import AudioVQVAE, VisualVQVAE, faces_to_input

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
    "faces_to_input",
]

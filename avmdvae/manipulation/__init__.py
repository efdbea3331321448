"""Manipulation with a trained VQ-MDVAE: resynthesis, factor swaps, interpolation, denoising.

    from avmdvae.manipulation import AVModel, ops
    model = AVModel.load("runs/mdvae")                 # stage-2 run + its stage-1 VQ-VAEs, once
    clip = model.read("a.mp4"); lat = model.encode(clip)  # Latents(w, zav, za, zv)
    dec = model.decode(lat); wave = model.to_audio(dec.power)
    ops.swap(model, "a.mp4", "b.mp4", ["w"], "out.mp4")

See docs/manipulation.md.
"""

from avmdvae.manipulation.model import AVModel, Clip, Decoded
from avmdvae.manipulation.swap import combine, interpolate, stretch

__all__ = ["AVModel", "Clip", "Decoded", "combine", "interpolate", "stretch"]

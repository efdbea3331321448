"""Synthetic audiovisual speech corpus with known generative factors (`avmdvae synth`).

    factors.py   speakers, emotions, sentences and per-clip timelines (all the random draws)
    speech.py    source-filter speech synthesis from a timeline
    render.py    face rendering from a timeline
    counterfactual.py  "A with B's factors" rendered from the timelines (swap ground truth)
    generate.py  clips in the MEAD layout + ground-truth sidecars, resumable, parallel

See docs/synthetic-corpus.md.
"""

from avmdvae.synth.counterfactual import counterfactual_clip
from avmdvae.synth.factors import AROUSAL_VALENCE, EMOTIONS, INTENSITY_SCALE, LEVELS, ClipSpec
from avmdvae.synth.generate import (
    SynthClip,
    SynthOptions,
    SynthResult,
    clip_paths,
    generate_corpus,
    make_clip,
    plan_clips,
)

__all__ = [
    "AROUSAL_VALENCE", "EMOTIONS", "INTENSITY_SCALE", "LEVELS", "ClipSpec", "SynthClip", "SynthOptions",
    "SynthResult", "clip_paths", "counterfactual_clip", "generate_corpus", "make_clip", "plan_clips",
]

"""Synthetic audiovisual speech corpus with known generative factors (`avmdvae synth`).

    factors.py   speakers, emotions, sentences and per-clip timelines (all the random draws)
    speech.py    source-filter speech synthesis from a timeline
    render.py    face rendering from a timeline
    counterfactual.py  "A with B's factors" rendered from the timelines (swap ground truth)
    generate.py  clips in the MEAD layout + ground-truth sidecars, resumable, parallel

See docs/synthetic-corpus.md.
"""

from importlib import import_module
from typing import Any

_FROM = {
    "counterfactual": ("counterfactual_clip",),
    "factors": ("AROUSAL_VALENCE", "EMOTIONS", "INTENSITY_SCALE", "LEVELS", "ClipSpec"),
    "generate": ("SynthClip", "SynthOptions", "SynthResult", "clip_paths", "generate_corpus", "make_clip",
                 "plan_clips"),
}
__all__ = sorted(name for names in _FROM.values() for name in names)


def __getattr__(name: str) -> Any:
    """Import a submodule when one of its names is first used: `avmdvae synth --help` reads the
    emotions from factors.py without importing the speech synthesis (scipy)."""
    for module, names in _FROM.items():
        if name in names:
            return getattr(import_module(f"avmdvae.synth.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""How much of the audio swap fidelity is the generator's noise realisation?

    .venv/bin/python bench/noise_floor.py RUN CORPUS [--split validation] [--pairs 12] [--draws 16] [--oracle 32]

For the swap task's pairs (`avmdvae.evaluation.swap.pick_pairs`, seed 0) and each latent that changes
the audio, the counterfactual is rendered with its own noise draw (the corpus' target before 2026-12-06),
with `--draws` other draws (today's target: their stage-1 spectra averaged in dB) and with `--oracle`
further draws, whose average stands for an ideal swap: one that renders the counterfactual's factors
exactly and knows nothing of its noise. The ideal resynthesis of A is A's own oracle average.
Prints, as medians over pairs: the LSD of one draw and of the averaged target to the oracle, and the
oracle's fidelity against each target (clip(1 - d(o, c) / d(r, c)), as the swap task scores).
A fidelity target above the oracle's is out of reach of any model that does not reproduce the noise.
Results: docs/results.md, twelfth round.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from avmdvae.evaluation import swap as S
from avmdvae.synth.factors import ClipSpec

AUDIO_LATENTS = ("w", "zav", "za", "all")  # the swaps whose counterfactual changes the audio


@dataclass
class Floor:
    one_db: float  # LSD of the corpus' draw to the oracle
    avg_db: float  # LSD of the averaged target to the oracle
    fidelity_one: float  # the oracle's fidelity against one draw
    fidelity_avg: float  # ... against the averaged target


def pair_floor(model: Any, seed: int, a: ClipSpec, b: ClipSpec, n_frames: int, fps: float, draws: int,
               oracle: int) -> dict[str, Floor]:
    """Floor per latent of AUDIO_LATENTS for one pair (A, B)."""
    speakers: dict[int, Any] = {}
    sentences: dict[int, Any] = {}

    def power(latents: list[str], draws_: range) -> np.ndarray:
        return S.counterfactual_power(model, seed, a, b, latents, draws_, n_frames, fps, speakers, sentences)

    ideal = range(draws + 1, draws + oracle + 1)
    r = power([], ideal)
    out = {}
    for latent in AUDIO_LATENTS:
        one, avg, o = power([latent], range(1)), power([latent], range(1, draws + 1)), power([latent], ideal)
        d = S.audio_distance
        out[latent] = Floor(d(one, o), d(avg, o), S.fidelity(d(o, one), d(r, one)), S.fidelity(d(o, avg), d(r, avg)))
    return out


def main() -> None:
    from avmdvae.corpus import Corpus
    from avmdvae.manipulation.model import AVModel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="an MDVAE run (its stage-1 audio VQ-VAE is used)")
    ap.add_argument("corpus", help="a corpus preprocessed from an `avmdvae synth` folder still in place")
    ap.add_argument("--split", default="validation", help="train, validation, test or all")
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--draws", type=int, default=S.NOISE_DRAWS, help="noise draws averaged into the target")
    ap.add_argument("--oracle", type=int, default=32, help="noise draws averaged into the ideal swap")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = AVModel.load(args.run)
    corpus = Corpus.open(args.corpus)
    recs = [r for r in (corpus.clips if args.split == "all" else corpus.split(args.split))
            if S.synth_source(r.source) is not None and corpus.truth(r.clip_id) is not None]
    if not recs:
        raise SystemExit(f"{args.corpus}: no clips of split {args.split} with a synthetic source in place")
    _, desc = S.synth_source(recs[0].source)  # type: ignore[misc]
    seed = int(desc["options"]["seed"])
    names = [s["name"] for s in desc.get("speakers", [])]
    specs = [S.clip_spec(corpus.truth(r.clip_id), names) for r in recs]
    rows: dict[str, list[Floor]] = {k: [] for k in AUDIO_LATENTS}
    pairs = S.pick_pairs(recs, [r.speaker for r in recs], args.pairs, 0)
    for p, (i, j) in enumerate(pairs, 1):
        for latent, f in pair_floor(model, seed, specs[i], specs[j], recs[i].n_frames, float(corpus.params.fps),
                                    args.draws, args.oracle).items():
            rows[latent].append(f)
        print(f"pair {p}/{len(pairs)}", flush=True)
    print(f"| swapped | one draw to the oracle (dB) | {args.draws}-draw target to the oracle (dB) | "
          f"oracle fidelity against one draw | against the {args.draws}-draw target |\n|---|---|---|---|---|")
    for latent, fl in rows.items():
        med = {k: float(np.median([getattr(f, k) for f in fl])) for k in Floor.__dataclass_fields__}
        print(f"| {latent} | {med['one_db']:.2f} | {med['avg_db']:.2f} | {med['fidelity_one']:.2f} | "
              f"{med['fidelity_avg']:.2f} |")


if __name__ == "__main__":
    main()

"""Experiment: how should a trained MDVAE infer the dynamical latents of a clip longer than its T?

Training runs the chains on T-frame windows from a zero state. Three ways to run them on a long clip,
all with w pooled over the clip's T-frame tiles (MDVAE.encode_sequence) and posterior means:
    carry      one pass over the whole clip, the chain state carried from frame to frame
    windows    T-frame windows every T // 2 frames, each frame from the earliest window holding it
               (what MDVAE.encode_sequence does)
    tiles      T-frame windows every T frames (no overlap)
Per mode, on held-out clips (a split of the run's corpus; default: validation), each clip and the
clips of one speaker joined end to end (long clips): per-frame reconstruction MSE of the standardised
stage-1 features, and the per-frame negative ELBO at the posterior means (Gaussian NLL of both
modalities + KL of every z against its prior under the same chain states + KL of w / N).

    .venv/bin/python bench/experiment_long_clips.py RUN CORPUS [--split validation]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avmdvae.corpus import Corpus  # noqa: E402
from avmdvae.manipulation.model import AVModel  # noqa: E402
from avmdvae.models.layers import gaussian_kl, gaussian_nll, unroll  # noqa: E402
from avmdvae.models.seqvae import windows  # noqa: E402


@torch.no_grad()
def score(model, xa: torch.Tensor, xv: torch.Tensor, mode: str) -> tuple[float, float, float]:
    """-> (negative ELBO per frame, audio MSE, visual MSE) of one clip (1, N, D) under `mode`."""
    N, T = xa.shape[1], model.seq_len
    lat = model.encode_sequence(xa, xv)  # w pooled over the tiles; z's as encode_sequence makes them
    y, e = model._embed({"audio": xa, "visual": xv})
    w = lat.w
    if mode == "carry":
        wins = [(0, N)]
    else:
        wins = windows(N, T, T // 2 if mode == "windows" else T)
    L = wins[0][1] - wins[0][0]
    ew = {m: torch.cat([v[:, a:b] for a, b in wins]) for m, v in e.items()}
    zeros = {n: xa.new_zeros(len(wins), L, c.z_dim) for n, c in model.chains.items()}
    ch = unroll(model.chains, model.contexts(ew, w.expand(len(wins), -1)[:, None].expand(-1, L, -1)), zeros)
    starts = torch.tensor([a for a, _ in wins])
    idx = torch.arange(N)
    k = torch.searchsorted(starts + L, idx, right=True)
    pos = idx - starts[k]
    pick = {n: tuple(t[k, pos][None] for t in (*o.post, *o.prior)) for n, o in ch.items()}
    z = {n: p[0] for n, p in pick.items()}
    means = model._decode(w, z)
    lv = model.obs_logvar
    nll = sum(gaussian_nll(y[m], means[m], lv[m] if lv else None) for m in y)
    kl_z = sum(gaussian_kl(*p).sum() for p in pick.values())
    w_mean, w_logvar = model.q_w(torch.cat(list(e.values()), -1)[:, :T])
    kl_w = gaussian_kl(w_mean, w_logvar).sum()
    neg_elbo = (nll.sum() + kl_z + kl_w) / N
    mse = [float((y[m] - means[m]).pow(2).mean()) for m in ("audio", "visual")]
    return float(neg_elbo), *mse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("corpus")
    ap.add_argument("--split", default="validation")
    args = ap.parse_args()
    torch.set_num_threads(1)
    av = AVModel.load(args.run)
    corpus = Corpus.open(args.corpus)
    clips = corpus.split(args.split)
    feats, by_speaker = [], defaultdict(list)
    for rec in clips:
        xa, xv = av.features(av.clip_from_arrays(np.asarray(corpus.faces(rec.clip_id)),
                                                 np.asarray(corpus.spec(rec.clip_id))))
        feats.append((xa, xv))
        by_speaker[rec.speaker].append(len(feats) - 1)
    long = []
    for idx in by_speaker.values():
        for g in range(0, len(idx) - 5, 6):  # six clips end to end: about 18 s
            long.append(tuple(np.concatenate([feats[i][j] for i in idx[g:g + 6]]) for j in (0, 1)))
    print(f"{len(feats)} {args.split} clips (median {int(np.median([len(f[0]) for f in feats]))} frames), "
          f"{len(long)} long clips (median {int(np.median([len(f[0]) for f in long]))} frames), T = {av.seq_len}")
    print("| clips | mode | -ELBO per frame | audio MSE | visual MSE |")
    print("|---|---|---:|---:|---:|")
    for name, group in (("single", feats), ("joined", long)):
        for mode in ("carry", "windows", "tiles"):
            rows = np.array([score(av.mdvae, torch.from_numpy(a)[None], torch.from_numpy(v)[None], mode)
                             for a, v in group])
            m = rows.mean(0)
            print(f"| {name} | {mode} | {m[0]:.1f} | {m[1]:.4f} | {m[2]:.4f} |", flush=True)


if __name__ == "__main__":
    main()

"""A tour of the avmdvae Python API, from nothing to a w-swap, in one script.

    .venv/bin/python examples/api_tour.py OUT [--tiny] [--quiet]

Steps (each is one call of the library; the CLI commands are thin layers over the same calls):

1. `avmdvae.synth.generate.generate_corpus`: a small synthetic corpus in the MEAD layout
   (OUT/synth/<speaker>/video/front/<emotion>/level_<i>/<NNN>.mp4, H.264 + AAC, 30 fps).
2. `avmdvae.layouts.discover` + `avmdvae.preprocess.run_batch`: 64x64 face crops (MTCNN) and
   513-bin power spectrograms, with speaker-disjoint splits, in OUT/corpus.
3. `avmdvae.training.config.resolve` + `avmdvae.training.loop.train` with the tasks of
   `avmdvae.training.tasks`: the two stage-1 VQ-VAEs, then the MDVAE, with the tiny configurations
   of models/tiny/ (seconds each on a CPU; only good for trying the API), in OUT/runs.
4. `avmdvae.manipulation.AVModel`: load the MDVAE run (its VQ-VAEs come with it), read two clips of
   different speakers, encode them to latents (w, z(av), z(a), z(v)), take w from B with
   `avmdvae.manipulation.combine`, decode, invert the spectrogram (Griffin-Lim) and write mp4s
   with `avmdvae.manipulation.ops.write_video`.

Writes OUT/resynth.mp4 (A encoded and decoded), OUT/swap_w.mp4 (A with B's w) and OUT/summary.json
(the shapes printed at the end). `--tiny` makes everything smaller (fewer clips, fewer epochs,
fewer Griffin-Lim iterations) for a quick check; the default is still small (a few minutes on two
CPU cores). Re-running with the same OUT fails on the existing training runs: use a new OUT.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from avmdvae import media
from avmdvae.corpus import Corpus, PreprocessParams
from avmdvae.layouts import discover
from avmdvae.manipulation import AVModel, combine
from avmdvae.manipulation.ops import OutputOptions, write_video
from avmdvae.preprocess import run_batch
from avmdvae.synth.generate import generate_corpus
from avmdvae.training.config import resolve
from avmdvae.training.loop import RunOptions, train
from avmdvae.training.tasks import MDVAETask, VQVAETask

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIGS = REPO / "models" / "tiny"

# Sizes of the two modes. Four speakers is the smallest speaker-disjoint three-way split
# (2 train / 1 validation / 1 test speakers, see avmdvae/layouts.py).
SIZES = {
    "tiny": {"speakers": 4, "sentences": 1, "emotions": ("neutral", "happy"), "frame_size": 128,
             "vq_epochs": 2, "md_epochs": 3, "gl_iters": 8},
    "small": {"speakers": 4, "sentences": 2, "emotions": ("neutral", "happy", "sad"), "frame_size": 192,
              "vq_epochs": 4, "md_epochs": 10, "gl_iters": 32},
}


def shapes(obj: object) -> dict[str, list[int]]:
    """{field: shape} of the array/tensor fields of a dataclass or a NamedTuple (Latents)."""
    fields = obj._asdict() if hasattr(obj, "_asdict") else vars(obj)
    return {k: list(v.shape) for k, v in fields.items() if hasattr(v, "shape")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("api_tour_out"), help="output folder")
    parser.add_argument("--tiny", action="store_true", help="smallest sizes (a quick check)")
    parser.add_argument("--quiet", action="store_true", help="no progress display while training")
    args = parser.parse_args()
    size = SIZES["tiny" if args.tiny else "small"]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    # 1. synthetic talking faces with known generative factors (MEAD layout)
    synth = generate_corpus(out / "synth", n_speakers=size["speakers"], n_sentences=size["sentences"],
                            emotions=size["emotions"], levels=(1,), seed=0, size=size["frame_size"],
                            workers=1)
    print(f"1. synth: {len(synth.videos)} clips in {synth.root}")

    # 2. preprocess: discover the clips (labels from the MEAD paths, speaker-disjoint splits), then crop
    # the faces and compute the spectrograms; run_batch resumes where an earlier run stopped.
    found = discover(out / "synth", layout="mead")
    report = run_batch(found, out / "corpus", PreprocessParams(), workers=1)
    corpus = Corpus.open(out / "corpus")
    print(f"2. preprocess: {report.done + report.already_done} clips, {found.split_rule}")

    # 3. train: stage 1 (one VQ-VAE per modality, single frames), then stage 2 (the MDVAE on the
    # VQ-VAEs' cached encoder outputs). resolve() = defaults <- YAML <- "key=value" overrides.
    opts = RunOptions(device="cpu", progress=not args.quiet, tensorboard=False)
    runs = {}
    for m in ("audio", "visual"):
        cfg = resolve("vqvae", m, TINY_CONFIGS / f"vqvae-{m}.yaml", [f"train.epochs={size['vq_epochs']}"])
        runs[m] = out / "runs" / f"vq-{m}"
        result = train(VQVAETask(corpus.root, m, cfg), runs[m], opts)
        print(f"3. train vqvae {m}: {result.step} steps, best validation loss {result.best_val:.4g}")
    # learned observation variances: with unit variances on these small features the tiny MDVAE tends
    # to leave w unused (every KL ~0), and then a w-swap changes nothing
    md_sets = [f"train.epochs={size['md_epochs']}", "model.learn_obs_var=true"]
    cfg = resolve("mdvae", None, TINY_CONFIGS / "mdvae.yaml", md_sets)
    mdvae_run = out / "runs" / "mdvae"
    result = train(MDVAETask(corpus.root, runs["audio"], runs["visual"], cfg), mdvae_run, opts)
    print(f"3. train mdvae: {result.step} steps, best validation loss {result.best_val:.4g}")

    # 4. manipulate: two clips of different speakers (the first clip of the first and of the last one)
    model = AVModel.load(mdvae_run, device="cpu")
    video_a = synth.videos[0]
    video_b = next(v for v in reversed(synth.videos) if v.parts[-6] != video_a.parts[-6])
    clip_a, clip_b = model.read(video_a), model.read(video_b)  # faces (N,64,64,3), power (N,513), audio
    lat_a, lat_b = model.encode(clip_a), model.encode(clip_b)  # Latents(w (1,Dw), zav/za/zv (1,N,D))
    swapped = combine(lat_a, lat_b, ["w"])  # A's dynamics, B's static factor (speaker, emotion)
    view = OutputOptions(gl_iters=size["gl_iters"])
    outputs = {}
    for name, lat in (("resynth", lat_a), ("swap_w", swapped)):
        dec = model.decode(lat)  # faces (N,64,64,3) uint8, power (N,513)
        wave = model.to_audio(dec.power, n_iter=view.gl_iters)  # Griffin-Lim -> (S,) float32 at 16 kHz
        outputs[name] = out / f"{name}.mp4"
        write_video(outputs[name], dec.faces, wave, model.fps, view)  # faces upscaled to 256 px
    info = media.probe(outputs["swap_w"])

    summary = {
        "video_a": str(video_a),
        "video_b": str(video_b),
        "clip_a": shapes(clip_a),
        "clip_b": shapes(clip_b),
        "latents_a": shapes(lat_a),
        "latents_swap_w": shapes(swapped),
        "decoded": shapes(dec),
        "audio_samples": int(wave.shape[0]),
        "outputs": {k: str(v) for k, v in outputs.items()},
        "swap_w_mp4": {"frames": info.n_frames, "size": [info.width, info.height], "fps": info.fps,
                       "seconds": round(info.duration, 3), "has_audio": info.has_audio},
        "w_changed": float(np.abs((swapped.w - lat_a.w).numpy()).max()),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("4. manipulate:")
    for key in ("clip_a", "latents_a", "latents_swap_w", "decoded"):
        print(f"   {key:15s} {summary[key]}")
    print(f"   wrote {', '.join(summary['outputs'].values())} and {out / 'summary.json'}")


if __name__ == "__main__":
    main()

"""Task adapters: what differs between training a VQ-VAE, the MDVAE and a DSAE baseline.

Each task supplies the model, the train/validation datasets (whose `__getitem__` takes a list of
indices and returns a whole batch), moving a batch to the device and the loss. The loop in
avmdvae.training.loop does everything else. Tasks also run the start-up checks that make
mismatched inputs fail at once with one line: corpus parameters vs model sizes, stage-1 runs of
the wrong kind, modality or shape, corpus preprocessed with other parameters than stage 1 saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from avmdvae.constants import MODALITIES
from avmdvae.corpus import Corpus, PreprocessParams
from avmdvae.errors import ConfigError
from avmdvae.models import build_model
from avmdvae.models.seqvae import resolve_beta
from avmdvae.training import checkpoint as ck
from avmdvae.training.datasets import FeatureWindows, FrameDataset
from avmdvae.training.distributed import DistInfo, barrier, epoch_permutation
from avmdvae.training.features import FeatureProgress, compute_features

# Frames used before step 0 to set the audio input normalisation and to initialise the codebooks
# from encoder outputs (a fixed sample drawn from (seed), identical on every DDP rank).
INIT_SAMPLE_FRAMES = 1024
# Frames used to estimate the per-bin log-power statistics of the audio VQ-VAE input (8192 x 513 x
# 4 B = 17 MB).
STATS_SAMPLE_FRAMES = 8192


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _corpus_info(corpus: Corpus) -> dict[str, Any]:
    return {"path": str(Path(corpus.root).resolve()), "params": corpus.params.to_dict()}


# ---------------------------------------------------------------------------------------------- stage 1
class VQVAETask:
    """Stage 1: one VQ-VAE on single frames of one modality."""

    kind = "vqvae"

    def __init__(self, corpus: str | Path, modality: str, config: dict[str, Any]) -> None:
        if modality not in MODALITIES:
            raise ConfigError(f"unknown modality {modality!r}: use --modality audio or visual")
        self.modality = modality
        self.config = config
        self.corpus = Corpus.open(corpus)
        self.corpus_info = _corpus_info(self.corpus)
        self.stage1: dict[str, dict[str, Any]] = {}
        p, m = self.corpus.params, config["model"]
        if modality == "visual" and m["image_size"] != p.face_size:
            raise ConfigError(
                f"model.image_size {m['image_size']} but corpus {self.corpus.root} has "
                f"{p.face_size}px faces: "
                f"--set model.image_size={p.face_size}"
            )
        if modality == "audio" and m["n_bins"] != p.n_bins:
            raise ConfigError(
                f"model.n_bins {m['n_bins']} but corpus {self.corpus.root} has {p.n_bins}-bin spectra: "
                f"--set model.n_bins={p.n_bins}"
            )
        d = config["data"]
        self._train = FrameDataset(self.corpus, d["train_split"], modality)
        self._val = FrameDataset(self.corpus, d["val_split"], modality)

    def build_model(self) -> nn.Module:
        return build_model(self.kind, self.modality, self.config)

    @torch.no_grad()
    def init_model(self, model: nn.Module, device: torch.device) -> None:
        """Audio input normalisation from training statistics; codebook from encoder outputs.

        Both use fixed samples of training frames drawn from the seed, so that every DDP rank (and a
        single-process run) starts from the same model.
        """
        n, seed = len(self._train), self.config["train"]["seed"]
        perm = epoch_permutation(n, seed, -1)
        if self.modality == "audio":
            power = self._train[perm[:STATS_SAMPLE_FRAMES].tolist()]["audio"]
            model.set_input_stats(power.to(device))  # type: ignore[operator]
        x = self._train[perm[:INIT_SAMPLE_FRAMES].tolist()][self.modality].to(device)
        z_e = model.encode(x)  # type: ignore[operator]
        model.quantizer._init_from(model.quantizer._flatten(z_e.float()))  # type: ignore[union-attr,operator]

    def train_dataset(self) -> Dataset:
        return self._train

    def val_dataset(self) -> Dataset:
        return self._val

    def to_device(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        return _to_device(batch, device)

    def loss(
        self, model: nn.Module, batch: dict[str, Any], step: int, train: bool
    ) -> tuple[torch.Tensor, dict]:
        loss, metrics = model.loss(batch)  # type: ignore[operator]
        metrics = {k: v for k, v in metrics.items() if k != "loss"}
        if train:
            metrics["restarts"] = float(model.quantizer.last_restarts)  # type: ignore[union-attr]
        return loss, metrics

    def frames(self, batch: dict[str, Any]) -> int:
        return len(batch[self.modality])


# ---------------------------------------------------------------------------------------------- stage 2
def load_stage1(run: str | Path, modality: str, option: str) -> tuple[dict[str, Any], nn.Module]:
    """A stage-1 run -> (reference stored in stage-2 checkpoints, VQ-VAE in eval mode), checked."""
    run = Path(run)
    if not run.exists():
        raise ConfigError(f"{option} {run} does not exist: pass the -o folder of `avmdvae train vqvae`")
    loaded = ck.load_run(run)
    if loaded.kind != "vqvae":
        raise ConfigError(f"{option} {run} is a {loaded.kind} run, not a VQ-VAE: pass a `train vqvae` run")
    if loaded.modality != modality:
        raise ConfigError(
            f"{option} {run} is a {loaded.modality} VQ-VAE, not {modality}: pass the {modality} VQ-VAE run"
        )
    ref = {
        "run": str(run.resolve()),
        "checkpoint": str(loaded.checkpoint.resolve()),
        "sha256": loaded.sha256,
        "config": loaded.config,
        "corpus_params": loaded.corpus["params"],
    }
    return ref, loaded.model


class _Stage2Task:
    """Shared by MDVAE and DSAE: cached stage-1 features of one or two modalities, in windows of T."""

    kind: str
    modality: str | None
    modalities: tuple[str, ...]

    def __init__(
        self,
        corpus: str | Path,
        stage1_runs: dict[str, str | Path],
        config: dict[str, Any],
        options: dict[str, str],
    ) -> None:
        self.config = config
        self.stage1 = {}
        self.stage1_models: dict[str, nn.Module] = {}
        for m, run in stage1_runs.items():
            self.stage1[m], self.stage1_models[m] = load_stage1(run, m, options[m])
        params = [PreprocessParams.from_dict(r["corpus_params"]) for r in self.stage1.values()]
        if len(params) == 2:
            bad = params[0].mismatches(params[1], ("fps", "sample_rate", "n_fft", "face_size"))
            if bad:
                raise ConfigError(
                    f"the audio and visual VQ-VAEs were trained on corpora with different {', '.join(bad)}: "
                    "train both on corpora preprocessed with the same parameters"
                )
        # CorpusError (one line) when the corpus was preprocessed with other parameters than stage 1 saw.
        self.corpus = Corpus.open(corpus, expect=params[0])
        self.corpus_info = _corpus_info(self.corpus)
        self._check_dims()
        self._dirs: dict[str, Path] = {}
        self.dist = DistInfo()
        self._train: Dataset | None = None
        self._val: Dataset | None = None

    def _check_dims(self) -> None:
        raise NotImplementedError

    def _feature_key(self, m: str) -> str:
        raise NotImplementedError

    def prepare_features(
        self, device: torch.device, dist_info: DistInfo, progress: FeatureProgress | None = None
    ) -> None:
        """Compute (or reuse) the feature cache of every clip, then build the window datasets."""
        self.dist = dist_info
        for m, model in self.stage1_models.items():
            model.to(device)
            self._dirs[m] = compute_features(
                self.corpus,
                model,
                m,
                self.stage1[m]["sha256"],
                device,
                rank=dist_info.rank,
                world_size=dist_info.world_size,
                progress=progress,
            )
            model.cpu()
        barrier()
        d, t = self.config["data"], self.config["model"]["seq_len"]
        self._train = FeatureWindows(self.corpus, d["train_split"], self._dirs, t, d["window_hop"])
        self._val = FeatureWindows(self.corpus, d["val_split"], self._dirs, t, d["window_hop"])

    @torch.no_grad()
    def init_model(self, model: nn.Module, device: torch.device) -> None:
        """Per-dimension standardisation of each modality's features, from a fixed sample of training
        windows drawn from the seed (the same on every DDP rank)."""
        ds = self.train_dataset()
        n = max(1, INIT_SAMPLE_FRAMES // int(self.config["model"]["seq_len"]))
        perm = epoch_permutation(len(ds), self.config["train"]["seed"], -1)
        batch = ds[perm[:n].tolist()]
        model.fit_input_stats({m: batch[m].flatten(0, 1).to(device) for m in self.modalities})  # type: ignore[operator]

    def build_model(self) -> nn.Module:
        return build_model(self.kind, self.modality, self.config)

    def train_dataset(self) -> Dataset:
        if self._train is None:
            raise RuntimeError("call prepare_features() first")
        return self._train

    def val_dataset(self) -> Dataset:
        if self._val is None:
            raise RuntimeError("call prepare_features() first")
        return self._val

    def to_device(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        return _to_device(batch, device)

    def kl_weight(self, step: int, train: bool) -> float:
        """KL warm-up factor: linear from 0 to 1 over train.kl_warmup_steps; 1 for validation."""
        warmup = self.config["train"]["kl_warmup_steps"]
        if not train or warmup <= 0:
            return 1.0
        return min(1.0, (step + 1) / warmup)

    def kl_weights(self, names: Sequence[str], step: int, train: bool) -> tuple[dict[str, float], float]:
        """(latent -> KL weight, warm-up factor) at this step; validation sees the final weights.

        Without train.beta_start: train.beta and the 0 -> 1 warm-up factor. With it: each weight moves
        linearly from its beta_start (latents it does not name: their beta) to its beta over the same
        steps, under a factor of 1.
        """
        t = self.config["train"]
        beta, ramp = resolve_beta(t["beta"], names), self.kl_weight(step, train)
        if t.get("beta_start") is None:
            return beta, ramp
        start = resolve_beta(t["beta_start"], names)  # checks the latent names
        if isinstance(t["beta_start"], dict):  # the latents it does not name start at their beta
            start = {n: start[n] if n in t["beta_start"] else beta[n] for n in names}
        return {n: start[n] + ramp * (beta[n] - start[n]) for n in names}, 1.0

    def noise(
        self, model: nn.Module, batch_size: int, T: int, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Training noise for this rank's share of the GLOBAL batch.

        Every rank draws the noise of the whole global batch from the same RNG stream and keeps its
        rows (the sampler gives rank r rows r, r+W, ... of each global batch). A DDP run therefore
        uses exactly the noise of a single-process run, and all ranks' RNG streams stay equal.
        """
        w = self.dist.world_size
        return {
            name: torch.randn(batch_size * w, *shape, device=device)[self.dist.rank :: w]
            for name, shape in model.noise_shapes(T).items()  # type: ignore[operator]
        }

    def _seq_loss(
        self, model: nn.Module, inputs: list[torch.Tensor], step: int, train: bool
    ) -> tuple[torch.Tensor, dict]:
        x = inputs[0]
        noise = self.noise(model, x.shape[0], x.shape[1], x.device) if train else None
        beta, kl_weight = self.kl_weights(model.latent_names, step, train)  # type: ignore[arg-type]
        out = model(*inputs, beta=beta, kl_weight=kl_weight, noise=noise)
        return out.loss, {k: v for k, v in out.metrics().items() if k != "loss"}

    def frames(self, batch: dict[str, Any]) -> int:
        x = batch[self.modalities[0]]
        return int(x.shape[0] * x.shape[1])


def _set_feat(config: dict[str, Any], key: str, value: int, default: int, what: str) -> None:
    """Stage-2 input sizes come from the stage-1 runs; an explicit other value is an error."""
    given = config["model"][key]
    if given not in (value, default):
        raise ConfigError(
            f"model.{key} = {given} but the {what} is {value}: "
            f"remove model.{key} from the config"
        )
    config["model"][key] = value


class MDVAETask(_Stage2Task):
    kind = "mdvae"
    modality = None
    modalities = ("audio", "visual")

    def __init__(
        self, corpus: str | Path, audio_run: str | Path, visual_run: str | Path, config: dict[str, Any]
    ) -> None:
        super().__init__(
            corpus,
            {"audio": audio_run, "visual": visual_run},
            config,
            {"audio": "--audio-vqvae", "visual": "--visual-vqvae"},
        )

    def _check_dims(self) -> None:
        from avmdvae.models.config import MDVAEDims

        ref, audio, visual = MDVAEDims(), self.stage1_models["audio"], self.stage1_models["visual"]
        _set_feat(self.config, "feat_a", audio.feature_dim, ref.feat_a, "audio VQ-VAE's feature size")
        _set_feat(self.config, "feat_v", visual.feature_dim, ref.feat_v, "visual VQ-VAE's feature size")
        positions, what = audio.dims.positions, "audio VQ-VAE's number of frequency positions"
        _set_feat(self.config, "audio_positions", positions, ref.audio_positions, what)

    def loss(
        self, model: nn.Module, batch: dict[str, Any], step: int, train: bool
    ) -> tuple[torch.Tensor, dict]:
        return self._seq_loss(model, [batch["audio"], batch["visual"]], step, train)


class DSAETask(_Stage2Task):
    kind = "dsae"

    def __init__(
        self, corpus: str | Path, modality: str, vqvae_run: str | Path, config: dict[str, Any]
    ) -> None:
        if modality not in MODALITIES:
            raise ConfigError(f"unknown modality {modality!r}: use --modality audio or visual")
        self.modality = modality
        self.modalities = (modality,)
        super().__init__(corpus, {modality: vqvae_run}, config, {modality: "--vqvae"})

    def _check_dims(self) -> None:
        from avmdvae.models.config import DSAEDims

        assert self.modality is not None
        feat, ref = self.stage1_models[self.modality].feature_dim, DSAEDims.for_modality(self.modality).feat
        _set_feat(self.config, "feat", feat, ref, f"{self.modality} VQ-VAE's feature size")

    def loss(
        self, model: nn.Module, batch: dict[str, Any], step: int, train: bool
    ) -> tuple[torch.Tensor, dict]:
        assert self.modality is not None
        return self._seq_loss(model, [batch[self.modality]], step, train)


__all__ = ["DSAETask", "MDVAETask", "VQVAETask", "load_stage1"]

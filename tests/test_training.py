"""Training: config, deterministic data order, the shared loop (loss goes down, exact resume),
checkpoints and load_run, the stage-1 feature cache, start-up mismatch errors, every CLI command
with tiny configs, `avmdvae info RUN`, and a 2-process torchrun (gloo) run vs a single process."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from avmdvae.cli import app
from avmdvae.corpus import ClipRecord, CorpusWriter, PreprocessParams
from avmdvae.errors import ConfigError, CorpusError
from avmdvae.training import checkpoint as ck
from avmdvae.training import load_run
from avmdvae.training.config import apply_overrides, defaults, resolve
from avmdvae.training.distributed import DistInfo, GlobalBatchSampler, epoch_permutation
from avmdvae.training.features import feature_dir
from avmdvae.training.loop import RunOptions, TrainSettings, lr_at, train
from avmdvae.training.progress import Reporter
from avmdvae.training.tasks import DSAETask, MDVAETask, VQVAETask

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "tiny"
PARAMS = PreprocessParams(detector="none")
N_FRAMES = 40
QUIET = RunOptions(device="cpu", progress=False, tensorboard=False)


def make_corpus(
    root: Path, params: PreprocessParams = PARAMS, clips: tuple[int, int, int] = (6, 2, 1), seed: int = 0
) -> Path:
    """Patterned clips: moving colour gratings as faces, a gliding harmonic pair as the spectrum."""
    rng = np.random.default_rng(seed)
    w = CorpusWriter(root, params)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    bins = np.arange(params.n_bins)[None]
    t = np.arange(N_FRAMES)
    k = 0
    for split, n in zip(("train", "validation", "test"), clips, strict=True):
        for _ in range(n):
            ph = rng.uniform(0, 2 * np.pi, 3)
            faces = np.stack(
                [
                    0.5 + 0.4 * np.sin(6 * xx + 0.3 * t[:, None, None] + ph[c]) * np.cos(4 * yy + ph[c])
                    for c in range(3)
                ],
                -1,
            )
            f = (rng.uniform(20, 60) + 10 * np.sin(0.2 * t + ph[0]))[:, None]
            spec = (
                1e-3
                + 100 * np.exp(-0.5 * ((bins - f) / 3) ** 2)
                + 30 * np.exp(-0.5 * ((bins - 2 * f) / 3) ** 2)
            )
            cid = f"clip{k:03d}"
            w.write_clip(
                ClipRecord(cid, f"/in/{cid}.mp4", f"s{k % 3}", "neutral", 1, None, N_FRAMES, split),
                (faces * 255).astype(np.uint8),
                spec.astype(np.float32),
            )
            k += 1
    w.rebuild_index()
    return root


def tiny_config(kind: str, modality: str | None = None, *sets: str) -> dict:
    name = f"{kind}-{modality}" if kind != "mdvae" else "mdvae"
    if kind == "mdvae":
        return resolve(kind, None, TINY / f"{name}.yaml", list(sets))
    return resolve(kind, modality, TINY / f"{name}.yaml", list(sets))


def params_of(path: Path) -> dict[str, torch.Tensor]:
    return ck.load_checkpoint(path)["model"]


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k].float(), b[k].float(), atol=atol, rtol=0, msg=k)


def train_lines(run: Path, split: str = "train") -> list[dict]:
    return [
        r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split
    ]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on the shared 2-core machine, 2 OpenMP threads competing with other jobs
    make these small convolutions 10-50x slower (spin-waiting), one thread does not."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("train") / "corpus")


@pytest.fixture(scope="module")
def stage1(corpus, tmp_path_factory) -> dict[str, Path]:
    """Tiny audio and visual VQ-VAE runs on `corpus` (2 epochs each)."""
    root = tmp_path_factory.mktemp("stage1")
    runs = {}
    for m in ("audio", "visual"):
        runs[m] = root / f"vq-{m}"
        train(VQVAETask(corpus, m, tiny_config("vqvae", m)), runs[m], QUIET)
    return runs


# ------------------------------------------------------------------------------------------ config
def test_kl_weights_per_latent_reach_the_loss():
    """train.beta as latent -> weight (a recipe's per-latent KL weights) is kept and used by the task."""
    from avmdvae.models import build_model

    cfg = resolve("mdvae", None, TINY / "mdvae.yaml", ["train.beta={w: 0.0, zv: 2}"])
    assert cfg["train"]["beta"] == {"w": 0.0, "zv": 2}
    assert resolve("mdvae", None, TINY / "mdvae.yaml", ["train.beta={w: 1}", "train.beta=0.5"])["train"]["beta"] == 0.5
    for bad in ("train.beta={w: -1}", "train.beta=[1, 2]", "train.beta=true"):
        with pytest.raises(ConfigError, match="train.beta"):
            resolve("mdvae", None, TINY / "mdvae.yaml", [bad])
    cfg["model"].update(feat_a=6, feat_v=5)
    torch.manual_seed(0)
    model = build_model("mdvae", None, cfg)
    xa, xv = torch.randn(2, 8, 6), torch.randn(2, 8, 5)
    model.fit_input_stats({"audio": xa.reshape(-1, 6), "visual": xv.reshape(-1, 5)})
    noise = {n: torch.randn(2, *shape) for n, shape in model.noise_shapes(8).items()}
    out = model(xa, xv, beta=cfg["train"]["beta"], noise=noise)
    one = model(xa, xv, beta=1.0, noise=noise)
    t = out.terms
    expect = one.loss - (t["kl_w"] - t["kl_zv"]) / xa.shape[1]  # w weighted 0 instead of 1, zv 2 instead of 1
    assert torch.allclose(out.loss, expect, atol=1e-5)


def test_beta_start_moves_each_kl_weight_to_its_beta_over_the_warm_up(corpus, stage1):
    """train.beta_start: per-latent weights go linearly from their start to train.beta over kl_warmup_steps,
    with no 0 -> 1 factor; validation uses the final weights; without it, beta and the factor as before."""
    names = ("w", "zav", "za", "zv")
    sets = ["train.beta={w: 0.5, zav: 1}", "train.beta_start={zav: 10, za: 10, zv: 3}", "train.kl_warmup_steps=100"]
    task = MDVAETask(corpus, stage1["audio"], stage1["visual"], tiny_config("mdvae", None, *sets))
    beta, factor = task.kl_weights(names, 0, train=True)
    assert factor == 1.0 and beta["w"] == 0.5 and beta["zv"] == pytest.approx(3 - 0.02)  # w: not named, no ramp
    assert beta["zav"] == pytest.approx(10 - 0.09) and beta["za"] == pytest.approx(10 - 0.09)
    assert task.kl_weights(names, 49, train=True)[0] == pytest.approx({"w": 0.5, "zav": 5.5, "za": 5.5, "zv": 2.0})
    final = {"w": 0.5, "zav": 1.0, "za": 1.0, "zv": 1.0}
    assert task.kl_weights(names, 99, train=True) == (pytest.approx(final), 1.0)
    assert task.kl_weights(names, 5000, train=True) == (pytest.approx(final), 1.0)
    assert task.kl_weights(names, 0, train=False) == (pytest.approx(final), 1.0)
    plain = MDVAETask(corpus, stage1["audio"], stage1["visual"], tiny_config("mdvae", None, *sets[::2]))
    assert plain.kl_weights(names, 49, train=True) == (final, pytest.approx(0.5))
    for bad in ("train.beta_start={za: -1}", "train.beta_start=high"):
        with pytest.raises(ConfigError, match="train.beta_start must be a number >= 0"):
            tiny_config("mdvae", None, bad)
    typo = MDVAETask(corpus, stage1["audio"], stage1["visual"], tiny_config("mdvae", None, "train.beta_start={z: 2}"))
    with pytest.raises(ConfigError, match="unknown beta key"):
        typo.kl_weights(names, 0, train=True)
    one = tiny_config("mdvae", None, "train.beta_start=4", "train.kl_warmup_steps=10")  # beta 1 in the tiny config
    one_task = MDVAETask(corpus, stage1["audio"], stage1["visual"], one)
    assert one_task.kl_weights(names, 0, train=True)[0] == pytest.approx(dict.fromkeys(names, 3.7))


def test_config_yaml_overrides_and_types(tmp_path):
    cfg = resolve(
        "vqvae",
        "visual",
        TINY / "vqvae-visual.yaml",
        ["train.lr=1e-3", "model.n_codes=32", "train.betas=[0.8, 0.9]", "model.quantizer.decay=0.9"],
    )
    assert cfg["train"]["lr"] == 1e-3 and isinstance(cfg["train"]["lr"], float)
    assert cfg["model"]["n_codes"] == 32 and cfg["model"]["hidden"] == 16  # YAML kept, override applied
    assert cfg["train"]["betas"] == [0.8, 0.9] and cfg["model"]["quantizer"]["decay"] == 0.9
    assert resolve("vqvae", "visual", None, ["train.warmup_steps=3"])["train"]["warmup_steps"] == 3
    assert defaults("vqvae", "audio")["model"]["n_codes"] == 64  # reference sizes by default
    assert apply_overrides(defaults("mdvae"), ["train.epochs=7"])["train"]["epochs"] == 7
    for bad, what in [
        (["train.lrr=1"], "unknown config key 'train.lrr'"),
        (["train.epochs=two"], "must be of type int"),
        (["train.precision=fp8"], "train.precision"),
        (["model.n_codes=0"], "positive"),
        (["nonsense"], "bad override"),
    ]:
        with pytest.raises(ConfigError, match=what) as e:
            c = resolve("vqvae", "visual", None, bad)
            tasks_build_check(c)
        assert "\n" not in str(e.value)
    # a removed MDVAE switch (docs/results.md, "Switches removed"): dropped at its kept value (configs of older
    # runs hold it), refused with the reason at any other
    assert "decoder" not in resolve("mdvae", None, None, ["model.decoder=concat", "model.swap_cycle=0"])["model"]
    with pytest.raises(ConfigError, match="model.decoder was an ablation switch and has been removed"):
        resolve("mdvae", None, None, ["model.decoder=film"])
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve("vqvae", "visual", tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="is for modality 'audio'"):
        resolve("vqvae", "visual", TINY / "vqvae-audio.yaml")


def tasks_build_check(cfg: dict) -> None:
    from avmdvae.models import build_model

    build_model("vqvae", "visual", cfg)


def test_lr_schedule_warmup_then_cosine():
    s = TrainSettings(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, 100, s) == pytest.approx(0.1) and lr_at(9, 100, s) == pytest.approx(1.0)
    assert lr_at(10, 100, s) == pytest.approx(1.0)
    assert lr_at(55, 100, s) == pytest.approx(0.55)  # half way through the cosine
    assert lr_at(100, 100, s) == pytest.approx(0.1)
    lrs = [lr_at(i, 100, s) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_data_order_is_a_function_of_seed_and_epoch_and_ranks_split_global_batches():
    a, b = epoch_permutation(50, 3, 1), epoch_permutation(50, 3, 1)
    assert torch.equal(a, b) and not torch.equal(a, epoch_permutation(50, 3, 2))
    assert not torch.equal(a, epoch_permutation(50, 4, 1))
    single = list(GlobalBatchSampler(50, 8, 3, 1, DistInfo()))
    assert len(single) == 6 and all(len(x) == 8 for x in single)
    ranks = [list(GlobalBatchSampler(50, 8, 3, 1, DistInfo(r, 2))) for r in range(2)]
    for step, batch in enumerate(single):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)  # same global batch, step by step
    assert list(GlobalBatchSampler(50, 8, 3, 1, DistInfo(), skip=4)) == single[4:]
    with pytest.raises(ConfigError, match="not divisible"):
        GlobalBatchSampler(50, 7, 0, 0, DistInfo(0, 2))


# ------------------------------------------------------------------------------------ loop, stage 1
def test_vqvae_loss_decreases_and_checkpoints_load(corpus, stage1):
    for m, run in stage1.items():
        lines = train_lines(run)
        assert lines[-1]["loss"] < lines[0]["loss"], m
        assert {"rec", "commit", "perplexity", "frames_per_s", "lr"} <= set(lines[0])
        val = train_lines(run, "val")
        assert len(val) == 2 and [v["epoch"] for v in val] == [1, 2]
        loaded = load_run(run)
        assert loaded.kind == "vqvae" and loaded.modality == m and not loaded.model.training
        assert loaded.corpus["params"] == PARAMS.to_dict() and loaded.stage1 == {}
        assert_same_params(loaded.model.state_dict(), params_of(ck.checkpoint_path(run)))
        assert (run / "config.yaml").is_file() and (run / "last.pt").is_file()
    # validation is on the held-out split only: its size is the validation split's frame count
    task = VQVAETask(corpus, "visual", tiny_config("vqvae", "visual"))
    assert len(task.val_dataset()) == 2 * N_FRAMES and len(task.train_dataset()) == 6 * N_FRAMES


class _KillAt:
    """A task that dies (like a kill) when it reaches training step `step`."""

    def __init__(self, task, step: int) -> None:
        self._task, self._step = task, step

    def __getattr__(self, name):
        return getattr(self._task, name)

    def loss(self, model, batch, step, train_):
        if train_ and step == self._step:
            raise KeyboardInterrupt
        return self._task.loss(model, batch, step, train_)


def test_kill_after_one_epoch_and_resume_gives_identical_parameters(corpus, tmp_path):
    cfg = tiny_config("vqvae", "visual")
    train(VQVAETask(corpus, "visual", cfg), tmp_path / "full", QUIET)
    per_epoch = ck.load_checkpoint(tmp_path / "full" / "last.pt")["step"] // 2
    with pytest.raises(KeyboardInterrupt):  # killed on the first step of the second epoch
        train(_KillAt(VQVAETask(corpus, "visual", cfg), per_epoch), tmp_path / "part", QUIET)
    assert ck.load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1
    with pytest.raises(ConfigError, match="--resume"):
        train(VQVAETask(corpus, "visual", cfg), tmp_path / "part", QUIET)
    res = train(
        VQVAETask(corpus, "visual", cfg),
        tmp_path / "part",
        RunOptions(device="cpu", resume=True, progress=False, tensorboard=False),
    )
    assert res.epochs == 2
    assert_same_params(params_of(tmp_path / "full" / "last.pt"), params_of(tmp_path / "part" / "last.pt"))
    assert_same_params(params_of(tmp_path / "full" / "best.pt"), params_of(tmp_path / "part" / "best.pt"))
    # metrics of the resumed run: exactly one val line per epoch
    assert [v["epoch"] for v in train_lines(tmp_path / "part", "val")] == [1, 2]


def test_mid_epoch_kill_and_resume_matches_uninterrupted_mdvae(corpus, stage1, tmp_path):
    sets = ["train.checkpoint_every=2"]
    args = (corpus, stage1["audio"], stage1["visual"])
    train(MDVAETask(*args, tiny_config("mdvae", None, *sets)), tmp_path / "full", QUIET)
    per_epoch = ck.load_checkpoint(tmp_path / "full" / "last.pt")["step"] // 2
    kill = per_epoch + 3  # in the second epoch, one step after a mid-epoch checkpoint
    with pytest.raises(KeyboardInterrupt):
        train(_KillAt(MDVAETask(*args, tiny_config("mdvae", None, *sets)), kill), tmp_path / "part", QUIET)
    st = ck.load_checkpoint(tmp_path / "part" / "last.pt")
    assert (st["epoch"], st["step_in_epoch"]) == (1, 2)
    train(
        MDVAETask(*args, tiny_config("mdvae", None, *sets)),
        tmp_path / "part",
        RunOptions(device="cpu", resume=True, progress=False, tensorboard=False),
    )
    assert_same_params(params_of(tmp_path / "full" / "last.pt"), params_of(tmp_path / "part" / "last.pt"))
    lines = train_lines(tmp_path / "part")
    assert lines[-1]["loss"] < lines[0]["loss"]  # stage-2 loss goes down too
    steps = [r["step"] for r in lines]
    assert steps == sorted(set(steps))  # lines logged after the checkpoint were dropped on resume


# ------------------------------------------------------------------------------- stage 2, features
def test_feature_cache_is_computed_once_and_resumable(corpus, stage1, tmp_path):
    task = DSAETask(corpus, "audio", stage1["audio"], tiny_config("dsae", "audio"))
    task.prepare_features(torch.device("cpu"), DistInfo())
    d = feature_dir(corpus, task.stage1["audio"]["sha256"])
    files = sorted(d.glob("*.audio.npy"))
    assert len(files) == 9  # every clip, test split included (for later evaluation)
    vq = load_run(stage1["audio"]).model
    spec = torch.from_numpy(np.load(corpus / "clips" / "clip000" / "spec.npy"))
    with torch.no_grad():
        expected = vq.feature(spec).numpy()
    np.testing.assert_allclose(np.load(files[0]), expected, rtol=1e-5, atol=1e-5)
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    files[3].unlink()
    task.prepare_features(torch.device("cpu"), DistInfo())
    assert files[3].is_file()
    assert all(f.stat().st_mtime_ns == t for f, t in mtimes.items() if f != files[3])  # others reused
    batch = task.train_dataset()[[0, 1, 2]]
    T = task.config["model"]["seq_len"]
    assert batch["audio"].shape == (3, T, vq.feature_dim) and batch["audio"].dtype == torch.float32


def test_load_run_of_stage2_and_stage1_hash_check(corpus, stage1, tmp_path):
    run = tmp_path / "dsae"
    train(
        DSAETask(corpus, "visual", stage1["visual"], tiny_config("dsae", "visual", "train.epochs=1")),
        run,
        QUIET,
    )
    loaded = load_run(run)
    assert loaded.kind == "dsae" and loaded.modality == "visual"
    ref = loaded.stage1["visual"]
    assert ref["sha256"] == ck.sha256_file(ck.checkpoint_path(stage1["visual"]))
    vq = loaded.stage1_models()["visual"]
    x = torch.rand(2, loaded.config["model"]["seq_len"], 3, 64, 64)
    with torch.no_grad():
        lat = loaded.model.encode_sequence(vq.feature(x))
        assert lat.z.shape == (2, loaded.config["model"]["seq_len"], 5)
    # a stage-1 checkpoint that changed after stage 2 was trained is refused
    loaded.stage1["visual"] = {**ref, "sha256": "0" * 64}
    with pytest.raises(ConfigError, match="sha256 differs"):
        loaded.stage1_models()


# ----------------------------------------------------------------------------- mismatch messages
def test_mismatched_inputs_fail_at_start_with_one_line(corpus, stage1, tmp_path):
    cfg = tiny_config("mdvae")
    cases = [
        (lambda: MDVAETask(corpus, stage1["visual"], stage1["visual"], cfg), "is a visual VQ-VAE, not audio"),
        (lambda: MDVAETask(corpus, stage1["audio"], tmp_path / "nope", cfg), "does not exist"),
        (lambda: DSAETask(corpus, "audio", stage1["visual"], tiny_config("dsae", "audio")), "not audio"),
        (lambda: VQVAETask(tmp_path / "missing", "audio", tiny_config("vqvae", "audio")), "does not exist"),
        (lambda: VQVAETask(corpus, "audio", tiny_config("vqvae", "audio", "model.n_bins=257")), "n_bins"),
    ]
    other = make_corpus(tmp_path / "fps25", PreprocessParams(fps=25.0, detector="none"), clips=(1, 1, 0))
    cases.append((lambda: MDVAETask(other, stage1["audio"], stage1["visual"], cfg), "fps=25"))
    mdvae_run = tmp_path / "md"
    train(
        MDVAETask(corpus, stage1["audio"], stage1["visual"], tiny_config("mdvae", None, "train.epochs=1")),
        mdvae_run,
        QUIET,
    )
    cases.append((lambda: DSAETask(corpus, "audio", mdvae_run, tiny_config("dsae", "audio")), "not a VQ-VAE"))
    cases.append(
        (
            lambda: MDVAETask(
                corpus, stage1["audio"], stage1["visual"], tiny_config("mdvae", None, "model.feat_v=99")
            ),
            "feat_v",
        )
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "best.pt").write_bytes(b"not a checkpoint")
    cases.append((lambda: DSAETask(corpus, "audio", broken, tiny_config("dsae", "audio")), "cannot read"))
    for make, message in cases:
        with pytest.raises((ConfigError, CorpusError), match=message) as e:
            make()
        assert "\n" not in str(e.value), str(e.value)
    # a resume with another model config is refused
    with pytest.raises(ConfigError, match="different config"):
        train(
            MDVAETask(
                corpus,
                stage1["audio"],
                stage1["visual"],
                tiny_config("mdvae", None, "train.epochs=2", "model.w_dim=7"),
            ),
            mdvae_run,
            RunOptions(device="cpu", resume=True, progress=False, tensorboard=False),
        )


# ---------------------------------------------------------------------------------------- CLI
def test_every_train_command_and_info_via_cli(corpus, tmp_path):
    runner = CliRunner()
    common = ["--device", "cpu", "--epochs", "1", "-q"]
    runs = {}
    for m in ("audio", "visual"):
        runs[m] = tmp_path / f"vq-{m}"
        r = runner.invoke(
            app,
            [
                "train",
                "vqvae",
                "--modality",
                m,
                str(corpus),
                "-o",
                str(runs[m]),
                "--config",
                str(TINY / f"vqvae-{m}.yaml"),
                "--seed",
                "1",
                *common,
            ],
        )
        assert r.exit_code == 0, r.output
        assert ck.load_checkpoint(runs[m] / "best.pt")["config"]["train"]["seed"] == 1
    r = runner.invoke(
        app,
        [
            "train",
            "mdvae",
            str(corpus),
            "--audio-vqvae",
            str(runs["audio"]),
            "--visual-vqvae",
            str(runs["visual"]),
            "-o",
            str(tmp_path / "md"),
            "--config",
            str(TINY / "mdvae.yaml"),
            "--set",
            "train.lr=2e-3",
            "--batch-size",
            "4",
            "--bf16",
            *common,
        ],
    )
    assert r.exit_code == 0, r.output
    st = ck.load_checkpoint(tmp_path / "md" / "last.pt")
    assert st["config"]["train"]["precision"] == "bf16" and st["config"]["train"]["batch_size"] == 4
    for m in ("audio", "visual"):
        r = runner.invoke(
            app,
            [
                "train",
                "dsae",
                "--modality",
                m,
                str(corpus),
                "--vqvae",
                str(runs[m]),
                "-o",
                str(tmp_path / f"ds-{m}"),
                "--config",
                str(TINY / f"dsae-{m}.yaml"),
                *common,
            ],
        )
        assert r.exit_code == 0, r.output
    # `--resume` alone continues the stored config (here: one more epoch)
    r = runner.invoke(
        app,
        [
            "train",
            "dsae",
            "--modality",
            "audio",
            str(corpus),
            "--vqvae",
            str(runs["audio"]),
            "-o",
            str(tmp_path / "ds-audio"),
            "--resume",
            "--epochs",
            "2",
            "--device",
            "cpu",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    assert ck.load_checkpoint(tmp_path / "ds-audio" / "last.pt")["epoch"] == 2
    # info RUN: kind, corpus params, stage-1 hashes, metrics, config
    r = runner.invoke(app, ["info", str(tmp_path / "md")])
    assert r.exit_code == 0, r.output
    for m in ("audio", "visual"):
        assert ck.sha256_file(runs[m] / "best.pt") in r.output
    assert "model: mdvae" in r.output and "fps=30.0" in r.output and "last val:" in r.output
    assert "kl_weight" not in r.output and "kl_warmup_steps: 10" in r.output
    # user errors: exit 2, one line, no traceback
    for args, message in [
        (
            ["train", "vqvae", "--modality", "audio", str(corpus), "-o", str(runs["audio"]), *common],
            "--resume",
        ),
        (
            ["train", "vqvae", "--modality", "smell", str(corpus), "-o", str(tmp_path / "x"), *common],
            "modality",
        ),
        (
            [
                "train",
                "vqvae",
                "--modality",
                "audio",
                str(corpus),
                "-o",
                str(tmp_path / "y"),
                "--set",
                "train.foo=1",
            ],
            "unknown config key",
        ),
        (
            [
                "train",
                "mdvae",
                str(corpus),
                "--audio-vqvae",
                str(tmp_path / "none"),
                "--visual-vqvae",
                str(runs["visual"]),
                "-o",
                str(tmp_path / "z"),
                *common,
            ],
            "does not exist",
        ),
    ]:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        assert message in r.output and "Traceback" not in r.output


# ---------------------------------------------------------------------------------------- DDP
def _torchrun(args: list[str], nproc: int, port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(port),
            "-m",
            "avmdvae",
            *args,
        ]
    else:
        cmd = [sys.executable, "-m", "avmdvae", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_process_gloo_run_agrees_with_single_process(corpus, stage1, tmp_path):
    """Same global batch: DDP (2 ranks, gloo) and a single process train the same parameters."""
    short = ["--device", "cpu", "-q", "--epochs", "1", "--set", "train.max_steps_per_epoch=3"]
    jobs = {
        "vq": [
            "train",
            "vqvae",
            "--modality",
            "visual",
            str(corpus),
            "--config",
            str(TINY / "vqvae-visual.yaml"),
        ],
        "md": [
            "train",
            "mdvae",
            str(corpus),
            "--audio-vqvae",
            str(stage1["audio"]),
            "--visual-vqvae",
            str(stage1["visual"]),
            "--config",
            str(TINY / "mdvae.yaml"),
        ],
    }
    for name, args in jobs.items():
        for nproc in (2, 1):
            out = tmp_path / f"{name}{nproc}"
            p = _torchrun([*args, "-o", str(out), *short], nproc, 29400 + os.getpid() % 500)
            assert p.returncode == 0, p.stderr[-2000:]
        a, b = (
            ck.load_checkpoint(tmp_path / f"{name}2" / "last.pt"),
            ck.load_checkpoint(tmp_path / f"{name}1" / "last.pt"),
        )
        assert a["step"] == b["step"] == 3
        # float rounding of the gradient all-reduce only (Adam's first steps amplify it a little);
        # the EMA codebook statistics are counts, where one borderline vector can change its code
        ema = ("cluster_size", "embed_sum")
        learned = {k: v for k, v in a["model"].items() if not k.endswith(ema)}
        assert_same_params(learned, {k: b["model"][k] for k in learned}, atol=1e-4)
        for k in a["model"]:
            if k.endswith(ema):
                torch.testing.assert_close(a["model"][k], b["model"][k], atol=0.05, rtol=0.01)


# ------------------------------------------------------------------ following a run (issue 17)
def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "avmdvae", *args], env=env, text=True, timeout=300, **kw)


def _vq_args(corpus: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "vqvae", "--modality", "visual", str(corpus), "-o", str(run), "--config",
            str(TINY / "vqvae-visual.yaml"), "--device", "cpu", "--threads", "1", *extra]


def test_the_training_library_does_not_import_the_cli(corpus, tmp_path):
    """Training with progress and a resume note, through the library only, never loads avmdvae.cli."""
    code = (
        "import sys; from avmdvae.training.config import resolve; "
        "from avmdvae.training.loop import RunOptions, train; from avmdvae.training.tasks import VQVAETask; "
        f"cfg = resolve('vqvae', 'visual', {str(TINY / 'vqvae-visual.yaml')!r}, "
        "['train.epochs=1', 'train.max_steps_per_epoch=2']); "
        f"train(VQVAETask({str(corpus)!r}, 'visual', cfg), {str(tmp_path / 'run')!r}, "
        "RunOptions(device='cpu', resume=True, tensorboard=False)); "
        "print(sorted(m for m in sys.modules if m.startswith('avmdvae.cli')))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "no checkpoint yet" in out.stderr and "step 2/2" in out.stdout
    pkg = REPO / "avmdvae"
    library = [p for p in pkg.rglob("*.py") if "cli" not in p.relative_to(pkg).parts and p.name != "__main__.py"]
    imports = re.compile(r"^\s*(from avmdvae\.cli|import avmdvae\.cli|from avmdvae import cli)", re.M)
    assert [p.name for p in library if imports.search(p.read_text())] == []


def test_progress_goes_to_a_file_as_complete_labelled_lines(corpus, tmp_path):
    """stdout redirected (nohup, cluster logs): plain complete lines with every figure labelled."""
    log_path = tmp_path / "train.log"
    with open(log_path, "w") as f:
        p = _cli(*_vq_args(corpus, tmp_path / "run", "--set", "train.log_every=2"), stdout=f, stderr=subprocess.PIPE)
    assert p.returncode == 0, p.stderr
    lines = log_path.read_text().splitlines()
    steps = [ln for ln in lines if ln.startswith("step ")]
    total = ck.load_checkpoint(tmp_path / "run" / "last.pt")["step"]
    assert len(steps) >= total // 2  # one line every log_every=2 steps, none lost to a live display
    first = steps[0]
    assert first.startswith(f"step 2/{total} ") and "epoch 1/2" in first
    for label in ("loss ", "rec (face MSE) ", "face PSNR ", " dB", "codebook usage ", "%", "commitment ",
                  "lr ", "frames/s ", "ETA "):
        assert label in first, (label, first)
    assert all(len(ln) > 80 for ln in steps) and "…" not in "".join(lines)  # not cut at 80 columns
    val = [ln for ln in lines if ln.startswith("validation ")]
    assert len(val) == 2 and "face PSNR" in val[0] and "epoch 1/2" in val[0]
    assert lines.index(val[0]) < lines.index(steps[-1])  # printed as it happens, not at the end
    logged = train_lines(tmp_path / "run", "val")[0]
    assert logged["psnr_db"] == pytest.approx(10 * np.log10(1 / logged["rec"]))
    # the run knows what it was trained on, and says so
    info = CliRunner().invoke(app, ["info", str(tmp_path / "run")])
    assert info.exit_code == 0, info.output
    assert "trained on: corpus: 9 clips (1 test, 6 train, 2 validation) of 3 speakers" in info.output
    assert "validation error per frame (visual): face MSE median" in info.output and " dB)" in info.output


def test_max_steps_stops_cleanly_validated_saved_and_resumable(corpus, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    r = runner.invoke(app, _vq_args(corpus, run, "--max-steps", "3", "-q"))
    assert r.exit_code == 0, r.output
    assert "stopped at step 3 (--max-steps reached)" in r.output and "--resume" in r.output
    last, best = ck.load_checkpoint(run / "last.pt"), ck.load_checkpoint(run / "best.pt")
    assert last["step"] == 3 and best["step"] == 3 and last["metrics"]["val"]  # validated: usable
    resume = r.output.split("continue with: ")[1].split()
    assert resume[:3] == ["avmdvae", "train", "vqvae"] and resume[-2:] == ["--device", "cpu"]
    r = runner.invoke(app, [*resume[1:], "-q"])
    assert r.exit_code == 0, r.output
    total = ck.load_checkpoint(run / "last.pt")["step"]
    assert "done" in r.output and total > 3
    # the time limit stops the same way (0 s: after the first step)
    res = train(VQVAETask(corpus, "visual", tiny_config("vqvae", "visual")), tmp_path / "t",
                RunOptions(device="cpu", progress=False, tensorboard=False, time_limit=0))
    assert res.stopped == "time-limit" and res.step == 1
    r = runner.invoke(app, _vq_args(corpus, tmp_path / "x", "--time-limit", "ten minutes"))
    assert r.exit_code == 2 and "--time-limit" in r.output


def test_warmups_longer_than_the_run_warn_and_the_kl_ramp_is_sized_from_the_run(corpus, stage1, tmp_path):
    r = CliRunner().invoke(app, _vq_args(corpus, tmp_path / "vq", "-q", "--set", "train.warmup_steps=1000"))
    assert r.exit_code == 0, r.output
    assert "warm-up (train.warmup_steps=1000) is as long as the whole run" in " ".join(r.output.split())
    notes = []

    class Keep(Reporter):  # a reporter that keeps the notes
        def note(self, message: str) -> None:
            notes.append(message)

    cfg = tiny_config("mdvae", None, "train.kl_warmup_steps=-1")
    assert defaults("mdvae")["train"]["kl_warmup_steps"] == -1  # the default: sized from the run
    res = train(MDVAETask(corpus, stage1["audio"], stage1["visual"], cfg), tmp_path / "md",
                RunOptions(device="cpu", tensorboard=False, reporter=Keep()))
    stored = ck.load_checkpoint(tmp_path / "md" / "last.pt")["config"]["train"]["kl_warmup_steps"]
    assert stored == round(0.2 * res.step)
    assert f"the KL weight ramps up over the first {stored} steps, a fifth of this run" in notes[0]

    cfg = tiny_config("mdvae", None, "train.kl_warmup_steps=1000")
    train(MDVAETask(corpus, stage1["audio"], stage1["visual"], cfg), tmp_path / "md2",
          RunOptions(device="cpu", tensorboard=False, reporter=Keep()))
    assert any("KL warm-up (train.kl_warmup_steps=1000) is longer than the whole run" in n for n in notes)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_saves_the_step_says_where_and_how_to_resume(corpus, tmp_path, sig, code):
    """A cluster's time limit (SIGTERM) or Ctrl-C: stop after the current step, keep it, say how to go on."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = _vq_args(corpus, run, "--epochs", "200", "--set", "train.log_every=1")
    proc = subprocess.Popen([sys.executable, "-m", "avmdvae", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for line in proc.stdout:
            if line.startswith("step 3/"):
                break
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code
    assert f"stopped by {sig.name}" in err and "Traceback" not in err
    step = int(err.split("after step ")[1].split(":")[0])
    assert f"{run / 'last.pt'} holds that step" in " ".join(err.split())
    assert "--resume" in err and ck.load_checkpoint(run / "last.pt")["step"] == step >= 3


def test_a_run_stopped_by_sigterm_resumes_to_the_same_parameters(corpus, tmp_path):
    """The state saved at a signal stop is a proper mid-epoch checkpoint (exact resume contract)."""
    cfg = tiny_config("vqvae", "visual", "train.log_every=1")
    train(VQVAETask(corpus, "visual", cfg), tmp_path / "full", QUIET)

    class TermAt(Reporter):  # the cluster's SIGTERM arrives during step 3
        def train(self, snap) -> None:
            if snap.step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    opts = RunOptions(device="cpu", tensorboard=False, reporter=TermAt())
    before = signal.getsignal(signal.SIGTERM)
    res = train(VQVAETask(corpus, "visual", cfg), tmp_path / "part", opts)
    st = ck.load_checkpoint(tmp_path / "part" / "last.pt")
    assert res.stopped == "SIGTERM" and st["step"] == res.step >= 3 and st["step_in_epoch"] == res.step
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    train(VQVAETask(corpus, "visual", cfg), tmp_path / "part",
          RunOptions(device="cpu", resume=True, progress=False, tensorboard=False))
    assert_same_params(params_of(tmp_path / "full" / "last.pt"), params_of(tmp_path / "part" / "last.pt"))


def test_every_figure_is_labelled():
    from avmdvae.training.progress import format_metrics

    stage1 = format_metrics({"usage": 0.5, "rec": 0.01, "psnr_db": 20.0, "lr": 1e-3, "loss": 0.02}, "vqvae", "visual")
    assert stage1 == "loss 0.02 | rec (face MSE) 0.01 | face PSNR 20.00 dB | codebook usage 50% | lr 0.001"
    assert format_metrics({"rec": 0.4}, "vqvae", "audio") == "rec (Itakura-Saito) 0.4"
    stage2 = format_metrics({"kl_w": 0.3, "rec_audio": 22.0, "elbo": -3.0}, "mdvae", None)
    assert stage2 == "ELBO -3 | KL(w) 0.3 | rec audio (-log-lik.) 22"


@pytest.mark.slow
def test_train_compile_runs_the_compiled_step_and_saves_plain_weights(corpus, stage1, tmp_path):
    """`--set train.compile=true`: inductor compiles the step; the checkpoint loads into a plain model."""
    cfg = tiny_config("mdvae", None, "train.epochs=1", "train.compile=true")
    train(MDVAETask(corpus, stage1["audio"], stage1["visual"], cfg), tmp_path / "c", QUIET)
    lines = train_lines(tmp_path / "c")
    assert lines and all(math.isfinite(r["loss"]) for r in lines)
    assert load_run(tmp_path / "c").kind == "mdvae"

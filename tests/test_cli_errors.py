"""Issue 17: mistakes are one-line errors (exit 2, no traceback) found before the work starts; outputs
are written all or none, never over an input; help is fast.

The command-level tests replace the model loaders with ones that fail the test: every check here must
happen before a model is loaded. The library-level tests use a stand-in model (no network weights).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from avmdvae import media
from avmdvae.cli import app
from avmdvae.errors import ConfigError
from avmdvae.manipulation import ops
from avmdvae.manipulation.model import AVModel, Clip, Decoded
from avmdvae.manipulation.sheets import SheetRow, write_sheet
from avmdvae.training import checkpoint as ck
from avmdvae.training.config import resolve

REPO = Path(__file__).resolve().parents[1]
DEMO_RUN = REPO / "models" / "demo" / "mdvae"
N = 12  # frames of the test clips


def _fail_load(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the model was loaded before the options were checked")


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AVModel, "load", classmethod(_fail_load))


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    out = []
    for name in ("a.mp4", "b.mp4"):
        frames = (rng.random((N, 64, 64, 3)) * 255).astype(np.uint8)
        audio = (0.1 * rng.standard_normal(16000 * N // 30)).astype(np.float32)
        media.write_av(root / name, frames, audio)
        out.append(root / name)
    return out[0], out[1]


def _args(command: str, a: Path, b: Path, out: Path) -> list[str]:
    model = ["-m", str(DEMO_RUN)]
    return {
        "resynth": ["resynth", str(a), *model, "-o", str(out)],
        "swap": ["swap", str(a), str(b), "-f", "w", *model, "-o", str(out)],
        "interpolate": ["interpolate", str(a), str(b), *model, "-o", str(out)],
        "denoise": ["denoise", str(a), *model, "-o", str(out)],
    }[command]


def _one_line_error(args: list[str], needle: str) -> str:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, (args, res.output, res.exception)
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit), (res.output, res.exception)
    assert needle in res.output, (args, res.output)
    return res.output


MANIPULATIONS = ("resynth", "swap", "interpolate", "denoise")


def _unwritable(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "a-file").write_text("x")
    return {"proc": Path("/proc/avmdvae-test/out"), "under-a-file": tmp_path / "a-file" / "out"}


# ------------------------------------------------------------------------------- 1. unwritable outputs
@pytest.mark.parametrize("command", MANIPULATIONS)
@pytest.mark.parametrize("where", ["proc", "under-a-file"])
def test_unwritable_video_output_is_refused_before_loading(
    command: str, where: str, videos: tuple[Path, Path], tmp_path: Path, no_model: None
) -> None:
    out = _unwritable(tmp_path)[where].with_suffix(".mp4")
    _one_line_error(_args(command, *videos, out), "cannot write -o")


@pytest.mark.parametrize(
    ("command", "option", "suffix"),
    [("resynth", "--sheet", ".png"), ("swap", "--sheet", ".jpg"), ("interpolate", "--grid", ".png"),
     ("denoise", "--metrics", ".json"), ("denoise", "--sheet", ".png")],
)
def test_unwritable_extra_output_is_refused_before_loading(
    command: str, option: str, suffix: str, videos: tuple[Path, Path], tmp_path: Path, no_model: None
) -> None:
    for bad in _unwritable(tmp_path).values():
        args = [*_args(command, *videos, tmp_path / "out.mp4"), option, str(bad.with_suffix(suffix))]
        _one_line_error(args, f"cannot write {option}")
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_read_only_folder_is_refused(videos: tuple[Path, Path], tmp_path: Path, no_model: None) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        _one_line_error(_args("resynth", *videos, ro / "out.mp4"), "cannot write -o")
    finally:
        ro.chmod(0o755)


def test_eval_demo_synth_refuse_unwritable_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import avmdvae.demo
    from avmdvae.evaluation import tasks

    monkeypatch.setattr(tasks.Evaluator, "load", classmethod(_fail_load))
    monkeypatch.setattr(avmdvae.demo, "run_demo", _fail_load)
    for bad in _unwritable(tmp_path).values():
        _one_line_error(["eval", str(DEMO_RUN), str(tmp_path), "-o", str(bad), "-q"], "cannot write -o")
        _one_line_error(["demo", str(bad), "-q"], "cannot write OUT")
        _one_line_error(["synth", str(bad)], "cannot write OUT")


def test_train_and_preprocess_refuse_unwritable_outputs(videos: tuple[Path, Path], tmp_path: Path) -> None:
    for bad in _unwritable(tmp_path).values():
        _one_line_error(["train", "vqvae", str(tmp_path), "--modality", "audio", "-o", str(bad)], "cannot write -o")
        _one_line_error(["preprocess", str(videos[0]), str(bad), "--detector", "none"], "cannot write OUT")


class StandIn:
    """Just enough of an AVModel for ops: clips of random frames, decode = identity."""

    fps = 30.0
    run = None
    seq_len = N

    def read(self, video: Any, progress: Any = None) -> Clip:
        rng = np.random.default_rng(1)
        faces = (rng.random((N, 64, 64, 3)) * 255).astype(np.uint8)
        power = rng.random((N, 513)).astype(np.float32)
        return Clip(faces, power, rng.standard_normal(16000 * N // 30).astype(np.float32) * 0.1, 30.0, str(video))

    def encode(self, clip: Clip, **kwargs: Any) -> Clip:
        return clip

    def decode(self, clip: Clip, progress: Any = None) -> Decoded:
        return Decoded(clip.faces, clip.power)

    def to_audio(self, power: np.ndarray, **kwargs: Any) -> np.ndarray:
        return np.zeros(16000 * len(power) // 30, np.float32)


def _boom(*args: Any, **kwargs: Any) -> None:
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("failing", ["sheet", "metrics"])
def test_failing_extra_output_leaves_no_partial_set(
    failing: str, videos: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, sheet, metrics = tmp_path / "out.mp4", tmp_path / "sheet.png", tmp_path / "m.json"
    out.write_bytes(b"an earlier result")
    if failing == "sheet":
        monkeypatch.setattr(ops, "write_sheet", _boom)
    else:
        monkeypatch.setattr("avmdvae.atomic.write_json", _boom)
    opts = ops.OutputOptions(sheet=sheet)
    with pytest.raises(OSError):
        ops.denoise(StandIn(), videos[0], out, opts=opts, metrics_path=metrics)  # type: ignore[arg-type]
    assert out.read_bytes() == b"an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no new output, no temporary


def test_outputs_all_written_when_all_succeed(videos: tuple[Path, Path], tmp_path: Path) -> None:
    out, sheet, metrics = tmp_path / "out.mp4", tmp_path / "sheet.jpg", tmp_path / "m.json"
    res = ops.denoise(StandIn(), videos[0], out, opts=ops.OutputOptions(sheet=sheet), metrics_path=metrics)  # type: ignore[arg-type]
    assert media.probe(out).n_frames == N
    assert sheet.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, as the suffix says
    assert res.extra_outputs == [metrics, sheet]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "out.mp4", "sheet.jpg"]


# ------------------------------------------------------------------------------- 2. output is an input
@pytest.mark.parametrize(
    ("command", "option", "target"),
    [("swap", "-o", "a"), ("swap", "-o", "b"), ("resynth", "-o", "a"), ("denoise", "-o", "a"),
     ("interpolate", "-o", "b"), ("swap", "--sheet", "a"), ("interpolate", "--grid", "b"),
     ("denoise", "--metrics", "a"), ("resynth", "--sheet", "out")],
)
def test_output_that_is_an_input_or_another_output_is_refused(
    command: str, option: str, target: str, videos: tuple[Path, Path], tmp_path: Path, no_model: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = videos
    before = {p: p.read_bytes() for p in (a, b)}
    monkeypatch.chdir(a.parent)
    out = tmp_path / "out.mp4"
    paths = {"a": Path("a.mp4"), "b": Path(".") / ".." / a.parent.name / "b.mp4", "out": out}
    args = _args(command, a, b, out)
    if option == "-o":
        args[args.index("-o") + 1] = str(paths[target])
    else:
        args += [option, str(paths[target])]
    if option in ("--sheet", "--grid"):  # an image name that is the video: refused for what it is, too
        _one_line_error(args, option)
    else:
        _one_line_error(args, "is an input")
    assert {p: p.read_bytes() for p in (a, b)} == before


def test_hard_link_to_an_input_is_refused(videos: tuple[Path, Path], tmp_path: Path, no_model: None) -> None:
    link = tmp_path / "link.mp4"
    os.link(videos[0], link)
    _one_line_error(_args("resynth", videos[0], videos[1], link), "is an input")


def test_eval_report_in_an_input_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from avmdvae.evaluation import tasks

    monkeypatch.setattr(tasks.Evaluator, "load", classmethod(_fail_load))
    for out in (DEMO_RUN, tmp_path):
        _one_line_error(["eval", str(DEMO_RUN), str(tmp_path), "-o", str(out), "-q"], "is an input")


def test_same_path_for_two_outputs_is_refused(videos: tuple[Path, Path], tmp_path: Path, no_model: None) -> None:
    args = [*_args("interpolate", *videos, tmp_path / "o.mp4"), "--sheet", str(tmp_path / "g.png"),
            "--grid", str(tmp_path / "g.png")]
    _one_line_error(args, "both name")


# ------------------------------------------------------------------------------- 3. absent devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", MANIPULATIONS)
def test_cuda_without_cuda_is_one_line(
    command: str, videos: tuple[Path, Path], tmp_path: Path, no_model: None
) -> None:
    _one_line_error([*_args(command, *videos, tmp_path / "o.mp4"), "--device", "cuda"], "no CUDA device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_preprocess_cuda_without_cuda_is_one_line(videos: tuple[Path, Path], tmp_path: Path) -> None:
    _one_line_error(["preprocess", str(videos[0]), str(tmp_path / "c"), "--device", "cuda"], "no CUDA device")
    assert not (tmp_path / "c").exists()


def test_unknown_device_is_one_line(videos: tuple[Path, Path], tmp_path: Path, no_model: None) -> None:
    _one_line_error([*_args("resynth", *videos, tmp_path / "o.mp4"), "--device", "tpu"], "unknown device")


# ------------------------------------------------------------------------------- 4. config and caches
def test_non_utf8_config_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("# r\xe9glages\ntrain: {epochs: 1}\n".encode("latin-1"))
    _one_line_error(["train", "vqvae", str(tmp_path), "--modality", "audio", "-o", str(tmp_path / "run"),
                     "--config", str(cfg)], "UTF-8")


def test_unknown_modality_blames_the_option(tmp_path: Path) -> None:
    out = _one_line_error(["train", "vqvae", str(tmp_path), "--modality", "foo", "-o", str(tmp_path / "run"),
                           "--config", str(REPO / "models" / "tiny" / "vqvae-audio.yaml")], "--modality 'foo'")
    assert "config file" not in out
    with pytest.raises(ConfigError, match="--modality"):
        resolve("dsae", "foo")


# ------------------------------------------------------------------------------- 5. checkpoints, info
class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("true",))


def test_refused_checkpoint_gives_the_whole_reason_on_one_line(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, evil)
    with pytest.raises(ConfigError) as e:
        ck.load_checkpoint(evil)
    msg = str(e.value)
    assert "GLOBAL posix.system" in msg and "\n" not in msg
    assert "weights_only` set to `False`" not in msg  # not torch's advice to load it unsafely


def _fake_run(root: Path, stage1: dict[str, dict[str, str]]) -> Path:
    run = root / "mdvae"
    run.mkdir(parents=True)
    state = {
        "format": ck.CHECKPOINT_FORMAT, "format_version": ck.CHECKPOINT_VERSION, "kind": "mdvae",
        "modality": None, "config": {"train": {"epochs": 1}}, "corpus": {"path": "", "params": {"fps": 30.0}},
        "stage1": stage1, "model": {}, "epoch": 1, "step": 3, "best_val": 1.0,
        "metrics": {"train": {}, "val": {}}, "versions": {},
    }
    ck.save_checkpoint(run / ck.BEST, state)
    return run


def test_info_run_says_when_stage1_models_are_missing_or_changed(tmp_path: Path) -> None:
    vq = tmp_path / "vq-audio"
    vq.mkdir()
    (vq / ck.BEST).write_bytes(b"damaged")
    run = _fake_run(tmp_path, {
        "audio": {"run": str(vq), "checkpoint": str(vq / ck.BEST), "sha256": "1" * 64, "config": {}},
        "visual": {"run": str(tmp_path / "gone"), "checkpoint": str(tmp_path / "gone" / ck.BEST),
                   "sha256": "2" * 64, "config": {}},
    })
    res = CliRunner().invoke(app, ["info", str(run)], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    audio = next(ln for ln in res.output.splitlines() if "stage-1 audio" in ln)
    visual = next(ln for ln in res.output.splitlines() if "stage-1 visual" in ln)
    assert "changed" in audio.lower(), audio
    assert "not found" in visual.lower(), visual


# ------------------------------------------------------------------------------- 6. formats and counts
def test_sheet_suffix_decides_the_format(tmp_path: Path) -> None:
    rows = [SheetRow("x", np.zeros((4, 64, 64, 3), np.uint8), np.ones((4, 513), np.float32))]
    for name, magic in (("s.png", b"\x89PNG"), ("s.jpg", b"\xff\xd8\xff"), ("s.JPEG", b"\xff\xd8\xff")):
        write_sheet(tmp_path / name, rows)
        assert (tmp_path / name).read_bytes()[: len(magic)] == magic
    with pytest.raises(ConfigError, match=r"\.png"):
        write_sheet(tmp_path / "s.mp4", rows)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [(["--sheet", "s.mp4"], "--sheet"), (["--grid", "g.mp4"], "--grid"), (["--gl-iters", "0"], "--gl-iters"),
     (["--steps", "1"], "--steps"), (["--threads", "0"], "--threads")],
)
def test_bad_formats_and_counts_are_refused(
    extra: list[str], needle: str, videos: tuple[Path, Path], tmp_path: Path, no_model: None
) -> None:
    _one_line_error([*_args("interpolate", *videos, tmp_path / "o.mp4"), *extra], needle)


def test_negative_counts_are_refused(videos: tuple[Path, Path], tmp_path: Path, no_model: None) -> None:
    _one_line_error([*_args("denoise", *videos, tmp_path / "o.mp4"), "--impute-iters", "-1"], "--impute-iters")
    _one_line_error(["synth", str(tmp_path / "s"), "--workers", "0"], "--workers")
    _one_line_error(["demo", str(tmp_path / "d"), "--workers", "-1"], "--workers")
    assert not (tmp_path / "s").exists() and not (tmp_path / "d").exists()
    with pytest.raises(ConfigError, match="gl-iters"):
        ops.OutputOptions(gl_iters=0).check()
    for key in ("max_steps_per_epoch", "max_val_batches", "checkpoint_every", "weight_decay", "beta"):
        with pytest.raises(ConfigError, match=key):
            resolve("vqvae", "audio", overrides=[f"train.{key}=-1"])


# ------------------------------------------------------------------------------- 7. fast help
def test_cli_import_does_not_import_torch() -> None:
    code = "import avmdvae.cli, sys; heavy = {'torch', 'scipy'} & set(sys.modules); assert not heavy, heavy"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_argument_errors_do_not_import_torch() -> None:
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom avmdvae.cli import app\n"
            "for args in (['--help'], ['swap', '--help'], ['swap'], ['train', 'vqvae']):\n"
            "    CliRunner().invoke(app, args)\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_eval_report_is_written_all_or_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from avmdvae.evaluation import report

    stats = {"n": 2, "mean": 20.0, "std": 1.0}
    results = {"meta": {"seed": 0}, "resynth": {"clips": 2, "systems": {"mdvae": {"psnr": stats, "ssim": stats}}}}
    (tmp_path / report.REPORT_JSON).write_text("{}")  # an earlier report
    monkeypatch.setattr(report, "_plot_resynth", _boom)
    with pytest.raises(OSError):
        report.write_report(tmp_path, results)
    assert sorted(p.name for p in tmp_path.iterdir()) == [report.REPORT_JSON]
    assert (tmp_path / report.REPORT_JSON).read_text() == "{}"
    monkeypatch.undo()
    written = report.write_report(tmp_path, results)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
    assert [p.name for p in written] == [report.REPORT_JSON, report.REPORT_MD, "resynth.png"]

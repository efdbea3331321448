"""Face front end: torchvision stand-in, MTCNN on a real photo, tracking, smoothing, gap filling."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avmdvae import _torchvision_compat as tvc
from avmdvae.errors import NoFaceError
from avmdvae.face import FACE_SIZE, FaceCropper, crop_square, fit_square

PHOTO = Path(__file__).parent / "data" / "astronaut.png"
# Eileen Collins' face in the 256x256 photo (brows to chin, ear to ear), located by eye and confirmed
# by MTCNN (91, 32, 134, 88): centre ~(112, 60), size ~56 px.
PHOTO_FACE_CENTER = (112.0, 60.0)
PHOTO_FACE_SIZE = 56.0
# Head-and-shoulders patch of the photo pasted into synthetic frames, and the face centre inside it.
HEAD = (slice(0, 130), slice(60, 170))
HEAD_FACE_CENTER = (PHOTO_FACE_CENTER[0] - 60, PHOTO_FACE_CENTER[1] - 0)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(PHOTO).convert("RGB"))


@pytest.fixture(scope="module")
def head(photo) -> np.ndarray:
    return np.ascontiguousarray(photo[HEAD])


def square_centers(boxes: np.ndarray) -> np.ndarray:
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)


# -- torchvision stand-in ---------------------------------------------------------------------------


def brute_force_batched_nms(boxes: np.ndarray, scores: np.ndarray, idxs: np.ndarray, thr: float) -> list[int]:
    """Textbook greedy NMS, one category at a time, pure Python; result sorted by decreasing score."""

    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    keep = []
    for cat in np.unique(idxs):
        remaining = sorted(np.flatnonzero(idxs == cat), key=lambda i: -scores[i])
        while remaining:
            best = remaining.pop(0)
            keep.append(best)
            remaining = [i for i in remaining if iou(boxes[best], boxes[i]) <= thr]
    return sorted(keep, key=lambda i: -scores[i])


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_batched_nms_matches_brute_force(thr, monkeypatch):
    monkeypatch.setattr(tvc, "NMS_BLOCK", 16)  # exercise the blocked IoU path on a small problem
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 150):
        xy = rng.uniform(0, 100, (n, 2))
        wh = rng.uniform(5, 40, (n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        scores = rng.permutation(n).astype(np.float32) / max(n, 1)  # distinct scores: unique answer
        idxs = rng.integers(0, 3, n)
        got = tvc.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(idxs), thr)
        assert got.dtype == torch.int64
        assert got.tolist() == brute_force_batched_nms(boxes, scores, idxs, thr)


def test_to_tensor_matches_torchvision_semantics():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    t = tvc.to_tensor(img)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    assert abs(float(t[1, 0, 2]) - img[0, 2, 1] / 255) < 1e-6
    f = tvc.to_tensor(img.astype(np.float32))  # float input is not rescaled
    assert f.dtype == torch.float32 and f.max() == 17
    assert tvc.to_tensor(Image.fromarray(img)).shape == (3, 2, 3)


def test_stand_in_is_not_left_in_sys_modules():
    tvc.load_mtcnn()
    leftovers = [name for name, mod in sys.modules.items() if vars(mod).get("__avmdvae_stub__", False)]
    assert leftovers == []
    from facenet_pytorch.models.utils import detect_face

    if tvc.torchvision_works():  # GPU machine with a matching torchvision: the real one is used
        assert not tvc.uses_stand_in()
    else:
        assert tvc.uses_stand_in() and detect_face.batched_nms is tvc.batched_nms
        assert "torchvision" not in sys.modules


# -- real photo -------------------------------------------------------------------------------------


def test_face_found_and_cropped_on_real_photo(photo):
    crops, boxes = FaceCropper().crop_clip_with_boxes(photo[None])
    assert crops.shape == (1, FACE_SIZE, FACE_SIZE, 3) and crops.dtype == np.uint8
    (cx, cy), side = square_centers(boxes)[0], boxes[0, 2] - boxes[0, 0]
    assert abs(cx - PHOTO_FACE_CENTER[0]) < 8 and abs(cy - PHOTO_FACE_CENTER[1]) < 10
    assert 1.1 * PHOTO_FACE_SIZE < side < 2.0 * PHOTO_FACE_SIZE  # face plus margin, not the body
    centre = crops[0, 24:40, 24:40].reshape(-1, 3).astype(float).mean(0)
    assert centre[0] > centre[1] > centre[2] and centre[0] > 120  # skin tones, not suit or background


def test_real_photo_in_large_frame_is_detected_downscaled(photo):
    """A 1280x720 frame is detected at detect_max_side; boxes come back in full-frame pixels."""
    frame = np.full((720, 1280, 3), 90, np.uint8)
    big = np.asarray(Image.fromarray(photo).resize((640, 640), Image.Resampling.BICUBIC))
    frame[80:720, 600:1240] = big
    crops, boxes = FaceCropper().crop_clip_with_boxes(frame[None])
    cx, cy = square_centers(boxes)[0]
    assert abs(cx - (600 + 2.5 * PHOTO_FACE_CENTER[0])) < 20
    assert abs(cy - (80 + 2.5 * PHOTO_FACE_CENTER[1])) < 25
    ref = FaceCropper().crop_clip(photo[None])
    assert np.abs(crops.astype(int) - ref.astype(int)).mean() < 25  # the same face crop


def moving_head_clip(head: np.ndarray, n: int = 45, hide: range = range(0)) -> tuple[np.ndarray, np.ndarray]:
    """320x240 frames with the head patch moving right and bobbing; -> frames, true face centres."""
    t = np.arange(n)
    x = 20 + 150 * t / (n - 1)
    y = 50 + 20 * np.sin(2 * np.pi * t / n)
    frames = np.empty((n, 240, 320, 3), np.uint8)
    frames[:] = np.linspace(60, 160, 320, dtype=np.uint8)[None, :, None]  # smooth background gradient
    for k in t:
        if k in hide:
            continue
        xi, yi = round(x[k]), round(y[k])
        frames[k, yi : yi + head.shape[0], xi : xi + head.shape[1]] = head
    truth = np.stack([np.round(x) + HEAD_FACE_CENTER[0], np.round(y) + HEAD_FACE_CENTER[1]], axis=1)
    return frames, truth


def test_moving_real_face_smooth_track_with_hidden_frames(head):
    hidden = range(16, 24)  # the face is hidden: filled from the neighbouring detections
    frames, truth = moving_head_clip(head, hide=hidden)
    crops, boxes = FaceCropper().crop_clip_with_boxes(iter(list(frames)))  # a plain iterator
    assert crops.shape == (len(frames), FACE_SIZE, FACE_SIZE, 3)
    centers = square_centers(boxes)
    err = np.abs(centers - truth).max(axis=1)
    assert err.max() < 12, err  # follows the motion, including through the hidden frames
    accel = np.abs(np.diff(centers, n=2, axis=0)).max()
    assert accel < 1.5  # no jitter: the true path's own acceleration is < 0.3 px/frame^2
    sides = boxes[:, 2] - boxes[:, 0]
    assert sides.max() - sides.min() < 0.1 * sides.mean()


def test_two_real_faces_keep_the_larger(head):
    big = np.asarray(Image.fromarray(head).resize((165, 195), Image.Resampling.BICUBIC))  # face ~64 px
    frame = np.full((270, 480, 3), 120, np.uint8)
    frame[40:235, 20:185] = big
    frame[60:190, 320:430] = head  # face ~43 px, also found (checked below)
    cropper = FaceCropper(detect_every=2, detect_max_side=480)
    assert len(cropper.detect([frame])[0][0]) == 2
    crops, boxes = cropper.crop_clip_with_boxes(np.repeat(frame[None], 12, 0))
    centers = square_centers(boxes)
    assert np.all(np.abs(centers[:, 0] - (20 + 1.5 * HEAD_FACE_CENTER[0])) < 10)


# -- tracking logic with a scripted detector (fast, exact ground truth) ----------------------------


class ScriptedCropper(FaceCropper):
    """FaceCropper whose detector reads the frame index stamped in pixel (0,0) and asks `script`."""

    def __init__(self, script, **kw):
        super().__init__(**kw)
        self.script = script
        self.detected: list[int] = []

    def detect(self, frames):
        out = []
        for f in frames:
            k = int(f[0, 0, 0]) + 256 * int(f[0, 0, 1])
            self.detected.append(k)
            faces = self.script(k)  # list of (cx, cy, size, prob)
            boxes = np.array([[cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2] for cx, cy, s, _ in faces],
                             np.float32).reshape(-1, 4)
            out.append((boxes, np.array([p for *_, p in faces], np.float32)))
        return out


def stamped_frames(n: int, h: int = 120, w: int = 160):
    for k in range(n):
        f = np.full((h, w, 3), 100, np.uint8)
        f[0, 0, 0], f[0, 0, 1] = k % 256, k // 256
        yield f


def test_noisy_detections_are_smoothed_and_follow_motion():
    rng = np.random.default_rng(1)
    n = 150
    true_x = 40 + 80 * np.arange(n) / n  # 0.53 px/frame
    noise = rng.normal(0, 3, (n, 3))  # 3 px of detector jitter on centre and size

    def script(k):
        return [(true_x[k] + noise[k, 0], 60 + noise[k, 1], 40 + noise[k, 2], 0.99)]

    cropper = ScriptedCropper(script)
    _, boxes = cropper.crop_clip_with_boxes(stamped_frames(n))
    assert cropper.detected == [*range(0, n, 5), n - 1]  # 1 frame in 5, and the last
    centers = square_centers(boxes)
    sides = boxes[:, 2] - boxes[:, 0]
    # Raw detections held between detection frames would jump by ~3.4 px (mean) every 5th frame.
    steps = np.abs(np.diff(centers[:, 0]) - np.diff(true_x))
    assert steps.max() < 1.0
    assert np.abs(np.diff(centers, n=2, axis=0)).max() < 0.5  # no jerks
    assert np.abs(np.diff(sides)).max() < 1.0
    assert np.abs(centers[:, 0] - true_x).max() < 6  # follows the motion, no lag
    assert np.abs(centers[:, 1] - 60).max() < 6
    assert np.abs(sides / 1.4 - 40).max() < 6  # default margin 0.2 each side


def test_missing_detections_are_filled_from_neighbours():
    n = 100
    gap = range(30, 61)

    def script(k):
        return [] if k in gap else [(20 + k, 50, 30, 0.99)]

    _, boxes = ScriptedCropper(script).crop_clip_with_boxes(stamped_frames(n, w=200))
    centers = square_centers(boxes)
    inner = slice(10, 90)  # away from the clip ends, where the first/last box is held
    assert np.abs(centers[inner, 0] - (20 + np.arange(n))[inner]).max() < 0.01  # linear motion interpolated


def test_face_appearing_late_holds_first_box_and_downscales_waiting_frames():
    n = 60

    def script(k):
        return [(480, 270, 200, 0.99)] if k >= 45 else []

    def frames():  # 960x540 frames with a gradient, so that crops show where they come from
        for f in stamped_frames(n, h=540, w=960):
            f[1:] = np.linspace(0, 255, 960, dtype=np.uint8)[None, :, None]
            yield f

    tight = ScriptedCropper(script, buffer_mb=8)  # ~5 frames of 960x540: waiting frames shrink
    crops, boxes = tight.crop_clip_with_boxes(frames())
    assert crops.shape == (n, FACE_SIZE, FACE_SIZE, 3)
    assert np.allclose(square_centers(boxes), [480, 270], atol=0.01)
    roomy = ScriptedCropper(script).crop_clip(frames())
    assert np.abs(crops.astype(int) - roomy.astype(int)).max() <= 3  # same crops from shrunk frames


def test_two_faces_keep_larger_even_when_less_confident_and_ignore_low_probability():
    def script(k):
        return [(40, 60, 50, 0.95), (120, 60, 30, 0.999), (100, 20, 80, 0.5)]

    _, boxes = ScriptedCropper(script).crop_clip_with_boxes(stamped_frames(60))
    assert np.allclose(square_centers(boxes), [40, 60], atol=0.01)


def test_track_switches_when_main_face_leaves():
    def script(k):
        faces = [(40, 60, 50, 0.99)] if k < 60 else []
        return faces + ([(120, 60, 30, 0.99)] if k >= 40 else [])

    n = 200
    _, boxes = ScriptedCropper(script).crop_clip_with_boxes(stamped_frames(n))
    centers = square_centers(boxes)
    assert np.allclose(centers[:45], [40, 60], atol=0.01)  # the larger face, held while it is gone
    assert np.allclose(centers[-40:], [120, 60], atol=0.01)  # then the face that stayed


def test_no_face_raises_one_line_error():
    with pytest.raises(NoFaceError, match=r"no face found in clip\.mp4") as exc:
        ScriptedCropper(lambda k: []).crop_clip(stamped_frames(40), source="clip.mp4")
    assert "\n" not in str(exc.value)
    with pytest.raises(NoFaceError):
        ScriptedCropper(lambda k: []).crop_clip([])


def test_no_face_real_mtcnn():
    frames = np.zeros((6, 120, 160, 3), np.uint8)
    frames[:] = np.linspace(0, 255, 160, dtype=np.uint8)[None, :, None]
    with pytest.raises(NoFaceError, match="no face found in gradient"):
        FaceCropper().crop_clip(frames, source="gradient")


def test_array_and_iterator_inputs_agree():
    def script(k):
        return [(60 + k % 7, 50, 40, 0.99)]

    frames = np.stack(list(stamped_frames(50)))
    a = ScriptedCropper(script).crop_clip(frames)
    b = ScriptedCropper(script).crop_clip(iter(list(frames)))
    assert np.array_equal(a, b)


# -- cropping and detector="none" -------------------------------------------------------------------


def test_detector_none_resizes_centre_square():
    frame = np.zeros((80, 120, 3), np.uint8)
    frame[:, :20] = (255, 0, 0)  # outside the centre 80x80 square
    frame[:, 20:100] = (0, 255, 0)
    frame[:, 100:] = (0, 0, 255)
    out = FaceCropper(detector="none").crop_clip(np.stack([frame] * 3))
    assert out.shape == (3, FACE_SIZE, FACE_SIZE, 3) and out.dtype == np.uint8
    assert np.all(out == (0, 255, 0))
    assert FaceCropper(detector="none", size=32).crop_clip([frame]).shape == (1, 32, 32, 3)
    assert FaceCropper(detector="none").crop_clip([]).shape == (0, FACE_SIZE, FACE_SIZE, 3)


def test_detector_none_is_antialiased():
    stripes = np.zeros((256, 256, 3), np.uint8)
    stripes[:, ::2] = 255  # 1-px stripes: a point sampler would return all-black or all-white
    out = FaceCropper(detector="none").crop_clip([stripes])
    assert abs(out.mean() - 127.5) < 3 and out.std() < 3


def test_crop_square_shifts_inside_the_frame_when_it_fits():
    # a pre-cropped face track: a gradient with a distinct structure at each border
    frame = np.zeros((60, 80, 3), np.uint8)
    frame[..., 0] = np.arange(80, dtype=np.uint8)[None, :] * 3
    frame[..., 1] = np.arange(60, dtype=np.uint8)[:, None] * 4
    out = crop_square(frame, 5.0, 50.0, 40.0, size=40)  # box sticks out left and bottom
    assert np.array_equal(out, crop_square(frame, 20.0, 40.0, 40.0, size=40))  # moved inside
    assert fit_square(5.0, 50.0, 40.0, 80, 60) == (20.0, 40.0)
    assert fit_square(40.0, 30.0, 20.0, 80, 60) == (40.0, 30.0)  # inside already: unchanged


def test_crop_square_larger_than_frame_pads_black_not_smeared():
    frame = np.full((50, 50, 3), 200, np.uint8)
    frame[:, 0] = (255, 0, 0)  # a bright edge column: edge replication would smear it into a band
    out = crop_square(frame, 25.0, 25.0, 100.0, size=100)  # crop twice the frame (MTCNN box + margin)
    assert out.shape == (100, 100, 3)
    assert np.all(out[:, :20] == 0) and np.all(out[:20] == 0) and np.all(out[-20:] == 0)
    assert np.all(out[30:70, 30:70] == 200)
    assert crop_square(frame, -500.0, -500.0, 10.0).shape == (FACE_SIZE, FACE_SIZE, 3)


def test_mtcnn_weights_are_loaded_with_weights_only(monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    FaceCropper()._model()
    assert len(calls) == 3 and all(w is True for w in calls), calls

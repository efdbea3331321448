"""Face front end: one smooth, square, 64x64 face track per clip (facenet-pytorch MTCNN).

Pipeline for `FaceCropper(detector="mtcnn").crop_clip(frames)`, streaming over the frames:

1. Every `detect_every`-th frame is downscaled so that its longer side is <= `detect_max_side` and
   detected by MTCNN in batches (one call per chunk of CHUNK_FRAMES input frames). Faces in
   talking-head videos are large, so detection at ~320 px loses nothing and costs ~1/36 of the pixels of
   1080p; detecting one frame in five is another 5x.
2. Detections (probability >= MIN_PROB) are linked into tracks across detection frames by IoU or
   centre distance to the track's constant-velocity prediction. The clip's main track is the one
   with the largest sum of probability * face size over the first chunk that has a face; it is kept
   as long as it lives (other people are ignored). If it is lost for more than SWITCH_GAP_S while
   another face is visible, the best visible track takes over.
3. The main track's boxes, as (centre x, centre y, size), are linearly interpolated between
   detections (the clip's last frame is always detected too) and held before the first one; this
   also fills frames where detection failed (gaps up to LINK_GAP_S are interpolated, longer ones
   held). They are smoothed by a zero-phase Hann window (SMOOTH_CENTER_S for the centre,
   SMOOTH_SIZE_S for the size: zoom jitter is the most visible), so crops do not jitter.
4. Each frame is cropped to a square of side size * (1 + 2 * margin) around the smoothed centre at
   sub-pixel precision and resized with antialiasing (PIL bicubic) to `size` x `size` RGB uint8. A
   square that sticks out of the frame is moved inside it; one larger than the frame is padded with
   black (never edge replication, which smears the border into bands).

Memory is bounded: a frame is kept only until the detections its smoothed box depends on are known
(normally CHUNK_FRAMES + detect_every + the smoothing half-window, ~50 frames; up to LINK_GAP_S more
while the face is lost). When frames wait longer (e.g. no face found yet), waiting frames beyond
`buffer_mb` are kept downscaled to FALLBACK_MAX_SIDE.

`detector="none"` is for videos that are already face crops: each frame is centre-cropped to a square
and resized (antialiased) to `size` x `size`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from PIL import Image

from avmdvae.constants import FACE_SIZE, MODEL_FPS
from avmdvae.errors import NoFaceError

# Crop side = face box size * (1 + 2 * DEFAULT_MARGIN): MTCNN boxes span brows to chin; 20 % more on
# each side brings in the forehead, chin and jaw line that articulation moves.
DEFAULT_MARGIN = 0.2
DEFAULT_DETECT_EVERY = 5  # detect on 1 frame in 5 (6 per second at 30 fps); interpolate between
# Longer side of the frames MTCNN sees. A talking-head face (MTCNN box, brows to chin) is ~1/4 of the
# frame height, i.e. ~45 px at 320x180: well above MTCNN's 12 px cell, at ~1/36 of a 1080p frame's pixels.
DEFAULT_DETECT_MAX_SIDE = 320
# Smallest face searched for, as a fraction of the short side (27 px at 320x180). MTCNN's image pyramid
# starts at scale 12 / min_face: at its default of 20 px, PNet runs on a 3x larger first level and
# produces ~2x the candidates, costing ~2-3x the time per detection, only to find faces < 15 % of the
# frame height, which are not talking heads.
DEFAULT_MIN_FACE = 0.15
# MTCNN stage thresholds (PNet, RNet, ONet). facenet-pytorch's defaults are (0.6, 0.7, 0.7); stricter
# early stages pass fewer candidates to the per-candidate RNet/ONet crops (~25 % faster) and we keep
# only faces with ONet probability >= MIN_PROB anyway.
MTCNN_THRESHOLDS = (0.7, 0.8, 0.8)

CHUNK_FRAMES = 30  # input frames per detection batch (= 6 MTCNN frames at detect_every=5; 1 s at 30 fps)
MIN_PROB = 0.9  # detections below this are ignored (real faces score > 0.99, drawn faces ~0.95)
# Tracks: a face not re-detected for SWITCH_GAP_S while another face is visible hands the main track
# over to that face; a track not re-detected for LINK_GAP_S has ended (a face that comes back later
# starts a new track). Within LINK_GAP_S the main face's box is interpolated across the gap.
SWITCH_GAP_S = 1.0
LINK_GAP_S = 2.0
PREDICT_MAX_S = 0.5  # constant-velocity prediction of a track's box extrapolates at most this far
# Linking a detection to a track: IoU with the track's box predicted at constant velocity >= LINK_IOU,
# or centre distance from it < LINK_CENTER_DIST + LINK_SPEED * gap (in face sizes, gap in seconds),
# and a size within a factor LINK_SIZE_RATIO.
LINK_IOU = 0.3
LINK_CENTER_DIST = 0.5
LINK_SPEED = 1.0
LINK_SIZE_RATIO = 1.5
# Hann smoothing spans (seconds, full window). Centre: ~0.4 s averages ~2-3 detections at 6 Hz while
# following head motion; size changes slowly and its jitter shows as zoom pumping, so smooth it more.
SMOOTH_CENTER_S = 0.4
SMOOTH_SIZE_S = 0.8
# torch threads for CPU detection. MTCNN is many small ops: on our shared 2-core machines one thread
# gave 2-10x more frames per second than two (OpenMP threads spin while other processes hold the
# cores), and a preprocessing job's other core is better spent decoding or on a second worker.
DEFAULT_THREADS = 1
DEFAULT_BUFFER_MB = 512  # full-resolution frames waiting for a face (~80 frames at 1080p)
FALLBACK_MAX_SIDE = 480  # waiting frames beyond the budget are kept at this size (face still > 64 px)


def _hann_weights(span_s: float, fps: float) -> np.ndarray:
    """Normalised Hann window covering ~span_s seconds: (2h+1,) float64, h >= 1."""
    half = max(1, round(span_s * fps / 2))
    j = np.arange(-half, half + 1)
    w = 0.5 + 0.5 * np.cos(np.pi * j / (half + 1))
    return w / w.sum()


def _as_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 frame (H, W, 3), got {frame.dtype} {frame.shape}")
    return frame


def _downscale(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Antialiased downscale so that max(H, W) <= max_side -> (frame', scale = new/old).

    torch's uint8 antialiased bilinear kernel: ~2 ms for 1080p -> 320 px, 4x faster than PIL (which
    first copies the frame into its 4-byte pixel layout).
    """
    h, w = frame.shape[:2]
    if max(h, w) <= max_side:
        return frame, 1.0
    scale = max_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    with warnings.catch_warnings():  # decoded frames may be read-only; we never write through x
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(frame).permute(2, 0, 1)[None]
    small = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)
    return small[0].permute(1, 2, 0).contiguous().numpy(), size[1] / w


def fit_square(cx: float, cy: float, side: float, width: float, height: float) -> tuple[float, float]:
    """Centre of the square of `side` around (cx, cy) moved the least to lie inside a width x height
    frame, along each axis where it fits (elsewhere the centre is kept and the crop is padded)."""

    def fit(c: float, extent: float) -> float:
        return min(max(c, side / 2), extent - side / 2) if side <= extent else c

    return fit(cx, width), fit(cy, height)


def crop_square(frame: np.ndarray, cx: float, cy: float, side: float, size: int = FACE_SIZE) -> np.ndarray:
    """Crop the square of `side` centred at (cx, cy) (sub-pixel) and resize it to (size, size, 3) uint8.

    A square that sticks out of the frame is first moved inside it (`fit_square`); along an axis where
    it is larger than the frame, the part outside is black. Replicating the edge pixels instead would
    smear them into bands, structure the model would learn (pre-cropped face tracks, LRS2/LRS3 style,
    have the face touching the borders).
    """
    h, w = frame.shape[:2]
    cx, cy = fit_square(cx, cy, side, w, h)
    x0, y0 = cx - side / 2, cy - side / 2
    x1, y1 = x0 + side, y0 + side
    ix0, iy0, ix1, iy1 = math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)
    cx0, cy0, cx1, cy1 = max(ix0, 0), max(iy0, 0), min(ix1, w), min(iy1, h)
    if cx1 <= cx0 or cy1 <= cy0:  # entirely outside: nothing to show
        return np.zeros((size, size, 3), np.uint8)
    region = frame[cy0:cy1, cx0:cx1]
    pad = ((cy0 - iy0, iy1 - cy1), (cx0 - ix0, ix1 - cx1), (0, 0))
    if any(p for p in pad[0] + pad[1]):
        region = np.pad(region, pad, mode="constant")
    img = Image.fromarray(np.ascontiguousarray(region))
    box = (x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)
    # reducing_gap=2: box-reduce by an integer factor first, then bicubic over >= 2x the output size
    # (PIL: indistinguishable from the exact resize here, 2x faster).
    out = img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=2.0)
    return np.asarray(out)


def resize_face(frame: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """An already-cropped face (H, W, 3) uint8 -> centre square, antialiased resize -> (size, size, 3)."""
    h, w = frame.shape[:2]
    side = min(h, w)
    return crop_square(frame, w / 2, h / 2, side, size)


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with n torch intra-op threads (None: leave as is), then restore the setting."""
    previous = torch.get_num_threads()
    if n is None or n == previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (4,) boxes (x1, y1, x2, y2)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _box_to_csz(box: np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) -> (centre x, centre y, size = max(w, h))."""
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, max(box[2] - box[0], box[3] - box[1])])


@dataclass
class _Track:
    """Detections of one face linked over time."""

    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)  # (4,) x1, y1, x2, y2 (input-frame pixels)
    score: float = 0.0  # sum of probability * sqrt(area)

    def add(self, frame: int, box: np.ndarray, prob: float) -> None:
        self.frames.append(frame)
        self.boxes.append(box)
        self.score += prob * math.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 0.0))

    def predict(self, frame: int, max_frames: int) -> np.ndarray:
        """The last box moved at the track's latest velocity (last two detections) towards `frame`,
        extrapolating at most `max_frames` frames."""
        last = self.boxes[-1]
        if len(self.frames) < 2:
            return last
        velocity = (last - self.boxes[-2]) / (self.frames[-1] - self.frames[-2])
        velocity = np.concatenate([velocity[:2], velocity[:2]])  # translate only: no size extrapolation
        return last + velocity * min(frame - self.frames[-1], max_frames)

    def links(self, box: np.ndarray, frame: int, fps: float) -> float:
        """Affinity of `box` detected at `frame` with this track (> 0: can be linked; larger is better)."""
        pred_box = self.predict(frame, max(1, round(PREDICT_MAX_S * fps)))
        pred, cand = _box_to_csz(pred_box), _box_to_csz(box)
        if not 1 / LINK_SIZE_RATIO <= cand[2] / max(pred[2], 1e-6) <= LINK_SIZE_RATIO:
            return 0.0
        iou = _iou(pred_box, box)
        if iou >= LINK_IOU:
            return 1.0 + iou
        limit = LINK_CENTER_DIST + LINK_SPEED * (frame - self.frames[-1]) / fps
        dist = float(np.hypot(*(pred[:2] - cand[:2]))) / max((pred[2] + cand[2]) / 2, 1e-6)
        return 1.0 - dist / limit if dist < limit else 0.0


class _ClipTrack:
    """Streaming state of one clip: detections -> tracks -> main-track anchors -> smoothed boxes."""

    def __init__(self, fps: float, detect_every: int) -> None:
        self.fps = fps
        self.switch_gap = max(1, round(SWITCH_GAP_S * fps))
        self.link_gap = max(1, round(LINK_GAP_S * fps))
        self.detect_every = detect_every
        self.tracks: list[_Track] = []
        self.main: _Track | None = None
        self.n_used = 0  # detections of `main` already turned into anchors
        self.anchor_frames: list[int] = []
        self.anchor_values: list[np.ndarray] = []  # (3,) centre x, centre y, size
        self.last_detected = -1  # last frame index for which detection ran
        self.resolved = -1  # boxes of frames <= resolved are final (returned by `resolve`)
        self.n_detected = 0
        self.n_found = 0

    def add_detections(self, frame: int, boxes: np.ndarray, probs: np.ndarray) -> None:
        """Link one detection frame's faces (K,4), (K,) into tracks."""
        self.last_detected = frame
        self.n_detected += 1
        keep = probs >= MIN_PROB
        boxes, probs = boxes[keep], probs[keep]
        if len(boxes):
            self.n_found += 1
        live = [t for t in self.tracks if frame - t.frames[-1] <= self.link_gap]
        used: set[int] = set()
        sizes = np.sqrt(np.clip((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0, None))
        for k in np.argsort(-(probs * sizes)):
            best, best_aff = None, 0.0
            for ti, track in enumerate(live):
                aff = track.links(boxes[k], frame, self.fps) if ti not in used else 0.0
                if aff > best_aff:
                    best, best_aff = ti, aff
            if best is None:
                track = _Track()
                self.tracks.append(track)
            else:
                used.add(best)
                track = live[best]
            track.add(frame, boxes[k], float(probs[k]))

    def _append_anchor(self, frame: int, value: np.ndarray) -> None:
        if self.anchor_frames and frame <= self.anchor_frames[-1]:
            return
        self.anchor_frames.append(frame)
        self.anchor_values.append(value)

    def _take_main_detections(self) -> None:
        """Turn the main track's detections not used yet into anchors."""
        assert self.main is not None
        for f, box in zip(self.main.frames[self.n_used :], self.main.boxes[self.n_used :], strict=True):
            self._append_anchor(f, _box_to_csz(box))
        self.n_used = len(self.main.frames)

    def resolve(self, final: bool) -> int:
        """Update the anchors; return R such that boxes of frames <= R are final (-1: none yet)."""
        if self.main is None:
            if not self.tracks:
                return -1
            self.main = max(self.tracks, key=lambda t: t.score)
        self._take_main_detections()
        lost_for = self.last_detected - self.main.frames[-1]
        if lost_for > self.switch_gap:
            visible = [t for t in self.tracks
                       if t is not self.main and self.last_detected - t.frames[-1] <= self.switch_gap]
            if visible:
                # Hand over: hold the old box over the frames already final, then move to the new face.
                self._append_anchor(self.resolved, self.anchor_values[-1])
                self.main = max(visible, key=lambda t: t.score)
                self.n_used = int(np.searchsorted(self.main.frames, self.resolved, side="right"))
                self._take_main_detections()
                lost_for = self.last_detected - self.main.frames[-1]
        if final:
            self.resolved = 1 << 62
        elif lost_for <= self.link_gap:
            # The main face may still be re-detected: frames after its last box must wait.
            self.resolved = max(self.resolved, self.anchor_frames[-1])
        else:
            # It can no longer be linked: frames up to the last detection hold its last box.
            self.resolved = max(self.resolved, self.last_detected)
        return self.resolved

    def boxes(self, frames: np.ndarray) -> np.ndarray:
        """Raw (unsmoothed) (centre x, centre y, size) at the given frame indices -> (len, 3)."""
        af = np.asarray(self.anchor_frames, dtype=np.float64)
        av = np.stack(self.anchor_values)
        return np.stack([np.interp(frames, af, av[:, c]) for c in range(3)], axis=1)


class FaceCropper:
    """Turn a clip's frames into a (N, size, size, 3) uint8 face track.

    detector: "mtcnn" (detect, track, smooth, crop) or "none" (frames are already face crops).
    device: torch device for MTCNN (default cpu; "cuda" on a GPU machine).
    margin: crop side = face size * (1 + 2 * margin).
    detect_every: run the detector on one frame in `detect_every`.
    detect_max_side: frames are downscaled so that their longer side is <= this before detection.
    min_face: smallest face searched for, as a fraction of the frame's short side.
    buffer_mb: memory for full-resolution frames that wait for a face to be found.
    threads: torch intra-op threads while MTCNN runs on CPU (set and restored around each batch);
        None keeps torch's current setting.
    """

    def __init__(
        self,
        detector: Literal["mtcnn", "none"] = "mtcnn",
        device: str | torch.device | None = None,
        size: int = FACE_SIZE,
        margin: float = DEFAULT_MARGIN,
        detect_every: int = DEFAULT_DETECT_EVERY,
        detect_max_side: int = DEFAULT_DETECT_MAX_SIDE,
        min_face: float = DEFAULT_MIN_FACE,
        buffer_mb: float = DEFAULT_BUFFER_MB,
        threads: int | None = DEFAULT_THREADS,
    ) -> None:
        if detector not in ("mtcnn", "none"):
            raise ValueError(f"detector must be 'mtcnn' or 'none', got {detector!r}")
        if detect_every < 1 or size < 1 or detect_max_side < 24:
            raise ValueError("detect_every and size must be >= 1 and detect_max_side >= 24")
        self.detector = detector
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.size = size
        self.margin = margin
        self.detect_every = detect_every
        self.detect_max_side = detect_max_side
        self.min_face = min_face
        self.buffer_bytes = buffer_mb * 2**20
        self.threads = threads
        self._mtcnn = None

    # -- detection ---------------------------------------------------------------------------------

    def _model(self):
        if self._mtcnn is None:
            from avmdvae._torchvision_compat import build_mtcnn

            model = build_mtcnn(keep_all=True, thresholds=list(MTCNN_THRESHOLDS), device=self.device)
            if self.device.type == "cpu":
                # CPU max_pool2d is 3-5x faster on channels-last tensors; with channels-last weights
                # every conv output is channels-last. Same detections, ~35 % less time per frame.
                model.to(memory_format=torch.channels_last)
            self._mtcnn = model
        return self._mtcnn

    def detect(self, frames: list[np.ndarray] | np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Detect faces on frames (each (H,W,3) uint8) after downscaling to detect_max_side.

        Returns, per frame, (boxes (K,4) float32 x1,y1,x2,y2 in input-frame pixels, probs (K,) float32).
        Frames of equal size go through MTCNN in one batch.
        """
        if len(frames) == 0:
            return []
        model = self._model()
        with _torch_threads(self.threads if self.device.type == "cpu" else None):
            return self._detect(model, frames)

    def _detect(self, model, frames: list[np.ndarray] | np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        small, scales = zip(*(_downscale(_as_frame(f), self.detect_max_side) for f in frames), strict=True)
        results: list[tuple[np.ndarray, np.ndarray]] = [
            (np.zeros((0, 4), np.float32), np.zeros(0, np.float32)) for _ in small
        ]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(small):
            by_shape.setdefault(s.shape, []).append(i)
        for idx in by_shape.values():
            batch = np.stack([small[i] for i in idx])
            model.min_face_size = max(12.0, self.min_face * min(batch.shape[1:3]))  # read by detect()
            batch_boxes, batch_probs = self._detect_batch(model, batch)
            for i, boxes, probs in zip(idx, batch_boxes, batch_probs, strict=True):
                if boxes is None or len(boxes) == 0:
                    continue
                boxes = np.asarray(boxes).astype(np.float32).reshape(-1, 4) / scales[i]
                results[i] = (boxes, np.asarray(probs).astype(np.float32).reshape(-1))
        return results

    @staticmethod
    def _detect_batch(model, batch: np.ndarray) -> tuple[list, list]:
        """MTCNN on a (B,h,w,3) batch -> per-frame boxes (object arrays or None) and probs."""
        try:
            boxes, probs = model.detect(batch)
        except RuntimeError as e:
            # facenet-pytorch 2.5.3 calls torch.cat([]) when every stage-2 candidate is degenerate:
            # that frame has no face. Retry frame by frame to keep the other frames' detections.
            if "non-empty" not in str(e):
                raise
            if len(batch) == 1:
                return [None], [None]
            out = [FaceCropper._detect_batch(model, batch[i : i + 1]) for i in range(len(batch))]
            return [b[0] for b, _ in out], [p[0] for _, p in out]
        return list(boxes), list(probs)

    # -- clips -------------------------------------------------------------------------------------

    def crop_clip(
        self, frames: Iterable[np.ndarray] | np.ndarray, fps: float = MODEL_FPS, source: str | None = None
    ) -> np.ndarray:
        """Frames (each (H,W,3) uint8, or an (N,H,W,3) array) -> face crops (N, size, size, 3) uint8.

        `source` names the clip in error messages. Raises NoFaceError when no face is found.
        """
        return self.crop_clip_with_boxes(frames, fps, source)[0]

    def crop_clip_with_boxes(
        self, frames: Iterable[np.ndarray] | np.ndarray, fps: float = MODEL_FPS, source: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like `crop_clip`, also returning the crop squares: (crops (N,size,size,3) uint8,
        boxes (N,4) float32 x0, y0, x1, y1 in input-frame pixels, sub-pixel; outside the frame only
        along an axis where the square is larger than the frame).
        """
        if self.detector == "none":
            crops, boxes = [], []
            for f in frames:
                f = _as_frame(f)
                h, w = f.shape[:2]
                side = min(h, w)
                crops.append(resize_face(f, self.size))
                boxes.append(((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2))
            if not crops:
                return np.zeros((0, self.size, self.size, 3), np.uint8), np.zeros((0, 4), np.float32)
            return np.stack(crops), np.asarray(boxes, np.float32)
        in_memory = isinstance(frames, np.ndarray)  # already resident: never downscale waiting frames
        track = _ClipTrack(fps, self.detect_every)
        w_center = _hann_weights(SMOOTH_CENTER_S, fps)
        w_size = _hann_weights(SMOOTH_SIZE_S, fps)
        half = max(len(w_center), len(w_size)) // 2
        buffer: dict[int, tuple[np.ndarray, float]] = {}  # frame index -> (frame, scale to input pixels)
        buffered_bytes = 0
        oldest_full = 0  # waiting frames before this index have been downscaled
        pending: list[int] = []  # detection frames not yet detected
        crops: list[np.ndarray] = []
        squares: list[tuple[float, float, float, float]] = []
        n = 0

        def flush(final: bool) -> None:
            nonlocal buffered_bytes
            if pending:
                detections = self.detect([buffer[i][0] for i in pending])
                for f, (boxes, probs) in zip(pending, detections, strict=True):
                    track.add_detections(f, boxes, probs)
                pending.clear()
            ready = min(track.resolve(final) - half, n - 1)
            start = len(crops)
            if ready < start:
                return
            idx = np.arange(start - half, ready + half + 1)
            raw = track.boxes(idx)
            cx = np.convolve(raw[:, 0], w_center[::-1], mode="valid")
            cy = np.convolve(raw[:, 1], w_center[::-1], mode="valid")
            sz = np.convolve(raw[:, 2], w_size[::-1], mode="valid")
            # Window lengths may differ: align both smoothed series on frames start..ready.
            off_c, off_s = half - len(w_center) // 2, half - len(w_size) // 2
            count = ready - start + 1
            cx, cy = cx[off_c : off_c + count], cy[off_c : off_c + count]
            sz = sz[off_s : off_s + count]
            for k in range(count):
                frame, scale = buffer.pop(start + k)
                if not in_memory:
                    buffered_bytes -= frame.nbytes
                side = sz[k] * (1 + 2 * self.margin)
                x, y = fit_square(cx[k], cy[k], side, frame.shape[1] / scale, frame.shape[0] / scale)
                crops.append(crop_square(frame, x * scale, y * scale, side * scale, self.size))
                squares.append((x - side / 2, y - side / 2, x + side / 2, y + side / 2))

        for frame in frames:
            frame = _as_frame(frame)
            buffer[n] = (frame, 1.0)
            if n % self.detect_every == 0:
                pending.append(n)
            n += 1
            if not in_memory:
                buffered_bytes += frame.nbytes
                while buffered_bytes > self.buffer_bytes and oldest_full < n - 1:
                    if oldest_full in buffer and buffer[oldest_full][1] == 1.0:
                        old = buffer[oldest_full][0]
                        if oldest_full in pending:  # keep detection quality: detect before shrinking
                            flush(final=False)
                            continue
                        small, scale = _downscale(old, FALLBACK_MAX_SIDE)
                        buffer[oldest_full] = (small, scale)
                        buffered_bytes += small.nbytes - old.nbytes
                    oldest_full += 1
            if n % CHUNK_FRAMES == 0:
                flush(final=False)
        if n == 0:
            raise NoFaceError(f"no face found in {source or 'clip'}: it has no video frames")
        if (n - 1) % self.detect_every:
            pending.append(n - 1)  # also detect the last frame: boxes are interpolated up to the end
        if track.main is None and pending:
            flush(final=False)
        if track.main is None:
            raise NoFaceError(
                f"no face found in {source or 'clip'}: MTCNN found no face (probability >= {MIN_PROB}) in "
                f"{track.n_detected} sampled frames; check that the video shows a face, or use "
                "--detector none if it is already cropped to the face"
            )
        flush(final=True)
        assert len(crops) == n and not buffer
        return np.stack(crops), np.asarray(squares, np.float32)

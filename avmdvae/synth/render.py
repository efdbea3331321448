"""Face rendering with PIL: a shaded head with hair, ears, eyes (blinks), brows, nose and mouth.

Shapes are polygons in face coordinates (u right, v down, unit = head height, origin = head centre).
A pose maps them to pixels: features on the face surface turn with the yaw as on a cylinder of the
head's half-width, shift with the pitch, and everything rotates with the roll, is scaled to the head
height in pixels and translated to the head centre. Frames are drawn at SUPERSAMPLE x the output size
and box-downsampled (anti-aliasing), which keeps a 64x64 face crop readable.

What drives what (see docs/synthetic-corpus.md):
  speaker  -> geometry, skin / hair / iris / lip colours, hair style
  valence  -> mouth-corner curvature and brows (height, inner-end angle)
  jaw, lip -> mouth opening (and a slight chin drop), mouth width / rounding
  blink, head pose / position / scale -> eyelids and the pose
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from avmdvae.synth.factors import Speaker, Timeline

SUPERSAMPLE = 2
N_OUTLINE = 48  # polygon points of the head outline
MOUTH_OPEN = 0.11  # mouth opening (head heights) at jaw = 1
MOUTH_CURVE = 0.035  # corner lift (head heights) at valence = 1
BROW_RAISE = 0.022  # brow lift at valence = 1
BROW_FROWN = 0.03  # inner-brow drop at valence = -1
FACE_DEPTH = 0.3  # how far the facial plane sits in front of the head centre (pitch parallax)
NOSE_DEPTH = 0.12  # extra protrusion of the nose tip (yaw parallax)
SCLERA = (242, 240, 234)
PUPIL = (15, 12, 12)
MOUTH_INSIDE = (72, 18, 28)
TEETH = (236, 232, 220)
LASH = (35, 25, 25)


@dataclass(frozen=True)
class Pose:
    """Head pose for one frame in output pixels: centre, head height, angles (rad)."""

    x: float
    y: float
    scale: float
    yaw: float
    pitch: float
    roll: float


def _shade(c: tuple[int, ...], f: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, v * f))) for v in c)  # type: ignore[return-value]


def _ellipse(cu: float, cv: float, ru: float, rv: float, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cu + ru * np.cos(t), cv + rv * np.sin(t)], axis=1)


class FaceRenderer:
    """Draws one speaker's face; `frame()` returns (size, size, 3) uint8."""

    def __init__(self, speaker: Speaker, size: int, valence: float, background: np.ndarray,
                 light: tuple[float, float]):
        """background: (size*SUPERSAMPLE, size*SUPERSAMPLE, 3) uint8; light: (du, dv) highlight offset."""
        self.sp = speaker
        self.size = size
        self.valence = valence
        self.bg = Image.fromarray(background)
        self.light = light
        self.half_w = speaker.head_aspect / 2
        # Brows are darker than the skin even with fair hair on dark skin (the detector needs that contrast).
        hair, skin = np.asarray(speaker.hair, float), np.asarray(speaker.skin, float)
        self.brow_colour = _shade(tuple(np.minimum(hair * 0.8, skin * 0.5)), 1.0)

    # ------------------------------------------------------------------ geometry
    def _head_outline(self, jaw: float) -> np.ndarray:
        t = np.linspace(0, 2 * np.pi, N_OUTLINE, endpoint=False)
        u, v = self.half_w * np.cos(t), 0.5 * np.sin(t)
        low = v > 0
        u[low] *= 1 - self.sp.chin_taper * (2 * v[low]) ** 2
        v[low] *= 1 + 0.06 * jaw
        return np.stack([u, v], axis=1)

    def _surface(self, pts: np.ndarray, pose: Pose, depth: np.ndarray | float = 0.0) -> np.ndarray:
        """Project points on the face surface (yaw on a cylinder, pitch parallax) to face coords."""
        r = self.half_w
        ang = np.arcsin(np.clip(pts[:, 0] / r, -0.999, 0.999)) + pose.yaw
        u = r * np.sin(np.clip(ang, -np.pi / 2, np.pi / 2)) + depth * np.sin(pose.yaw)
        v = pts[:, 1] * np.cos(pose.pitch) + (FACE_DEPTH + depth) * np.sin(pose.pitch)
        return np.stack([u, v], axis=1)

    @staticmethod
    def _to_pixels(pts: np.ndarray, pose: Pose) -> list[float]:
        c, s = np.cos(pose.roll), np.sin(pose.roll)
        k = pose.scale * SUPERSAMPLE
        x = (c * pts[:, 0] - s * pts[:, 1]) * k + pose.x * SUPERSAMPLE
        y = (s * pts[:, 0] + c * pts[:, 1]) * k + pose.y * SUPERSAMPLE
        return np.stack([x, y], axis=1).ravel().tolist()

    # ------------------------------------------------------------------ drawing
    def frame(self, pose: Pose, jaw: float, lip: float, blink: float) -> np.ndarray:
        sp = self.sp
        img = self.bg.copy()
        d = ImageDraw.Draw(img)

        def poly(pts: np.ndarray, fill: tuple[int, ...], surface: bool = False, depth=0.0) -> None:
            if surface:
                pts = self._surface(pts, pose, depth)
            d.polygon(self._to_pixels(pts, pose), fill=fill)

        def line(pts: np.ndarray, fill: tuple[int, ...], width: float) -> None:
            xy = self._to_pixels(self._surface(pts, pose), pose)
            d.line(xy, fill=fill, width=max(1, int(round(width * pose.scale * SUPERSAMPLE))), joint="curve")

        outline = self._head_outline(jaw)
        # body, long hair, ears
        poly(_ellipse(0, 1.05, 0.8, 0.4, 32), sp.shirt)
        poly(np.array([[-0.14, 0.2], [0.14, 0.2], [0.16, 0.85], [-0.16, 0.85]]), _shade(sp.skin, 0.78))
        if sp.hair_style == 1:
            t = np.linspace(np.pi, 2 * np.pi, 17)
            r = self.half_w * 1.2
            top = np.stack([r * np.cos(t), -0.02 + 0.56 * np.sin(t)], 1)
            poly(np.concatenate([[[-r * 1.08, 0.58]], top, [[r * 1.08, 0.58], [0, 0.62]]]), sp.hair)
        else:
            poly(_ellipse(0, -0.02, self.half_w * 1.05, 0.53, 32), sp.hair)
        for side in (-1, 1):
            ear = _ellipse(side * self.half_w * 0.98, sp.eye_y + 0.06, sp.ear_size * 0.35, sp.ear_size * 0.6,
                           16)
            poly(ear, _shade(sp.skin, 0.8))
        # head with shading: shadow, mid tone, lit area offset toward the light
        poly(outline, _shade(sp.skin, 0.74))
        du, dv = self.light
        poly(outline * 0.93 + [du * 0.5, dv * 0.5], _shade(sp.skin, 0.88))
        poly(outline * 0.8 + [du, dv], sp.skin)
        poly(outline * 0.45 + [du * 1.5, dv * 1.5 - 0.12], _shade(sp.skin, 1.12))  # forehead highlight
        # front hair: the head region above the hairline
        hair_top = {0: -0.27, 1: -0.24, 2: -0.36}[sp.hair_style]
        cap = outline.copy()
        cap[:, 1] = np.minimum(cap[:, 1], hair_top + 0.12 * (cap[:, 0] / self.half_w) ** 2 - 0.02)
        poly(cap * [1.03, 1.02], sp.hair if sp.hair_style != 2 else _shade(sp.hair, 1.15))
        self._brows(poly)
        self._eyes(poly, line, blink)
        self._nose(poly, pose)
        self._mouth(poly, line, jaw, lip)
        out = img.reduce(SUPERSAMPLE) if SUPERSAMPLE > 1 else img
        return np.asarray(out)

    def _brows(self, poly) -> None:
        sp = self.sp
        v = self.valence
        for side in (-1, 1):
            t = np.linspace(0, 1, 9)  # 0 = inner end, 1 = outer end
            cu = side * (sp.eye_dx - sp.brow_len * 0.45 + sp.brow_len * t)
            arch = 0.018 * np.sin(np.pi * t)
            cv = sp.eye_y - sp.brow_gap - arch - BROW_RAISE * v + BROW_FROWN * max(-v, 0) * (1 - t) ** 1.5
            th = sp.brow_thick * (1.1 - 0.4 * t)
            top = np.stack([cu, cv - th / 2], 1)
            bot = np.stack([cu, cv + th / 2], 1)
            poly(np.concatenate([top, bot[::-1]]), self.brow_colour, surface=True)

    def _eyes(self, poly, line, blink: float) -> None:
        sp = self.sp
        for side in (-1, 1):
            cu, cv = side * sp.eye_dx, sp.eye_y
            x = np.linspace(-sp.eye_w / 2, sp.eye_w / 2, 15)
            e = np.clip(1 - (2 * x / sp.eye_w) ** 2, 0, 1) ** 0.8
            bottom = 0.4 * sp.eye_h * e
            top = -0.6 * sp.eye_h * e * (1 - blink) + bottom * blink - 0.002 * blink
            white = np.concatenate([np.stack([cu + x, cv + top], 1),
                                    np.stack([cu + x, cv + bottom], 1)[::-1]])
            # eye socket shadow, then the visible eyeball
            poly(_ellipse(cu, cv - 0.005, sp.eye_w * 0.62, sp.eye_h * 0.85, 16), _shade(sp.skin, 0.75),
                 surface=True)
            if blink < 0.97:
                poly(white, SCLERA, surface=True)
                for r, col in ((0.48 * sp.eye_h, sp.iris), (0.22 * sp.eye_h, PUPIL)):
                    c = _ellipse(0.0, -0.05 * sp.eye_h, r, r, 16)
                    e_c = np.clip(1 - (2 * c[:, 0] / sp.eye_w) ** 2, 0, 1) ** 0.8
                    lo = 0.4 * sp.eye_h * e_c
                    hi = -0.6 * sp.eye_h * e_c * (1 - blink) + lo * blink
                    c[:, 1] = np.clip(c[:, 1], hi, lo)
                    poly(c + [cu, cv], col, surface=True)
            line(np.stack([cu + x, cv + top - 0.003], 1), LASH, 0.012)

    def _nose(self, poly, pose: Pose) -> None:
        sp = self.sp
        top, tip = sp.eye_y + 0.04, sp.eye_y + 0.04 + sp.nose_len
        w = sp.nose_w
        ridge = np.array([[-0.012, top], [0.012, top], [w * 0.35, tip - 0.01], [w * 0.5, tip + 0.02],
                          [0, tip + 0.035], [-w * 0.5, tip + 0.02], [-w * 0.35, tip - 0.01]])
        depth = np.clip((ridge[:, 1] - top) / sp.nose_len, 0, 1) * NOSE_DEPTH
        poly(ridge, _shade(sp.skin, 0.8), surface=True, depth=depth)
        for side in (-1, 1):
            poly(_ellipse(side * w * 0.22, tip + 0.022, w * 0.13, 0.009, 10), _shade(sp.skin, 0.45),
                 surface=True, depth=NOSE_DEPTH * 0.9)

    def _mouth(self, poly, line, jaw: float, lip: float) -> None:
        sp = self.sp
        w = sp.mouth_w * (0.72 + 0.5 * lip)  # rounded lips are narrow, spread lips wide
        h = MOUTH_OPEN * jaw
        lt = sp.lip_thick * (1.0 + 0.5 * (1 - lip))  # rounding pushes the lips out (thicker)
        c = MOUTH_CURVE * self.valence
        x = np.linspace(-w / 2, w / 2, 17)
        q = 2 * x / w
        e = np.sqrt(np.clip(1 - q**2, 0, 1))
        cv = sp.mouth_y + h * 0.3
        mid = cv - c * q**2 + c * 0.3
        in_top, in_bot = mid - 0.4 * h * e**0.7, mid + 0.6 * h * e**0.7
        out_top = in_top - lt * e**0.5 - 0.002
        out_bot = in_bot + 1.25 * lt * e**0.5 + 0.002
        poly(np.concatenate([np.stack([x, out_top], 1), np.stack([x, out_bot], 1)[::-1]]), sp.lips,
             surface=True)
        if h > 0.004:
            poly(np.concatenate([np.stack([x, in_top], 1), np.stack([x, in_bot], 1)[::-1]]), MOUTH_INSIDE,
                 surface=True)
            teeth_bot = np.minimum(in_top + min(0.3 * h, 0.018) * e, in_bot)
            poly(np.concatenate([np.stack([x, in_top], 1), np.stack([x, teeth_bot], 1)[::-1]]), TEETH,
                 surface=True)
        line(np.stack([x, mid], 1), _shade(sp.lips, 0.6), 0.008)


def pose_at(truth: dict[str, np.ndarray], k: int, size: int) -> Pose:
    """The pose of frame k from a clip's ground truth (or a Timeline's fields), in pixels of `size`."""
    return Pose(x=float(truth["head_x"][k]) * size, y=float(truth["head_y"][k]) * size,
                scale=float(truth["head_scale"][k]) * size, yaw=float(truth["head_yaw"][k]),
                pitch=float(truth["head_pitch"][k]), roll=float(truth["head_roll"][k]))


def project(speaker: Speaker, pose: Pose, pts: np.ndarray) -> np.ndarray:
    """Output-pixel coordinates (K, 2) of face-surface points (K, 2) (u, v in head heights).

    E.g. the mouth centre is (0, speaker.mouth_y) and the right eye (speaker.eye_dx, speaker.eye_y):
    tests and evaluations use this to find features in the frames from the ground-truth pose.
    """
    r = FaceRenderer.__new__(FaceRenderer)
    r.half_w = speaker.head_aspect / 2
    xy = np.asarray(r._to_pixels(r._surface(np.asarray(pts, float).reshape(-1, 2), pose), pose))
    return xy.reshape(-1, 2) / SUPERSAMPLE


def make_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A vertical gradient between two muted colours, (S, S, 3) uint8 at the supersampled size."""
    n = size * SUPERSAMPLE
    a, b = rng.uniform(60, 220, 3), rng.uniform(60, 220, 3)
    t = np.linspace(0, 1, n)[:, None, None]
    return np.broadcast_to((a * (1 - t) + b * t).astype(np.uint8), (n, n, 3)).copy()


def render_clip(speaker: Speaker, tl: Timeline, size: int, rng: np.random.Generator) -> np.ndarray:
    """All frames of a clip: (tl.n_frames, size, size, 3) uint8."""
    renderer = FaceRenderer(speaker, size, tl.valence, make_background(rng, size),
                            light=(float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.06, 0.0))))
    jaw, lip = tl.at_frames(tl.jaw), tl.at_frames(tl.lip)
    frames = np.empty((tl.n_frames, size, size, 3), np.uint8)
    for k in range(tl.n_frames):
        pose = pose_at(vars(tl), k, size)
        frames[k] = renderer.frame(pose, float(jaw[k]), float(lip[k]), float(tl.blink[k]))
    return frames

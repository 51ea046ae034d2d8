"""Procedural face videos with FACS-style expressions and consistent per-frame labels.

Pure numpy, deterministic from a seed, rendered directly at the requested size with anti-aliased
shapes (coverage from approximate signed distances). This is the embedded data of the demo and of
the learning tests of every model: clip classification (7 DFEW classes), per-frame expression,
valence/arousal and 12 action units.

How a video is made:

* An **identity** (face oval and jaw, skin tone, eye spacing/size, iris colour, brow shape and
  thickness, nose, mouth width and lips, resting mouth curvature, hair colour and style, ears, neck,
  clothes, background colour and gradient) is drawn from its own random stream, so it does not
  depend on the expression: `generate_video(s, expression=k)` shows the same person for every `k`.
* The **expression** is a FACS-like prototype: a set of action-unit weights (`_PROTOTYPES`) over the
  12 labelled AUs of `AUS` plus three drawn-but-unlabelled channels (AU5 upper-lid raiser, AU9 nose
  wrinkler, AU20 lip stretcher) that real Surprise / Fear / Disgust faces need. Optional AUs of a
  prototype appear in a fraction of the clips and weights are jittered per clip, so AU labels are
  not a function of the class. Some clips also "talk" (AU25/26 oscillations independent of the
  class).
* **Dynamics:** a per-clip intensity curve neutral -> onset -> apex -> offset (random timings, apex
  intensity in [0.7, 1], clips may start late in the onset or end before the offset), each AU
  following it with a small random lag. Random blinks (unlabelled) in every clip. Timings, blinks
  and talking are drawn before anything class-specific, so they too are shared across classes.
* **Pose:** in-plane rotation, translation, scale and yaw (horizontal squash of the whole head plus
  a depth-dependent shift of the inner features), each a base value plus smooth drift plus jitter.
  The framing is that of a face crop (forehead to chin ~0.95 of the frame height).
* **Image formation:** face shading, directional illumination gradient, global gain and colour
  cast (slowly varying), random occlusion patches on a span of frames of some clips (`occluded`),
  Gaussian sensor noise. Pose and scene have their own random streams as well.

Label definitions (per frame t; thresholds are module constants):

* `intensity[t]` in [0, 1]: the expression intensity curve (all zeros for Neutral clips).
* `expr[t]` = the clip's expression where `intensity[t] >= EXPR_THRESHOLD` (0.2), else Neutral (2).
* `au_intensity[t, k]` in [0, 1]: activation of AU `AUS[k]` = prototype weight x lagged intensity
  (max'ed with the class-independent talking signal for AU25/AU26); it drives the drawing.
* `au[t, k]` = 1 iff `au_intensity[t, k] >= AU_THRESHOLD` (0.5).
* `va[t]` = `PROTOTYPE_VA[label] * intensity[t]` + a per-clip offset (N(0, 0.05) per axis),
  clipped to [-1, 1].
* `label` = the clip's expression (the DFEW clip label).

Coordinates: pixel (row i, column j) has its centre at (x=j, y=i) (OpenCV / dlib convention).
`landmarks` follow the iBUG-68 ordering (0-16 jaw from the image-left side, 17-21 and 22-26 brows
left to right, 27-30 nose bridge, 31-35 nostrils, 36-41 and 42-47 eyes clockwise from the
image-left corner, 48-59 outer lips, 60-67 inner lips). `face_box` is the tight (x0, y0, x1, y1)
box of the drawn face oval (forehead to chin, no hair or ears).

Class order follows Former-DFER's DFEW labels: 0 Happy, 1 Sad, 2 Neutral, 3 Angry, 4 Surprise,
5 Disgust, 6 Fear. `to_abaw` maps them to the Aff-Wild2 / ABAW 8-class order (Other never occurs).

Modules: this one holds the labels, the random content (identity, dynamics, pose) and the public
API; `synthetic_face` the canvas, per-frame face geometry, landmarks and face box;
`synthetic_render` the drawing, one function per face part, and the scene (background, occluders,
illumination, noise).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from jaxaffect.data.synthetic_face import _Canvas, _face_box, _face_geometry, _landmarks
from jaxaffect.data.synthetic_render import _background, _draw_occluder, _expose, _render

EXPRESSIONS = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")
VOCAB = "dfew7"                 # the clip labels' class order (= EXPRESSIONS; jaxaffect.data.vocab)
NUM_EXPRESSIONS = len(EXPRESSIONS)
NEUTRAL = 2
ABAW_EXPRESSIONS = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise",
                    "Other")
DFEW_TO_ABAW = np.array([4, 5, 0, 1, 6, 2, 3], np.int32)
AUS = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
NUM_AUS = len(AUS)
EXPR_THRESHOLD = 0.2
AU_THRESHOLD = 0.5
# Prototype (valence, arousal) at full intensity, in EXPRESSIONS order.
PROTOTYPE_VA = np.array([[0.8, 0.5], [-0.7, -0.4], [0.0, 0.0], [-0.6, 0.7], [0.2, 0.8],
                         [-0.7, 0.3], [-0.6, 0.6]], np.float32)

_HIDDEN = ("AU5", "AU9", "AU20")  # drawn, never labelled
_CHANNELS = AUS + _HIDDEN
_CH = {name: i for i, name in enumerate(_CHANNELS)}
# expression -> ((AU, weight, probability of being present), ...)
_PROTOTYPES: dict[int, tuple[tuple[str, float, float], ...]] = {
    0: (("AU6", 0.85, 1.0), ("AU12", 1.0, 1.0), ("AU25", 0.8, 0.6)),
    1: (("AU1", 0.95, 1.0), ("AU4", 0.7, 1.0), ("AU15", 0.95, 1.0)),
    2: (),
    3: (("AU4", 1.0, 1.0), ("AU7", 0.9, 1.0), ("AU23", 0.85, 0.8), ("AU24", 0.9, 0.8)),
    4: (("AU1", 1.0, 1.0), ("AU2", 1.0, 1.0), ("AU5", 0.9, 1.0), ("AU25", 1.0, 1.0),
        ("AU26", 0.9, 0.9)),
    5: (("AU9", 1.0, 1.0), ("AU10", 1.0, 1.0), ("AU4", 0.5, 1.0), ("AU15", 0.75, 0.8),
        ("AU25", 0.75, 1.0), ("AU7", 0.6, 0.2)),
    6: (("AU1", 1.0, 1.0), ("AU2", 0.8, 1.0), ("AU4", 0.7, 1.0), ("AU5", 1.0, 1.0),
        ("AU20", 1.0, 1.0), ("AU25", 0.9, 1.0), ("AU26", 0.55, 0.3)),
}


def to_abaw(expr: np.ndarray | int) -> np.ndarray:
  """DFEW class indices (EXPRESSIONS) -> ABAW 8-class indices (ABAW_EXPRESSIONS)."""
  return DFEW_TO_ABAW[np.asarray(expr)]


def video_seed(seed: int, index: int) -> int:
  """Seed of video `index` of the dataset `seed`; depends only on (seed, index)."""
  return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0])


# ----------------------------------------------------------------------------------------------
# Random content: identity, dynamics, pose.


def _palette(rng: np.random.Generator, colours: Sequence[Sequence[float]], jitter: float):
  c = np.asarray(colours[int(rng.integers(len(colours)))], np.float64)
  return np.clip(c + rng.normal(0.0, jitter, 3), 0.0, 1.0)


def _sample_identity(rng: np.random.Generator) -> dict[str, Any]:
  """Face geometry (canonical units: face half-width 1, v pointing down) and colours."""
  t = rng.uniform()
  skin = (1 - t) * np.array([0.98, 0.82, 0.70]) + t * np.array([0.42, 0.27, 0.18])
  skin = np.clip(skin + rng.normal(0, 0.02, 3), 0, 1)
  hair = _palette(rng, [(0.08, 0.06, 0.05), (0.22, 0.13, 0.07), (0.40, 0.26, 0.14),
                        (0.80, 0.66, 0.40), (0.55, 0.24, 0.10), (0.62, 0.60, 0.58)], 0.03)
  iris = _palette(rng, [(0.25, 0.15, 0.08), (0.42, 0.26, 0.12), (0.30, 0.45, 0.66),
                        (0.33, 0.46, 0.30), (0.45, 0.50, 0.55)], 0.03)
  bg0 = rng.uniform(0.1, 0.9, 3)
  bg1 = np.clip(bg0 + rng.normal(0, 0.2, 3), 0, 1)
  ident = dict(
      skin=skin,
      lips=np.clip(skin * np.array([0.75, 0.4, 0.42]) + rng.normal(0, 0.02, 3), 0, 1),
      hair=hair,
      brow=np.minimum(hair * rng.uniform(0.4, 0.7), 0.3),
      iris=iris,
      bg0=bg0, bg1=bg1, bg_angle=rng.uniform(0, 2 * np.pi),
      clothes=rng.uniform(0.05, 0.9, 3),
      face_bt=rng.uniform(1.2, 1.38),  # upper half-height of the oval
      face_bl=rng.uniform(1.3, 1.48),  # lower half-height (to the chin)
      jaw_taper=rng.uniform(0.12, 0.35),
      eye_sep=rng.uniform(0.35, 0.43), eye_v=rng.uniform(-0.2, -0.1),
      eye_w=rng.uniform(0.18, 0.21), eye_h=rng.uniform(0.085, 0.1),
      eye_tilt=rng.uniform(-0.015, 0.03), iris_r=rng.uniform(0.085, 0.1),
      gaze=rng.normal(0, 0.25, 2),
      brow_gap=rng.uniform(0.18, 0.22), brow_th=rng.uniform(0.1, 0.13),
      brow_arch=rng.uniform(0.02, 0.06), brow_in=rng.uniform(0.14, 0.19),
      brow_out=rng.uniform(0.2, 0.26),
      nose_v=rng.uniform(0.25, 0.33), nose_w=rng.uniform(0.1, 0.14),
      mouth_v=rng.uniform(0.62, 0.7), mouth_w=rng.uniform(0.3, 0.36),
      lip_u=rng.uniform(0.05, 0.07), lip_l=rng.uniform(0.06, 0.085),
      rest_curve=rng.uniform(-0.02, 0.02),
      hairline=rng.uniform(-0.9, -0.62), hair_curve=rng.uniform(0.05, 0.3),
      hair_w=rng.uniform(1.08, 1.25), hair_h=rng.uniform(1.1, 1.3),
      hair_len=rng.uniform(-0.2, 1.2),
      va_offset=rng.normal(0, 0.05, 2),
  )
  # Python floats (not numpy float64 scalars) keep the float32 drawing arithmetic in float32.
  ident["gaze"] = [float(x) for x in ident["gaze"]]
  return {k: float(v) if np.ndim(v) == 0 else v for k, v in ident.items()}


def _smoothstep(x):
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3.0 - 2.0 * x)


def _sample_dynamics(rng: np.random.Generator, expression: int, num_frames: int):
  """Intensity curve (T,), channel activations (T, 15), blink closure (T,)."""
  T = num_frames
  t0 = rng.uniform(-0.2, 0.3) * T  # onset start (may be before the clip)
  t1 = t0 + rng.uniform(0.1, 0.25) * T  # apex start
  t2 = t1 + rng.uniform(0.3, 0.55) * T  # apex end
  t3 = t2 + rng.uniform(0.1, 0.3) * T  # offset end
  apex = rng.uniform(0.7, 1.0)
  rest = rng.uniform(0.0, 0.5)  # fraction of the apex left after the offset
  wobble_f, wobble_p = rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)

  def curve(tt):
    up = _smoothstep((tt - t0) / max(t1 - t0, 1e-3))
    down = 1.0 - (1.0 - rest) * _smoothstep((tt - t2) / max(t3 - t2, 1e-3))
    wob = 1.0 + 0.04 * np.sin(2 * np.pi * wobble_f * tt / T + wobble_p)
    return np.clip(apex * up * down * wob, 0.0, 1.0)

  tt = np.arange(T, dtype=np.float64)
  # Class-independent draws first (same for every expression of a seed): blinks, talking.
  blink = np.zeros(T)
  for _ in range(int(rng.poisson(0.04 * T + 0.3))):
    c = rng.uniform(-1, T)
    blink = np.maximum(blink, np.clip(1.0 - np.abs(tt - c) / 1.6, 0, 1))
  talking = rng.uniform() < 0.15
  f, p, amp = rng.uniform(1.5, 4.0), rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 0.8)
  # Per-channel presence, weight jitter and lag, drawn for every channel in a fixed order.
  u_present = rng.uniform(size=len(_CHANNELS))
  jitter = rng.uniform(0.85, 1.1, len(_CHANNELS))
  lags = rng.uniform(-1.5, 1.5, len(_CHANNELS))
  act = np.zeros((T, len(_CHANNELS)))
  for name, weight, prob in _PROTOTYPES[expression]:
    c = _CH[name]
    if u_present[c] < prob:
      act[:, c] = min(1.0, weight * jitter[c]) * curve(tt - lags[c])
  intensity = curve(tt) if expression != NEUTRAL else np.zeros(T)
  if talking:  # class-independent lip movement
    talk = np.clip(np.sin(2 * np.pi * f * tt / T + p), 0, 1) * amp
    act[:, _CH["AU25"]] = np.maximum(act[:, _CH["AU25"]], talk)
    act[:, _CH["AU26"]] = np.maximum(act[:, _CH["AU26"]], 0.5 * talk)
  return intensity, act, np.minimum(blink * 1.25, 1.0)


def _sample_pose(rng: np.random.Generator, num_frames: int, size: int, amount: float):
  """Per-frame (cx, cy, scale S [px per canonical unit], rotation, yaw), each (T,)."""
  T = num_frames
  tt = np.arange(T) / max(T, 1)

  def drift(amp):
    f, p = rng.uniform(0.3, 1.5), rng.uniform(0, 2 * np.pi)
    return amp * np.sin(2 * np.pi * f * tt + p) + rng.normal(0, 0.15 * amp, T)

  a = amount
  cx = size * (0.5 + a * rng.normal(0, 0.025) + a * drift(0.015))
  cy = size * (0.48 + a * rng.normal(0, 0.025) + a * drift(0.015))
  # Face-crop framing (like DFEW's face crops): forehead to chin spans ~0.95 of the frame.
  scale = size * rng.uniform(0.33, 0.36) * (1 + a * rng.uniform(-0.07, 0.07) + a * drift(0.025))
  rot = a * (rng.uniform(-0.14, 0.14) + drift(0.05))
  yaw = a * (rng.uniform(-0.3, 0.3) + drift(0.08))
  return cx, cy, scale, rot, yaw


def generate_video(
    seed: int,
    *,
    expression: int | None = None,
    num_frames: int = 32,
    size: int = 112,
    pose_amount: float = 1.0,
    occlusion_prob: float = 0.2,
    noise: bool = True,
) -> dict[str, Any]:
  """One procedural face video and its per-frame labels (module docstring).

  Args:
    seed: everything is a function of the seed (identity, pose, scene and dynamics come from
      independent child streams, so the identity is the same for every `expression`).
    expression: class index in EXPRESSIONS; None draws it uniformly from the seed.
    num_frames: T.
    size: height = width in pixels (rendered directly at this size).
    pose_amount: scale of the head-pose variation (0 = frontal, centred, static).
    occlusion_prob: probability that a span of frames has an occluding patch.
    noise: add Gaussian sensor noise.

  Returns:
    dict with `frames` uint8 (T, size, size, 3) RGB, `label` int, `expr` int32 (T,), `au` int32
    (T, 12) in AUS order, `au_intensity` float32 (T, 12) (the activations `au` thresholds),
    `va` float32 (T, 2), `intensity` float32 (T,), `face_box` float32 (T, 4)
    (x0, y0, x1, y1), `landmarks` float32 (T, 68, 2) (x, y), `occluded` bool (T,), `seed` int.
  """
  if num_frames < 1 or size < 8:
    raise ValueError(f"generate_video: need num_frames >= 1 and size >= 8, got "
                     f"num_frames={num_frames}, size={size}.")
  ss = np.random.SeedSequence(int(seed))
  r_expr, r_id, r_pose, r_dyn, r_scene = (np.random.default_rng(s) for s in ss.spawn(5))
  if expression is None:
    expression = int(r_expr.integers(NUM_EXPRESSIONS))
  if not 0 <= int(expression) < NUM_EXPRESSIONS:
    raise ValueError(f"generate_video: expression must be in [0, {NUM_EXPRESSIONS}), "
                     f"got {expression}.")
  expression = int(expression)
  T = int(num_frames)
  ident = _sample_identity(r_id)
  pose = _sample_pose(r_pose, T, size, pose_amount)
  intensity, act, blink = _sample_dynamics(r_dyn, expression, T)
  g = _face_geometry(ident, {name: act[:, i] for name, i in _CH.items()}, blink)
  img = _background(ident, T, size)
  canvas = _Canvas(img, pose)
  _render(canvas, ident, g)
  occluded = _draw_occluder(img, r_scene, occlusion_prob)
  frames = _expose(img, canvas.shade, r_scene, noise)

  expr = np.where(intensity >= EXPR_THRESHOLD, expression, NEUTRAL).astype(np.int32)
  au_intensity = act[:, :NUM_AUS].astype(np.float32)
  au = (au_intensity >= AU_THRESHOLD).astype(np.int32)
  va = np.clip(PROTOTYPE_VA[expression][None, :] * intensity[:, None] + ident["va_offset"],
               -1, 1).astype(np.float32)
  return dict(
      frames=frames, label=expression, expr=expr, au=au, au_intensity=au_intensity, va=va,
      intensity=intensity.astype(np.float32), face_box=_face_box(canvas, ident, g),
      landmarks=_landmarks(canvas, ident, g), occluded=occluded, seed=int(seed))


_STACKED = ("frames", "label", "expr", "au", "au_intensity", "va", "intensity", "face_box",
            "landmarks", "occluded", "seed")


def iter_videos(num_videos: int, seed: int, *, start: int = 0, balanced: bool = True,
                **video_kwargs) -> Iterator[dict[str, Any]]:
  """Videos `start .. start+num_videos-1` of the dataset `seed`, one at a time.

  Video i is `generate_video(video_seed(seed, i), expression=i % 7 if balanced else None, ...)`,
  so it depends only on (seed, i): shards generated separately are identical to one big run.
  """
  for i in range(start, start + num_videos):
    expression = i % NUM_EXPRESSIONS if balanced else None
    yield generate_video(video_seed(seed, i), expression=expression, **video_kwargs)


def generate_dataset(num_videos: int, seed: int, *, num_frames: int = 32, size: int = 112,
                     balanced: bool = True, start: int = 0, **video_kwargs) -> dict[str, Any]:
  """`num_videos` videos stacked along a leading axis (see `iter_videos` for determinism).

  Returns the keys of `generate_video` stacked (`frames` (N, T, H, W, 3) uint8, `label` (N,), ...)
  plus `index` (N,) (the dataset indices) and `names` (the list EXPRESSIONS). With `balanced` the
  labels cycle 0..6, so every class has num_videos // 7 or one more videos.

  Memory: frames take N*T*size*size*3 bytes (700 x 32 x 112^2 x 3 = 843 MB); use `iter_videos`
  to stream instead.
  """
  videos = list(iter_videos(num_videos, seed, start=start, balanced=balanced,
                            num_frames=num_frames, size=size, **video_kwargs))
  out: dict[str, Any] = {k: np.stack([np.asarray(v[k]) for v in videos]) for k in _STACKED}
  out["label"] = out["label"].astype(np.int32)
  out["index"] = np.arange(start, start + num_videos, dtype=np.int64)
  out["names"] = list(EXPRESSIONS)
  return out


def contact_sheet(videos: Sequence[dict[str, Any]], frame_indices: Sequence[int] | None = None,
                  *, draw_landmarks: bool = False) -> np.ndarray:
  """Grid image (uint8 RGB): one row per video, one column per frame index.

  Without `frame_indices` each row shows the first frame, the onset midpoint and the apex.
  """
  rows = []
  for vid in videos:
    fr = vid["frames"]
    if frame_indices is None:
      inten = vid["intensity"]
      apex = int(np.argmax(inten))
      onset = int(np.argmin(np.abs(inten[:apex + 1] - 0.5 * inten[apex]))) if apex else 0
      idx = [0, onset, apex]
    else:
      idx = list(frame_indices)
    tiles = []
    for t in idx:
      tile = fr[t].copy()
      if draw_landmarks:
        for x, y in np.round(vid["landmarks"][t]).astype(int):
          if 0 <= x < tile.shape[1] and 0 <= y < tile.shape[0]:
            tile[y, x] = (0, 255, 0)
      tiles.append(np.pad(tile, ((1, 1), (1, 1), (0, 0)), constant_values=255))
    rows.append(np.concatenate(tiles, 1))
  return np.concatenate(rows, 0)


def save_preview_png(path: str, videos: Sequence[dict[str, Any]] | None = None,
                     frame_indices: Sequence[int] | None = None, *, seed: int = 0,
                     size: int = 112, draw_landmarks: bool = False) -> np.ndarray:
  """Write a contact sheet PNG; default: the 7 expressions of one identity (first/onset/apex)."""
  import matplotlib.image  # pylint: disable=g-import-not-at-top

  if videos is None:
    videos = [generate_video(seed, expression=k, size=size, occlusion_prob=0.0)
              for k in range(NUM_EXPRESSIONS)]
  sheet = contact_sheet(videos, frame_indices, draw_landmarks=draw_landmarks)
  matplotlib.image.imsave(path, sheet)
  return sheet

"""The samplers of `config.data.sampler` (data config by parts: jaxaffect/data/parts.py).

  former_dfer      U segments x V consecutive frames, Former-DFER's dynamic sampling (clips.VideoClip)
  est              7 snippets x 5 frames (EST)                        (clips.FrameSampler)
  frame            one frame with a face per video (frame encoders)   (clips.FrameSampler)
  window           `window` consecutive frames with per-frame labels  (clips.FrameSampler)
  sequence         `window` steps `stride` apart (long sequences)     (clips.FrameSampler)
  frame_views      every face frame (or K per video) of shard records, with landmarks and an
                   optional second view                               (data/frames.py)
  feature_windows  windows of per-frame feature streams               (data/features.py)
"""
from __future__ import annotations

from jaxaffect.data import parts

_AUGMENT = dict(
    crop="",                      # '' = resize only; 'resized_crop' (torchvision) or 'zoom' (1.1-1.5)
    crop_scale=(0.08, 1.0),       # resized_crop: area fraction range (MAE pretraining: 0.2-1)
    hflip=True,                   # random horizontal flip (same for all frames of a clip)
    color_jitter=0.0,             # brightness/contrast/saturation strength (0 = none)
)


class FormerDfer(parts.Sampler):
  """Former-DFER's dynamic sampling: `num_segments` (U) segments x `duration` (V) consecutive
  frames; training draws the segment offsets, flips, and (official) GroupRandomSizedCrop."""
  NAME = "former_dfer"
  FIELDS = dict(
      num_segments=8,             # U: segments per clip
      duration=2,                 # V: consecutive frames per segment
      hflip=True,                 # random horizontal flip (same for all frames)
      random_resized_crop=False,  # official GroupRandomSizedCrop (area 0.08-1, ratio 3/4-4/3)
  )

  def make(self, train: bool):
    from jaxaffect.data.clips import VideoClip
    c, size = self.cfg, self.data.image_size
    if train:
      return VideoClip(c.num_segments, c.duration, size, train=True, hflip=c.hflip,
                       random_resized_crop=c.random_resized_crop)
    return VideoClip(c.num_segments, c.duration, size, train=False)

  def min_frames(self) -> int:
    return int(self.cfg.num_segments) * int(self.cfg.duration)


class _Frames(parts.Sampler):
  """The `clips.FrameSampler` kinds (the class's NAME is the kind)."""

  def make(self, train: bool):
    from jaxaffect.data.clips import FrameSampler
    c = self.cfg
    return FrameSampler(self.NAME, self.data.image_size, train, window=c.get("window", 300),
                        stride=c.get("stride", 200), crop=c.crop or None,
                        crop_scale=tuple(c.get("crop_scale", (0.08, 1.0))),
                        flip_prob=0.5 if c.hflip else 0.0, color_jitter=c.color_jitter,
                        expr_vocab=self.data.get("expr_vocab", ""))


class Est(_Frames):
  """EST: 7 snippets x 5 frames (`samplers.est_indices`) -> video (35, H, W, 3), clip label."""
  NAME = "est"
  FIELDS = dict(_AUGMENT, hflip=False)

  def min_frames(self) -> int:
    return 35


class Frame(_Frames):
  """One frame with a face per video (random in training, the middle one in evaluation) -> image
  (H, W, 3) with its per-frame labels (frame encoders on Aff-Wild2)."""
  NAME = "frame"
  SOURCES = ("shards", "mixture")      # the face flags of data_prep records
  FIELDS = dict(_AUGMENT)


class Window(_Frames):
  """`window` consecutive frames (ABAW 300, stride 200): training draws one of the windows, eval
  takes the first; per-frame labels and `valid` (inside the video)."""
  NAME = "window"
  FIELDS = dict(_AUGMENT, window=300, stride=200)

  def min_frames(self) -> int:
    return int(self.cfg.window)


class Sequence(_Frames):
  """`window` steps `stride` frames apart (long sequences, `samplers.long_sequence`)."""
  NAME = "sequence"
  FIELDS = dict(_AUGMENT, window=768, stride=1)

  def min_frames(self) -> int:
    return int(self.cfg.window)


class FrameViews(parts.Sampler):
  """Items are frames (`frames.FrameRecords`): every face frame of every record, or
  `frames_per_video` per record per epoch; each gives the image, its landmarks moved with the
  augmentation (`landmarks=False`: none, for shards without them, e.g. Aff-Wild2 cropped_aligned
  frames for an image model's fine-tuning) and, with `num_views=2`, a second view of the frame."""
  NAME = "frame_views"
  SOURCES = ("shards",)
  FIELDS = dict(_AUGMENT, crop="resized_crop", num_views=1, frames_per_video=0,
                landmarks=True)          # False: image models on face frames without landmarks

  def make(self, train: bool):
    from jaxaffect.data import frames
    return frames.make_views(parts.view(self.data), train)

  def items(self, train_src, eval_src):
    from jaxaffect.data import frames
    k = frames.check_frames_per_video(parts.view(self.data))
    return frames.FrameRecords(train_src, k), frames.FrameRecords(eval_src, 0)


class FeatureWindows(parts.Sampler):
  """Windows of the `features` source's per-video timelines: training windows `window` / `stride`
  (300 / 200), evaluation windows `window` / `eval_stride` (0 = window: non-overlapping, so each
  frame counts once, the ABAW protocol); `feature_dropout` on the input features in training."""
  NAME = "feature_windows"
  SOURCES = ("features",)
  FIELDS = dict(
      window=300,                 # training window (frames)
      stride=200,                 # training window stride
      eval_stride=0,              # 0 = window: non-overlapping evaluation windows
      feature_dropout=0.0,        # training-time dropout on the input features (0 = none)
  )

  def strides(self) -> tuple[int, int, int]:
    from jaxaffect.data import features
    c = self.cfg
    w, s, es = int(c.window), int(c.stride), int(c.eval_stride or c.window)
    features.check_window(w, s, self.field("window"), self.field("stride"))
    features.check_window(w, es, self.field("window"), self.field("eval_stride"))
    return w, s, es

  def make(self, train: bool):
    from jaxaffect.data import features
    return features.FeatureClip(train, float(self.cfg.feature_dropout or 0.0) if train else 0.0)

  def items(self, train_src, eval_src):
    from jaxaffect.data import features
    w, s, es = self.strides()
    src = self.data.source
    return (features.FeatureWindows(train_src, w, s, f"features-{src.train_select}"),
            features.FeatureWindows(eval_src, w, es, f"features-{src.eval_select}"))

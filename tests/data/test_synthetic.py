"""Procedural face videos: determinism, label consistency, landmarks vs pixels, learnability."""
import matplotlib.image
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import recall_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from jaxaffect.data import synthetic as syn

# Prototype AUs per class (FACS-style, as documented in the module) + AU25/26 (talking).
_ALLOWED = {
    "Happy": {"AU6", "AU12", "AU25"},
    "Sad": {"AU1", "AU4", "AU15"},
    "Neutral": set(),
    "Angry": {"AU4", "AU7", "AU23", "AU24"},
    "Surprise": {"AU1", "AU2", "AU25", "AU26"},
    "Disgust": {"AU4", "AU7", "AU10", "AU15", "AU25"},
    "Fear": {"AU1", "AU2", "AU4", "AU25", "AU26"},
}
# AUs present in every clip of the class with a weight >= 0.8: active during the apex.
_CORE = {"Happy": {"AU12"}, "Sad": {"AU1", "AU15"}, "Angry": {"AU4", "AU7"},
         "Surprise": {"AU1", "AU2", "AU25"}, "Disgust": {"AU10"}, "Fear": {"AU1", "AU25"}}


def _luma(rgb):
  return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def test_constants_and_abaw_mapping():
  assert syn.EXPRESSIONS == ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")
  assert syn.AUS == ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24",
                     "AU25", "AU26")
  names = {"Happy": "Happiness", "Sad": "Sadness", "Neutral": "Neutral", "Angry": "Anger",
           "Surprise": "Surprise", "Disgust": "Disgust", "Fear": "Fear"}
  mapped = syn.to_abaw(np.arange(7))
  assert [syn.ABAW_EXPRESSIONS[i] for i in mapped] == [names[n] for n in syn.EXPRESSIONS]
  assert syn.ABAW_EXPRESSIONS.index("Other") == 7 and 7 not in mapped


def test_deterministic_and_shardable():
  a = syn.generate_video(7, expression=3, num_frames=6, size=48)
  b = syn.generate_video(7, expression=3, num_frames=6, size=48)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  full = syn.generate_dataset(9, seed=5, num_frames=4, size=32)
  parts = [syn.generate_dataset(4, seed=5, num_frames=4, size=32, start=0),
           syn.generate_dataset(5, seed=5, num_frames=4, size=32, start=4)]
  for k in ("frames", "label", "expr", "au", "va", "landmarks", "index"):
    np.testing.assert_array_equal(full[k], np.concatenate([p[k] for p in parts]), err_msg=k)
  # Video i is generate_video(video_seed(seed, i), expression=i % 7).
  one = syn.generate_video(syn.video_seed(5, 8), expression=8 % 7, num_frames=4, size=32)
  np.testing.assert_array_equal(full["frames"][8], one["frames"])
  np.testing.assert_array_equal(full["label"], np.arange(9) % 7)
  assert full["names"] == list(syn.EXPRESSIONS)
  assert full["frames"].shape == (9, 4, 32, 32, 3) and full["frames"].dtype == np.uint8
  assert syn.generate_video(1, num_frames=2, size=16)["frames"].shape == (2, 16, 16, 3)
  with pytest.raises(ValueError, match="expression"):
    syn.generate_video(0, expression=7)
  # Different seeds differ.
  assert not np.array_equal(syn.generate_video(8, num_frames=2, size=32)["frames"],
                            syn.generate_video(9, num_frames=2, size=32)["frames"])


def test_identity_and_pose_do_not_depend_on_expression():
  """Same seed, different class: same person, pose and scene (the class is the only change)."""
  happy = syn.generate_video(11, expression=0, num_frames=12, size=64)
  sad = syn.generate_video(11, expression=1, num_frames=12, size=64)
  # Neither class moves the jaw (no AU26), so the face oval is identical.
  np.testing.assert_allclose(happy["face_box"], sad["face_box"], atol=1e-4)
  np.testing.assert_allclose(happy["landmarks"][:, :17], sad["landmarks"][:, :17], atol=1e-4)
  np.testing.assert_allclose(happy["landmarks"][:, 27:31], sad["landmarks"][:, 27:31], atol=1e-4)
  # ... while the mouth corners differ (AU12 lifts them, AU15 lowers them).
  apex = int(np.argmax(happy["intensity"]))
  assert happy["landmarks"][apex, 48, 1] < sad["landmarks"][apex, 48, 1] - 1.0
  # Outside the face (top-left corner: background or hair) the pixels are identical.
  np.testing.assert_array_equal(happy["frames"][:, :4, :4], sad["frames"][:, :4, :4])


def test_occlusion_flag_marks_exactly_the_changed_frames():
  for seed in range(6):
    clean = syn.generate_video(seed, num_frames=10, size=48, occlusion_prob=0.0)
    occ = syn.generate_video(seed, num_frames=10, size=48, occlusion_prob=1.0)
    assert not clean["occluded"].any() and occ["occluded"].any()
    changed = np.any(clean["frames"] != occ["frames"], axis=(1, 2, 3))
    np.testing.assert_array_equal(changed, occ["occluded"])
    for k in ("label", "expr", "au", "va", "landmarks", "face_box"):
      np.testing.assert_array_equal(clean[k], occ[k], err_msg=k)


@pytest.fixture(scope="module")
def sample_videos():
  return [syn.generate_video(1000 + i, expression=i % 7, num_frames=20, size=80)
          for i in range(70)]


def test_label_consistency(sample_videos):
  for vid in sample_videos:
    lab, inten = vid["label"], vid["intensity"]
    name = syn.EXPRESSIONS[lab]
    T = len(inten)
    assert vid["expr"].shape == (T,) and vid["expr"].dtype == np.int32
    assert vid["au"].shape == (T, 12) and vid["va"].shape == (T, 2)
    assert vid["landmarks"].shape == (T, 68, 2) and vid["face_box"].shape == (T, 4)
    assert np.all((inten >= 0) & (inten <= 1))
    want_expr = np.where(inten >= syn.EXPR_THRESHOLD, lab, syn.NEUTRAL)
    np.testing.assert_array_equal(vid["expr"], want_expr)
    np.testing.assert_array_equal(vid["au"], vid["au_intensity"] >= syn.AU_THRESHOLD)
    # Only prototype AUs (and talking AU25/26) are ever active.
    active = {syn.AUS[k] for k in np.flatnonzero(vid["au_intensity"].max(0) > 0)}
    assert active <= _ALLOWED[name] | {"AU25", "AU26"}, (name, active)
    # VA = prototype * intensity + a per-clip constant.
    resid = vid["va"] - syn.PROTOTYPE_VA[lab] * inten[:, None]
    unclipped = np.all(np.abs(vid["va"]) < 1, axis=1)
    assert np.ptp(resid[unclipped], axis=0).max() < 1e-5
    assert np.all(np.abs(resid[0]) < 0.3)
    if lab == syn.NEUTRAL:
      assert np.all(inten == 0) and np.all(vid["expr"] == syn.NEUTRAL)
    else:
      apex = int(np.argmax(inten))
      assert 0.65 <= inten[apex] <= 1.0
      assert vid["expr"][apex] == lab
      core = {syn.AUS.index(a) for a in _CORE[name]}
      assert all(vid["au"][:, k].any() for k in core), (name, vid["au"].max(0))
      # Dynamics: the intensity changes over the clip (onset or offset is visible).
      assert np.ptp(inten) > 0.1


def test_landmarks_match_pixels(sample_videos):
  """Landmarks land on the drawn features: dark pupils, dark open mouths, face box around jaw."""
  pupil_ratios, mouth_ratios = [], []
  for vid in sample_videos:
    lm, fr = vid["landmarks"], vid["frames"]
    box = vid["face_box"]
    # Jaw points lie on the face oval: inside the face box (small tolerance).
    jaw = lm[:, :17]
    assert np.all(jaw[..., 0] >= box[:, None, 0] - 1.0) and np.all(
        jaw[..., 0] <= box[:, None, 2] + 1.0)
    assert np.all(jaw[..., 1] <= box[:, None, 3] + 1.0)
    # Chin (8) is the lowest jaw point in the face's own frame: below the mouth (57) and nose.
    for t in range(len(fr)):
      if vid["occluded"][t]:
        continue
      up = lm[t, 27] - lm[t, 8]  # chin -> nose root, "up" in the face frame
      up /= np.linalg.norm(up)
      h = lm[t] @ up
      assert h[8] < h[57] < h[51] < h[33] < h[27] and h[27] < h[19]
      eye_open = (lm[t, 41, 1] - lm[t, 37, 1]) > 2.0 and (lm[t, 46, 1] - lm[t, 44, 1]) > 2.0
      skin = _luma(fr[t, int(round(lm[t, 29, 1])), int(round(lm[t, 29, 0]))])
      if eye_open:
        for sl in (slice(36, 42), slice(42, 48)):
          cx, cy = np.round(lm[t, sl].mean(0)).astype(int)
          pupil_ratios.append(_luma(fr[t, cy, cx]) / max(skin, 1.0))
      gap = np.linalg.norm(lm[t, 66] - lm[t, 62])
      if gap > 5.0:
        cx, cy = np.round((lm[t, 66] + lm[t, 62]) / 2).astype(int)
        mouth_ratios.append(_luma(fr[t, cy, cx]) / max(skin, 1.0))
  assert len(pupil_ratios) > 500 and len(mouth_ratios) > 20
  assert np.median(pupil_ratios) < 0.45, np.median(pupil_ratios)
  assert np.mean(np.asarray(pupil_ratios) < 0.8) > 0.8  # light irises on dark skin exceed it
  assert np.median(mouth_ratios) < 0.6, np.median(mouth_ratios)


def _aligned_patch(frame, lm, res=16, sup=4):
  """Gray res x res crop in an eye-aligned frame (similarity from the two eye centres)."""
  left, right = lm[36:42].mean(0), lm[42:48].mean(0)
  centre, d = (left + right) / 2, right - left
  dist = np.linalg.norm(d)
  ex = d / dist
  ey = np.array([-ex[1], ex[0]])
  g = (np.arange(res * sup) + 0.5) / (res * sup)
  gx, gy = (g - 0.5) * 2.6 * dist, (g * 2.6 - 0.8) * dist
  p = centre + gx[None, :, None] * ex + gy[:, None, None] * ey
  xi = np.clip(np.round(p[..., 0]).astype(int), 0, frame.shape[1] - 1)
  yi = np.clip(np.round(p[..., 1]).astype(int), 0, frame.shape[0] - 1)
  img = frame.astype(np.float32).mean(-1)[yi, xi]
  return img.reshape(res, sup, res, sup).mean((1, 3)).ravel()


def _uar(xtr, ytr, xte, yte, c):
  clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300))
  clf.fit(xtr, ytr)
  return recall_score(yte, clf.predict(xte), average="macro")


@pytest.fixture(scope="module")
def learn_split():
  kw = dict(num_frames=8, size=64)
  return syn.generate_dataset(350, 1, **kw), syn.generate_dataset(140, 2, **kw)


def test_expression_is_learnable_from_aligned_apex_frames(learn_split):
  """Linear probe on 16x16 gray eye-aligned apex frames: clearly above chance, not perfect."""
  tr, te = learn_split

  def feats(d):
    apex = np.argmax(d["intensity"], 1)
    out = []
    for i, a in enumerate(apex):
      f = _aligned_patch(d["frames"][i, a], d["landmarks"][i, a])
      out.append((f - f.mean()) / (f.std() + 1e-6))
    return np.stack(out)

  uar = _uar(feats(tr), tr["label"], feats(te), te["label"], c=0.1)
  assert 0.6 <= uar <= 0.97, uar


def test_no_colour_shortcut(learn_split):
  """The clip's mean RGB (identity, illumination, background) does not predict the class."""
  tr, te = learn_split
  colour = lambda d: d["frames"].astype(np.float32).mean((1, 2, 3))
  uar = _uar(colour(tr), tr["label"], colour(te), te["label"], c=1.0)
  assert uar < 0.3, uar  # chance is 1/7 = 0.143


def test_contact_sheet_png(tmp_path):
  vids = [syn.generate_video(0, expression=k, num_frames=6, size=40) for k in range(7)]
  path = tmp_path / "sheet.png"
  sheet = syn.save_preview_png(str(path), vids)
  assert sheet.shape == (7 * 42, 3 * 42, 3)
  back = matplotlib.image.imread(str(path))
  np.testing.assert_allclose(back[..., :3], sheet / 255.0, atol=1 / 255)
  # Default columns: first frame, onset midpoint, apex of each row's video.
  apex = int(np.argmax(vids[0]["intensity"]))
  np.testing.assert_array_equal(sheet[1:41, 2 * 42 + 1:3 * 42 - 1], vids[0]["frames"][apex])
  marked = syn.contact_sheet(vids[:1], [apex], draw_landmarks=True)
  green = np.all(marked == (0, 255, 0), axis=-1)
  assert green.sum() >= 40  # most of the 68 points, a few may share a pixel

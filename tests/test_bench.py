"""`jaxaffect bench`: a tiny Former-DFER run through `bench.main` (JAX step + a PyTorch reference)
prints one JSON line with consistent figures; unknown models and --table3. No timing assertions."""
import dataclasses
import json
import statistics

import jax
import numpy as np
import pytest
import torch

from jaxaffect import bench, flops
from jaxaffect.models.former_dfer import FormerDFER, former_dfer_macs
from jaxaffect.train import loop
from jaxaffect.errors import UserError
from tests.train.helpers import random_sources, tiny_config

TINY = ["--config", "former_dfer:smoke", "--batch", "8", "--steps", "2", "--peak-size", "128",
        "--config.model.width=8", "--config.data.image_size=32", "--config.data.sampler.num_segments=2",
        "--config.data.sampler.duration=2", "--config.data.source.video_frames=4",
        "--config.model.num_temporal_layers=1"]


def _tiny_reference(path, config):
  """A small PyTorch classifier standing in for an official checkout (CI has none)."""
  d = config.data
  t = d.sampler.num_segments * d.sampler.duration
  torch.manual_seed(0)
  module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(t * 3 * d.image_size ** 2, 7))
  to_inputs = lambda batch: (torch.from_numpy(batch["video"]).permute(0, 1, 4, 2, 3).float() / 255,)
  return bench.Reference(f"tiny torch model from {path}", module, to_inputs)


def _last_json(out: str) -> dict:
  lines = [l for l in out.strip().splitlines() if l.strip()]
  assert len(lines) == 1, f"--json must print exactly one stdout line, got {lines}"
  return json.loads(lines[0])


def test_bench_main_json(capsys, monkeypatch):
  from jaxaffect.models import former_dfer
  spec = dataclasses.replace(bench.FORMER_DFER, reference=_tiny_reference)
  monkeypatch.setattr(former_dfer, "bench_model", lambda: spec)
  threads_before = torch.get_num_threads()
  assert bench.main(["former_dfer", *TINY, "--json", "--reference", "/nowhere"]) == 0
  captured = capsys.readouterr()
  r = _last_json(captured.out)
  assert "jax (XLA)" in captured.err and "torch (reference)" in captured.err   # the table
  assert r["model"] == "former_dfer" and r["batch"] == 8 and r["input_shape"] == [4, 32, 32, 3]
  for key in ("lower_s", "compile_s", "first_step_s", "step_s", "clips_per_s", "train_step_flops",
              "achieved_flops_per_s", "peak_fraction", "fwd_gmacs_per_clip", "params",
              "memory_bytes", "jax_over_torch"):
    assert isinstance(r[key], (int, float)) and r[key] > 0, key
  assert r["peak_matmul"]["size"] == 128 and r["peak_matmul"]["flops_per_s"] > 0
  assert len(r["step_s_all"]) == 2 and r["step_s"] == statistics.median(r["step_s_all"])
  assert r["clips_per_s"] == pytest.approx(8 / r["step_s"])
  assert r["achieved_flops_per_s"] == pytest.approx(r["train_step_flops"] / r["step_s"])
  assert r["peak_fraction"] == pytest.approx(
      r["achieved_flops_per_s"] / r["peak_matmul"]["flops_per_s"])
  assert r["devices"] == 8
  assert np.isfinite(r["last_loss"]) and np.isfinite(r["reference"]["last_loss"])
  assert r["memory_bytes"] > 4 * r["params"]            # at least the float32 parameters
  # The forward count is the model's own: width 8, 32 px, N=1, M=1, T=4 clips.
  assert r["fwd_gmacs_per_clip"] * 1e9 == pytest.approx(
      former_dfer_macs(1, 1, image_size=32, num_frames=4, width=8)["total"], rel=1e-12)
  cost = flops.forward_flops(FormerDFER(width=8, num_temporal_layers=1), None, (1, 4, 32, 32, 3),
                             xla=False)
  assert r["params"] == cost["params"]
  # forward + backward (≈ 2 forwards) + update of B=8 clips, summed over the 8 devices: between 2
  # and 4 forwards (XLA skips the convolutions' padding taps, which the MAC count includes).
  assert 2 < r["train_step_flops"] / (2 * 8 * cost["macs"]) < 4
  ref = r["reference"]
  assert ref["name"] == "tiny torch model from /nowhere" and ref["threads"] >= 1
  assert ref["step_s"] > 0 and ref["clips_per_s"] == pytest.approx(8 / ref["step_s"])
  assert ref["params"] == 4 * 3 * 32 * 32 * 7 + 7
  assert r["jax_over_torch"] == pytest.approx(r["clips_per_s"] / ref["clips_per_s"])
  assert r["jax_over_torch_per_step"] == pytest.approx(
      [t / j for j, t in zip(r["step_s_all"], ref["step_s_all"])])
  assert torch.get_num_threads() == threads_before                 # restored


def test_unknown_model_lists_known():
  with pytest.raises(UserError, match=r"model 'no_such_model'.*'former_dfer'"):
    bench.main(["no_such_model"])


def test_a_model_module_s_bench_model_is_dispatched(capsys, monkeypatch):
  from jaxaffect.models import est
  monkeypatch.setattr(est, "bench_model", lambda: bench.BenchModel("est", "former_dfer:smoke"))
  assert bench.main(["est", "--reference", "/x"]) == 2      # no reference implementation in it
  assert "no reference implementation registered for est" in capsys.readouterr().err
  with pytest.raises(UserError, match="model 'frame_resnet' has no benchmark"):
    bench.main(["frame_resnet"])


def test_bad_override_is_rejected():
  with pytest.raises(UserError, match="config.model has no field .no_such_field."):
    bench.load_config("former_dfer:smoke", ["--config.model.no_such_field=1"])
  c = bench.load_config("former_dfer:smoke",
                        ["--config.model.width=8", "--config.data.sampler.hflip=false"])
  assert c.model.width == 8 and c.data.sampler.hflip is False


def test_table3_json(capsys, monkeypatch):
  monkeypatch.setattr(flops, "TABLE3_SPATIAL", (1,))
  monkeypatch.setattr(flops, "TABLE3_TEMPORAL", (1,))
  assert bench.main(["former_dfer", "--table3", "--json"]) == 0
  captured = capsys.readouterr()
  data = _last_json(captured.out)
  (row,) = data["table3"]
  assert (row["N"], row["M"], row["paper_gflops"]) == (1, 1, 8.22)
  assert round(row["gmacs"], 2) == 8.22
  # official 18,031,943 (N=1, M=3) minus two T-Former layers of 2,101,248 parameters each:
  # to_qkv 512·1536 + to_out 512·512+512 + MLP 512·1024+1024 + 1024·512+512 + 2 LayerNorms 2·1024
  assert row["params"] == 18_031_943 - 2 * 2_101_248
  assert "paper GFLOPs" in captured.err and "inferred" in data["paper_source"]


def test_host_state_matches_abstract_state():
  c = tiny_config()
  s = loop.build(c, sources=random_sources(c))
  state = bench.host_state(s.abstract_state, s.state_shardings)
  leaves = zip(jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(s.abstract_state),
               jax.tree.leaves(s.state_shardings))
  for (path, a), b, sh in leaves:
    name = jax.tree_util.keystr(path)
    assert a.shape == b.shape and a.dtype == b.dtype and a.sharding == sh, name
    v = np.asarray(a)
    top, last = path[0].key, getattr(path[-1], "key", None)
    assert np.isfinite(v).all(), name
    if top == "params" and v.ndim >= 2:                 # U(±1/√fan_in): std = 1/√(3·fan_in)
      fan_in = int(np.prod(v.shape[:-1]))
      assert np.abs(v).max() <= 1 / np.sqrt(fan_in), name
      assert 0.7 < v.std() * np.sqrt(3 * fan_in) < 1.3, name
    elif top in ("params", "extra") and last in ("scale", "var"):
      assert (v == 1).all(), name
    else:
      assert (v == 0).all(), name


def test_bench_data_reports_both_readers_on_identical_frames(tmp_path):
  """`jaxaffect bench data` (tiny): both readers run, the folder copy holds the shards' JPEG bytes
  (PIL decodes them to exactly what our reader decodes), and every figure is a positive rate."""
  from PIL import Image

  from jaxaffect import bench_data
  from jaxaffect.data import pipeline, schema
  r = bench_data.run(videos=2, frames=24, clips=1, rounds=1, workdir=str(tmp_path))
  assert set(r["readers"]) == set(bench_data.CLIPS)
  for v in r["readers"].values():
    assert v["ours_clips_per_s"] > 0 and v["torch_style_clips_per_s"] > 0
  assert len(r["prep"]) == 5 and all(v["frames_per_s"] > 0 for v in r["prep"].values())
  assert r["prep"]["mp4 256px -> 112px (--detector blazeface)"]["frames"] == 24
  src = pipeline.ShardRecords(str(tmp_path / "shards_112"), "train")
  rec = src[1]["record"]
  ours = schema.decode_frames(rec.jpegs, [0, 23])
  folder = tmp_path / "folders_112" / f"train_{rec.video_id}"
  pil = np.stack([np.asarray(Image.open(folder / f"{i}.jpg").convert("RGB")) for i in (1, 24)])
  np.testing.assert_array_equal(ours, pil)
  ours_clip = bench_data.OurReader(str(tmp_path / "shards_224"), 224, "est").clip(
      0, np.random.default_rng(0))
  torch_clip = bench_data.TorchStyleReader(str(tmp_path / "folders_224"), 224, "est").clip(
      0, np.random.default_rng(0))
  assert ours_clip.shape == (35, 224, 224, 3) and tuple(torch_clip.shape) == (35, 3, 224, 224)
  text = bench_data.format_table(r)
  assert "ours/torch" in text and "blazeface" in text


def test_bench_abaw_tcn_reports_windows_per_second_for_train_and_inference(capsys, monkeypatch):
  """`bench abaw_tcn` on a tiny TCN + Transformer with a small torch stand-in for the team's
  module: one JSON line, windows/s for train and inference, the analytic MACs per window."""
  from jaxaffect.models import abaw_tcn

  def tiny_ref(path, config):
    w, d = config.data.sampler.window, config.data.source.features[0]["dim"]
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(d, config.model.num_expr_classes))
    to_inputs = lambda batch: (torch.from_numpy(np.asarray(batch["feat/mae"])).float(),)
    return bench.Reference(f"tiny torch model from {path}", module, to_inputs,
                           lambda out, labels: out.float().mean())
  from jaxaffect.models import abaw_tcn
  spec = dataclasses.replace(bench.ABAW_TCN, reference=tiny_ref)
  monkeypatch.setattr(abaw_tcn, "bench_model", lambda: spec)
  args = ["abaw_tcn", "--config", "abaw_tcn:expr", "--batch", "8", "--steps", "2",
          "--peak-size", "128", "--json", "--config.data.sampler.window=16",
          "--config.model.num_layers=1", "--config.model.d_model=32",
          "--config.model.dim_feedforward=32", "--config.model.streams=(('mae',(16,8)),)"]
  assert bench.main(args + ["--reference", "/nowhere"]) == 0
  r = _last_json(capsys.readouterr().out)
  assert r["model"] == "abaw_tcn" and r["batch"] == 8
  m = abaw_tcn.ABAWTCN(streams=(("mae", (16, 8)),), outputs=("expr",), d_model=32, num_layers=1,
                       dim_feedforward=32)
  for key in ("step_s", "train_step_flops", "params"):
    assert isinstance(r[key], (int, float)) and r[key] > 0, key
  assert r["unit"] == "windows" and r["input_shape"] == [16, "768"]   # window x stream widths
  assert r["clips_per_s"] == pytest.approx(8 / r["step_s"])
  inf = r["inference"]
  assert inf["per_s"] == pytest.approx(8 / inf["step_s"]) and len(inf["step_s_all"]) == 2
  assert np.isfinite(r["reference"]["last_loss"]) and r["jax_over_torch"] > 0
  assert inf["reference"]["per_s"] > 0
  # The analytic forward count of one 16-frame window (TCN + projection + encoder + head).
  assert r["fwd_gmacs_per_clip"] * 1e9 == pytest.approx(
      abaw_tcn.forward_macs_per_frame(m, 16, {"mae": 768})["total"] * 16, rel=1e-9)
  assert r["params"] == abaw_tcn.param_count(m, {"mae": 768})

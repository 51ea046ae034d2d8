"""Export/import file formats (issue 10, bug 9): the extension chooses the export format and may
not contradict `--format`; import reads a file by its content, whatever its name."""
import os
import stat

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from jaxaffect import interop
from jaxaffect.errors import UserError
from jaxaffect.models import former_dfer as fd
from tests.interop.test_interop import _fd_variables, _tree_equal


@pytest.fixture(scope="module")
def tiny():
  return _fd_variables(fd.FormerDFER(num_frames=2, width=8), x_shape=(1, 2, 32, 32, 3), seed=4)


@pytest.mark.parametrize("name,fmt", [("m.pth.tar", "pth"), ("m.pt", "pth"), ("m.pth", "pth"),
                                      ("m.bin", "pth"), ("m.safetensors", "safetensors"),
                                      ("model", "safetensors")])
def test_extension_chooses_the_format_and_import_reads_it(tiny, tmp_path, name, fmt):
  model, variables = tiny
  info = interop.export("former_dfer", model, variables, tmp_path / name, batch=1)
  assert info["format"] == fmt
  path = info["weights"]
  assert interop.sniff_format(path) == fmt
  if fmt == "pth":                              # torch.load reads it (it used to hold safetensors)
    assert "fc.weight" in torch.load(path, weights_only=True)
    assert "torch.load" in info["snippet"]
  else:
    assert "fc.weight" in load_file(path) and "load_file" in info["snippet"]
  _tree_equal(interop.from_torch_state_dict("former_dfer", interop.load_state_dict_file(path),
                                            variables), jax_np(variables))


def jax_np(tree):
  import jax
  return jax.tree.map(np.asarray, tree)


@pytest.mark.parametrize("name,fmt", [("m.safetensors", "pth"), ("m.pth.tar", "safetensors"),
                                      ("m.pt", "safetensors")])
def test_contradicting_extension_is_refused_before_writing(tiny, tmp_path, name, fmt):
  model, variables = tiny
  with pytest.raises(UserError, match=f"the extension says .* --format says {fmt}"):
    interop.export("former_dfer", model, variables, tmp_path / name, fmt=fmt, batch=1)
  assert os.listdir(tmp_path) == []


def test_import_reads_by_content_not_name(tiny, tmp_path):
  """A safetensors file named `.pth` and a torch file named `.safetensors` both load; a file that
  is neither is a one-line error naming it."""
  model, variables = tiny
  sd = interop.to_torch_state_dict("former_dfer", variables)
  interop.save_state_dict(sd, tmp_path / "st.pth", "safetensors")
  interop.save_state_dict(sd, tmp_path / "pt.safetensors", "pth")
  for p in ("st.pth", "pt.safetensors"):
    got = interop.load_state_dict_file(tmp_path / p)
    assert got.keys() == sd.keys()
    for k in sd:
      np.testing.assert_array_equal(got[k], sd[k], err_msg=k)
  (tmp_path / "junk.pth").write_bytes(b"hello, not weights at all")
  with pytest.raises(UserError, match=r"junk.pth: neither a safetensors file nor a PyTorch"):
    interop.load_state_dict_file(tmp_path / "junk.pth")
  with pytest.raises(UserError, match="no such file"):
    interop.load_state_dict_file(tmp_path / "absent.pth")


def test_exports_have_the_usual_file_mode(tiny, tmp_path):
  """safetensors writes 0600; an export is shared like any file the user writes (umask)."""
  model, variables = tiny
  old = os.umask(0o022)
  try:
    info = interop.export("former_dfer", model, variables, tmp_path / "w.safetensors", batch=1)
  finally:
    os.umask(old)
  for p in (info["weights"], info["verify"]):
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644, p


def test_truncated_weight_files_are_one_line_errors(tiny, tmp_path):
  """An interrupted download: `import` printed a SafetensorError / PytorchStreamReader traceback."""
  model, variables = tiny
  for name in ("w.safetensors", "w.pth"):
    info = interop.export("former_dfer", model, variables, tmp_path / name, batch=1)
    data = open(info["weights"], "rb").read()
    cut = tmp_path / f"cut_{name}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=rf"cut_{name}: cannot read the .* file .*is it complete"):
      interop.load_state_dict_file(cut)


def test_export_side_files_follow_the_whole_name_and_content(tiny, tmp_path):
  """`m.safetensors` and `m.pth` shared `m.verify.npz`; `w.txt --format pth` printed a
  safetensors loader in its snippet."""
  model, variables = tiny
  a = interop.export("former_dfer", model, variables, tmp_path / "m.safetensors", batch=1)
  b = interop.export("former_dfer", model, variables, tmp_path / "m.pth", batch=1)
  assert a["verify"] != b["verify"] and os.path.exists(a["verify"]) and os.path.exists(b["verify"])
  c = interop.export("former_dfer", model, variables, tmp_path / "w.txt", fmt="pth", batch=1)
  assert 'torch.load("' in c["snippet"] and "load_file(" not in c["snippet"].split("import")[-1]

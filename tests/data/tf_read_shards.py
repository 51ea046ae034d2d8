"""Reads jaxaffect shards with tf.data only (run in a subprocess by test_schema.py / test_prep.py).

usage: python tf_read_shards.py OUT.npz SHARD [SHARD ...]
Writes, per record r: id_r, label_r, frame_index_r, va_r (if any), status_r, landmarks_r, and the
first decoded frame jpeg0_r (tf.io.decode_jpeg), all through TFRecordDataset + parse_single_example.
Also writes one TFRecord file with tf.io.TFRecordWriter (tf_written.tfrecord next to OUT) holding
the first record re-serialised by TF, so the other direction can be tested.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
import numpy as np
import tensorflow as tf

out, files = sys.argv[1], sys.argv[2:]
spec = {
    "video/id": tf.io.FixedLenFeature([], tf.string),
    "video/label": tf.io.FixedLenFeature([], tf.int64),
    "video/num_frames": tf.io.FixedLenFeature([], tf.int64),
    "video/num_landmarks": tf.io.FixedLenFeature([], tf.int64),
    "frame/jpeg": tf.io.VarLenFeature(tf.string),
    "frame/index": tf.io.VarLenFeature(tf.int64),
    "frame/status": tf.io.VarLenFeature(tf.int64),
    "frame/landmarks": tf.io.VarLenFeature(tf.float32),
    "frame/va": tf.io.VarLenFeature(tf.float32),
    "labels/tasks": tf.io.VarLenFeature(tf.string),
}
res = {}
first = None
for i, raw in enumerate(tf.data.TFRecordDataset(files)):
  if first is None:
    first = raw.numpy()
  ex = tf.io.parse_single_example(raw, spec)
  t = int(ex["video/num_frames"])
  k = int(ex["video/num_landmarks"])
  dense = {key: tf.sparse.to_dense(ex[key]).numpy() for key in spec if key.startswith(("frame/", "labels/"))}
  res[f"id_{i}"] = ex["video/id"].numpy()
  res[f"label_{i}"] = int(ex["video/label"])
  res[f"frame_index_{i}"] = dense["frame/index"]
  res[f"status_{i}"] = dense["frame/status"]
  res[f"landmarks_{i}"] = dense["frame/landmarks"].reshape(t, k, 2)
  if b"va" in set(dense["labels/tasks"].tolist()):
    res[f"va_{i}"] = dense["frame/va"].reshape(t, 2)
  res[f"jpeg0_{i}"] = tf.io.decode_jpeg(dense["frame/jpeg"][0], channels=3, dct_method="INTEGER_ACCURATE").numpy()
res["count"] = len([k for k in res if k.startswith("id_")])
np.savez(out, **res)
with tf.io.TFRecordWriter(os.path.join(os.path.dirname(out), "tf_written.tfrecord")) as w:
  w.write(first)

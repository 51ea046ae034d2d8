"""The WRITE side of the data flow: `python -m data_prep SOURCE --src PATH --out DIR`.

sources/ (one per official dataset layout) -> faces (detect, align, crop; or precomputed geometry)
-> shards (TFRecord files in the schema of `jaxaffect.data.schema` + manifest).
"""

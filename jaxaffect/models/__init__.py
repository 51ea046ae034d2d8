"""Paper models composed from `jaxaffect.nn`; one file per paper."""

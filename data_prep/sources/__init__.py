"""Dataset sources: one module per official layout, each turning it into `VideoItem`s / `Skip`s.

Every module exposes
  `add_arguments(parser)`  its own CLI flags (prefix-free names, e.g. `--list-file`), and
  `items(src, args)`       an iterator of `VideoItem | Skip` in a deterministic order;
`args` may be a plain `argparse.Namespace` with only some fields (defaults apply). The error policy
(Skip vs raise vs UNREADABLE/MISSING frames) is in `_util`'s docstring; types in `base`.
"""
from __future__ import annotations

import types

from data_prep.sources import (affectnet, afew, affwild2, dfew, fer2013, ferplus, folder, rafdb,
                               recola, sewa, synthetic, video)

SOURCES: dict[str, types.ModuleType] = {
    "dfew": dfew,
    "afew": afew,
    "affwild2": affwild2,
    "recola": recola,
    "sewa": sewa,
    "affectnet": affectnet,
    "rafdb": rafdb,
    "fer2013": fer2013,
    "ferplus": ferplus,
    "folder": folder,
    "video": video,
    "synthetic": synthetic,
}

"""Layout rules of DESIGN.md (issue 11 item 8): no import cycles among module-level imports of
jaxaffect/ and data_prep/, and no module over 500 lines.

The import graph is read with `ast` (nothing is imported): an edge a -> b for every `import b`,
`from b import x` and `from pkg import b` (a submodule) at module level, including those under
`if`/`try` at module level; imports inside functions and classes (lazy) and under
`if TYPE_CHECKING:` do not count. A package's `__init__` is a node of its own; importing
`pkg.mod` also runs `pkg/__init__.py`, so `a -> pkg.mod` adds `a -> pkg` too (unless a is inside
pkg: its packages are initialised before it runs).
"""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("jaxaffect", "data_prep")
MAX_LINES = 500


def _modules() -> dict[str, str]:
  """{dotted module name: path} of every .py file under PACKAGES."""
  out = {}
  for pkg in PACKAGES:
    for d, dirs, files in os.walk(os.path.join(ROOT, pkg)):
      dirs[:] = sorted(x for x in dirs if not x.startswith((".", "__pycache__")))
      for f in sorted(files):
        if f.endswith(".py"):
          rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].split(os.sep)
          if rel[-1] == "__init__":
            rel = rel[:-1]
          out[".".join(rel)] = os.path.join(d, f)
  return out


def _is_type_checking(node: ast.If) -> bool:
  t = node.test
  return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
      isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _top_level_imports(tree: ast.Module):
  """Import nodes executed when the module is imported (not inside def/class/TYPE_CHECKING)."""
  todo = list(tree.body)
  while todo:
    node = todo.pop(0)
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    elif isinstance(node, ast.If):
      if not _is_type_checking(node):
        todo[:0] = node.body + node.orelse
    elif isinstance(node, ast.Try):
      todo[:0] = node.body + node.orelse + node.finalbody + [
          n for h in node.handlers for n in h.body]
    elif isinstance(node, (ast.With,)):
      todo[:0] = node.body


def import_graph() -> dict[str, set[str]]:
  mods = _modules()
  graph: dict[str, set[str]] = {m: set() for m in mods}

  def add(src: str, target: str):
    parts = target.split(".")
    for k in range(1, len(parts) + 1):       # importing a.b.c runs a, a.b, a.b.c
      name = ".".join(parts[:k])
      # src's own packages are already being imported when src runs: not an edge
      if name in mods and name != src and not src.startswith(name + "."):
        graph[src].add(name)

  for mod, path in mods.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    is_pkg = path.endswith("__init__.py")
    for node in _top_level_imports(tree):
      if isinstance(node, ast.Import):
        for a in node.names:
          add(mod, a.name)
        continue
      if node.level:                          # relative import
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
      else:
        target = node.module or ""
      add(mod, target)
      for a in node.names:                    # `from pkg import submodule`
        if f"{target}.{a.name}" in mods:
          add(mod, f"{target}.{a.name}")
  return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan), each sorted."""
  index, low, stack, on, out = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return sorted(out)


def test_import_graph_sees_known_edges():
  g = import_graph()
  assert "jaxaffect.data.schema" in g["jaxaffect.data.records"]
  assert "jaxaffect.data.parts" in g["jaxaffect.data.pipeline"]
  assert "jaxaffect.data.parts" in g["jaxaffect.data.source_parts"]
  assert "data_prep.shard_pool" in g["data_prep.shards"]
  assert "data_prep.sources.base" in g["data_prep.faces"]
  assert "jaxaffect.data.pipeline" not in g["jaxaffect.data.features"]


def test_no_import_cycles():
  cycles = find_cycles(import_graph())
  assert not cycles, "module-level import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _sizes() -> dict[str, int]:
  out = {}
  for path in _modules().values():
    with open(path) as f:
      out[os.path.relpath(path, ROOT)] = sum(1 for _ in f)
  return out


def test_no_module_over_500_lines():
  over = {p: n for p, n in _sizes().items() if n > MAX_LINES}
  assert not over, f"modules over {MAX_LINES} lines: {over}"


def test_jaxaffect_imports_data_prep_only_through_the_prep_command():
  """DESIGN.md: data_prep may import jaxaffect (the shared schema), never the other way round,
  except `jaxaffect prep`, which hands its arguments to `data_prep.cli` (lazily)."""
  g = import_graph()
  bad = {m: sorted(t for t in ts if t.split(".")[0] == "data_prep")
         for m, ts in g.items() if m.startswith("jaxaffect")}
  assert not {m: t for m, t in bad.items() if t}
  lazy = []
  for mod, path in _modules().items():
    if mod.startswith("jaxaffect"):
      with open(path) as f:
        tree = ast.parse(f.read(), path)
      lazy += [mod for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               and (n.module or "").split(".")[0] == "data_prep"]
  assert lazy == ["jaxaffect.cli"]

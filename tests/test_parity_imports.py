"""The core package never imports PyTorch: only `dgi_jax/parity/` may, and lazily; and the
pre-trained checkpoint reader, inside the function that reads a `pytorch_model.bin` (a
pickle of torch tensors that only torch can open)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "dgi_jax"


def _torch_imports(path: pathlib.Path, top_level_only: bool = False):
  tree = ast.parse(path.read_text(encoding="utf-8"))
  nodes = tree.body if top_level_only else ast.walk(tree)
  found = []
  for node in nodes:
    if isinstance(node, ast.Import):
      found += [a.name for a in node.names if a.name.split(".")[0] == "torch"]
    elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
      found.append(node.module)
  return found


LAZY_TORCH_READERS = ("models/pretrained.py",)


def test_no_torch_import_outside_parity():
  offenders = {str(p.relative_to(PACKAGE)): _torch_imports(p)
               for p in PACKAGE.rglob("*.py") if "parity" not in p.relative_to(PACKAGE).parts
               and str(p.relative_to(PACKAGE)) not in LAZY_TORCH_READERS}
  assert not {k: v for k, v in offenders.items() if v}
  for name in LAZY_TORCH_READERS:
    assert not _torch_imports(PACKAGE / name, top_level_only=True), name


def test_parity_entry_points_import_torch_lazily():
  # `dgi parity` imports these first; they must load (and explain) without torch.
  for name in ("__init__.py", "compare.py"):
    assert not _torch_imports(PACKAGE / "parity" / name, top_level_only=True), name

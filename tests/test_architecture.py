"""The package's folders are its layers, and imports only run downward: a module imports
from its own folder or from the folders below it (docs/design.md draws them)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "progan_jax"
# Bottom to top; folders on one line are one layer and do not import each other.
LAYERS = (("runtime",), ("data",), ("nets",), ("metrics",), ("training",), ("modes", "pretrained"))
LAYER_OF = {folder: height for height, folders in enumerate(LAYERS) for folder in folders}


def _imported_folders(path: pathlib.Path) -> set[str]:
    """The progan_jax folders a module imports from (at any depth of its code)."""
    folders = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "progan_jax" and len(parts) > 1:
                folders.add(parts[1])
    return folders


def test_every_module_lives_in_a_layer_folder():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert loose == []
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(
        LAYER_OF
    )


@pytest.mark.parametrize("folder", sorted(LAYER_OF))
def test_imports_only_run_downward(folder):
    upward = {}
    for path in sorted((PACKAGE / folder).glob("*.py")):
        for other in _imported_folders(path):
            if other != folder and LAYER_OF[other] >= LAYER_OF[folder]:
                upward.setdefault(path.name, []).append(other)
    assert upward == {}

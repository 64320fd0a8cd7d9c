"""The device path (preprocessing, bundle manifest, engines, runtime) must never import torch."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgebind

DEVICE_PACKAGES = ["edgebind.preprocess", "edgebind.bundle", "edgebind.engines", "edgebind.runtime"]

BLOCKER = r"""
import importlib.abc, sys
BLOCKED = {"torch", "torchvision", "torchaudio", "transformers", "onnxscript"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"device-path import of {name} is forbidden")
        return None
sys.meta_path.insert(0, Block())
import importlib
for mod in sys.argv[1:]:
    importlib.import_module(mod)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print("imported", len(sys.argv) - 1, "modules")
"""


def _device_modules() -> list[str]:
    root = Path(edgebind.__file__).parent
    mods = ["edgebind", "edgebind.cli.main"]
    for pkg in DEVICE_PACKAGES:
        pkg_dir = root / pkg.split(".", 1)[1]
        if not pkg_dir.is_dir():
            continue
        mods.append(pkg)
        mods += [f"{pkg}.{m.name}" for m in pkgutil.iter_modules([str(pkg_dir)])]
    return mods


def test_device_path_never_imports_torch():
    mods = _device_modules()
    assert "edgebind.preprocess._checks" in mods
    proc = subprocess.run([sys.executable, "-c", BLOCKER, *mods], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"a device-path module imports torch or similar:\n{proc.stderr[-3000:]}"
    assert f"imported {len(mods)} modules" in proc.stdout


@pytest.mark.parametrize("module", ["edgebind", "edgebind.preprocess"])
def test_blocker_really_blocks(module):
    # The blocker itself must fail when torch is imported, or the test above proves nothing.
    code = BLOCKER.replace("import importlib\nfor mod", "import importlib\nimport torch\nfor mod")
    proc = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "forbidden" in proc.stderr

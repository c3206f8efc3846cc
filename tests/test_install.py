"""`pip install .` installs the project's packages with their dependencies declared (issue 32): the wheel holds
every package of the four source folders, and the losses import from it outside the checkout."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FOLDERS = ("experiments", "age_estimation", "image_classification", "average_k")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_the_package_list_is_every_package_of_the_source_folders():
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for folder in FOLDERS
               for p in (ROOT / folder).rglob("__init__.py") if "__pycache__" not in p.parts}
    assert set(find_packages(str(ROOT), include=include)) == on_disk
    assert PYPROJECT["build-system"]["build-backend"] == "setuptools.build_meta"


def test_declared_dependencies_are_the_pinned_ones_loosened():
    """Every declared dependency (core and extras) is one requirements.txt pins for the suite."""
    pinned = {_name(line) for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")}
    declared = PYPROJECT["project"]["dependencies"] + [
        r for extra in PYPROJECT["project"]["optional-dependencies"].values() for r in extra]
    assert {_name(r) for r in declared} <= pinned
    assert {"torch", "torchvision", "hydra-core", "omegaconf"} <= {_name(r) for r in PYPROJECT["project"]["dependencies"]}


def test_the_wheel_imports_the_losses_outside_the_checkout(tmp_path):
    """Build the wheel from a copy of the sources (the build leaves nothing in the checkout), then import the losses
    with only the wheel on the path, from another directory, and compare a loss value with the checkout's (2.6 s)."""
    src = tmp_path / "src"
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("losslab-*.whl")
    code = ("import torch, experiments.losses as m\n"
            "from experiments.losses import ComplementCrossEntropy\n"
            "g = torch.Generator().manual_seed(0)\n"
            "x, y = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)\n"
            "print(m.__file__); print(repr(ComplementCrossEntropy(gamma=-1.0)(x, y).item()))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(wheel), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    where, value = out.stdout.split()
    assert where.startswith(str(wheel)) and str(ROOT) not in where

    import torch

    from experiments.losses import ComplementCrossEntropy

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    assert float(value) == ComplementCrossEntropy(gamma=-1.0)(x, y).item()

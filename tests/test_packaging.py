"""What the wheels install: the optimizer alone (packages/novograd-optim) is `novograd_optim` and depends on torch
only, and works without the suite; the suite's wheel puts no generic top-level names (`models`, `data`) into
site-packages. Built offline with `uv build --wheel` (hatchling from uv's cache)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def build_wheel(project: Path, out: Path) -> Path:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH (the suite installs with it: make install)")
    result = subprocess.run([uv, "build", "--wheel", "--offline", str(project), "--out-dir", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("*.whl")
    return wheel


def top_level_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name.split("/")[0] for name in archive.namelist()}


def requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        lines = archive.read(metadata).decode().splitlines()
    return [line.removeprefix("Requires-Dist: ") for line in lines if line.startswith("Requires-Dist: ")]


# One step of NovoGrad and of LARC from the installed package, with the suite's `novograd` made unimportable.
SMOKE = """
import sys
sys.modules["novograd"] = None  # the suite is on this interpreter's path; the package must not need it
import torch
from novograd_optim import LARC, NovoGrad
p = torch.nn.Parameter(torch.ones(3))
p.grad = torch.full((3,), 2.0)
LARC(NovoGrad([p], lr=0.1)).step()
print(p.tolist())
"""


def test_the_optimizer_package_holds_the_optimizer_alone_and_runs_without_the_suite(tmp_path):
    wheel = build_wheel(ROOT / "packages" / "novograd-optim", tmp_path / "dist")
    assert top_level_names(wheel) == {"novograd_optim", "novograd_optim-0.1.0.dist-info"}
    assert requirements(wheel) == ["torch>=2.6"]
    target = tmp_path / "site-packages"
    with zipfile.ZipFile(wheel) as archive:  # a pure-Python wheel installs by unpacking
        archive.extractall(target)
    result = subprocess.run([sys.executable, "-c", SMOKE], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    # NovoGrad's first step with LARC's clip: w - lr * min(1, 0.001 * ||w|| / (lr ||g||)) * g / ||g||, ||w|| = sqrt(3).
    factor = min(1.0, 0.001 * 3**0.5 / (0.1 * (12**0.5 + 1e-8)))
    expected = 1.0 - 0.1 * factor * 2.0 / (((factor * 2.0) ** 2 * 3 + 1e-8) ** 0.5)
    assert [round(w, 6) for w in eval(result.stdout)] == [round(expected, 6)] * 3


def test_the_suite_wheel_installs_no_generic_top_level_packages(tmp_path):
    wheel = build_wheel(ROOT, tmp_path / "dist")
    assert top_level_names(wheel) == {"novograd", "novograd_suite-0.1.0.dist-info"}

"""clipkit installs anywhere: a wheel built from the tracked files, installed into a fresh folder outside the
checkout, runs a shipped probe spec by name from another working directory. No network (no build isolation)."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked_copy(dest: Path) -> Path:
    """The checkout's tracked files (as they are in the working tree) copied to dest; links stay links."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for rel in filter(None, files.split("\0")):
        src = ROOT / rel
        if not (src.exists() or src.is_symlink()):   # deleted in the working tree, not yet committed
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dest / rel)
        else:
            shutil.copy2(src, dest / rel)
    return dest


@pytest.mark.slow
def test_wheel_installs_outside_the_checkout_and_runs_a_shipped_probe(tmp_path):
    src = _tracked_copy(tmp_path / "src")
    dist, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = dist.glob("clipkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("clipkit/probes/specs/")}
    assert {p.name for p in (ROOT / "clipkit/probes/specs").glob("*.yaml")} <= shipped
    subprocess.run([*pip, "install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": str(site), "CLIPKIT_HOME": str(tmp_path / "home"), "CLIPKIT_OFFLINE": "1"}
    env.pop("CLIPKIT_PROBES", None)
    where = subprocess.run([sys.executable, "-c", "import clipkit; print(clipkit.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(site.resolve()), f"clipkit imported from {where}, not the target"
    run = subprocess.run([sys.executable, "-m", "clipkit", "probe", "--probe", "counting", "--model",
                          "clipkit-tiny:random", "--n", "20"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("counting ")), "")
    assert " acc " in line and "chance 0.167 n 20" in line, run.stdout

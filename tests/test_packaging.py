"""The configs travel: a wheel install and a bare source checkout both run sam-train."""

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bare_venv(env_dir: Path, with_pip: bool) -> Path:
    """A venv that sees this interpreter's packages (torch, hydra...) but not its editable
    `sam`: a path added by a .pth file is searched, but its own .pth files are not run."""
    venv.create(env_dir, with_pip=with_pip)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "outer_packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return py


def test_source_checkout_runs_without_install(tmp_path):
    """PYTHONPATH=<checkout> python -m sam.cli (as on a machine where nothing is
    installed) finds configs/ beside the package."""
    py = bare_venv(tmp_path / "venv", with_pip=False)
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([str(py), "-m", "sam.cli", "--cfg", "job", "dataset=synthetic"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "name: synthetic" in proc.stdout


def test_wheel_install_runs_sam_train_cfg_job(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("sam-*.whl")
    env_dir = tmp_path / "venv"
    py = bare_venv(env_dir, with_pip=True)
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    where = subprocess.run([str(py), "-c", "import sam; print(sam.__file__)"], cwd=tmp_path,
                           env=env, check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(env_dir)), where
    proc = subprocess.run([str(env_dir / "bin" / "sam-train"), "--cfg", "job",
                           "dataset=cifar100", "optim=sgd"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "name: cifar100" in proc.stdout and "_target_: sam.optim.Descent" in proc.stdout
    assert "base: sgd" in proc.stdout and "name: official" in proc.stdout
    # the launcher choices (configs/hydra/launcher/) ship too
    proc = subprocess.run([str(env_dir / "bin" / "sam-train"), "--cfg", "hydra",
                           "hydra/launcher=slurm"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "submitit_launcher.SlurmLauncher" in proc.stdout

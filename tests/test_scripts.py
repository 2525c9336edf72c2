"""The benchmark and GPU-check scripts stay runnable (CPU here; the GPU runs elsewhere)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_check.sh")], check=True)


def test_bench_runs_on_cpu_and_reports_ratios(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--model", "resnet20",
                    "--batch", "16", "--steps", "2", "--warmup", "1", "--rounds", "1",
                    "--workers", "0", "--device", "cpu", "--json", str(out)], check=True, env=ENV,
                   capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    for key in ("sgd", "sam", "fwdbwd", "reference"):
        assert result["step_s"][key] > 0
    assert result["sam_over_sgd"] == result["step_s"]["sam"] / result["step_s"]["sgd"]
    assert result["reference_over_ours_sam"] > 0


def test_bench_msharpness_runs_on_cpu(tmp_path):
    out = tmp_path / "ms.json"
    subprocess.run([sys.executable, str(REPO / "scripts" / "bench_msharpness.py"), "--model",
                    "resnet20", "--batch", "8", "--m", "2,8", "--steps", "1", "--rounds", "1",
                    "--device", "cpu", "--json", str(out)], check=True, env=ENV,
                   capture_output=True, timeout=300)
    rows = {r["m"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows[2]["loop_s"] > 0 and rows[2]["vmap_s"] > 0 and rows[8]["vmap_s"] is None

"""The benchmark scripts import and answer --help (their timings are run by hand, see
docs/performance.md)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cli  # runs the installed commands, as a user would

SCRIPTS = sorted((Path(__file__).parents[2] / "scripts").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_imports_and_answers_help(script):
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


@pytest.mark.parametrize("script,args", [
    ("bench.py", ["--variant", "plain_fe"]),
    ("bench_sweep.py", ["--strategy", "gradual"]),  # the plain loop that thaws stages
], ids=["bench", "bench_sweep"])
def test_a_benchmarks_plain_loop_runs(image_folder, tmp_path, script, args):
    """--help only imports; this runs a plain loop on a tiny folder, so an API change that breaks
    a benchmark at run time (it happened: HeInit's signature) shows here."""
    result = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPTS[0].parent / script), *args, "--result", str(result),
         "--data", str(image_folder), "--epochs", "5", "--image-size", "32", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    numbers = json.loads(result.read_text())
    assert numbers["wall_s"] > 0 and 0 <= numbers.get("best", numbers.get("val_acc")) <= 1


def test_the_sweep_start_measurement_times_both_jobs(image_folder, tmp_path):
    """bench.py --only sweep on a tiny folder instead of CIFAR-10: both jobs' milestones are
    found in their logs, the second job's scan comes from the first's record."""
    done = subprocess.run(
        [sys.executable, str(SCRIPTS[0].parent / "bench.py"), "--only", "sweep",
         "--cifar", str(image_folder), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| job ")]
    assert len(rows) == 3 and all(float(r.split("|")[3]) > 0 for r in rows), done.stdout
    assert "inspected" not in (tmp_path / "sweep" / "1" / "train.log").read_text()


def test_the_scan_measurement_compares_threads_and_processes(image_folder, tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPTS[0].parent / "bench.py"), "--only", "scan", "--data", str(image_folder),
         "--cifar", str(image_folder), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| ants/bees", "| CIFAR-10"))]
    assert len(rows) == 3 and all(r.rstrip(" |").endswith("x") for r in rows), done.stdout

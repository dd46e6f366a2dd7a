"""scripts/bench_gpu.py, the benchmark a session with a GPU runs as one prepared command, runs end
to end on the CPU at tiny sizes (--quick), so it cannot rot between the sessions that have one."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.data import write_image

pytestmark = pytest.mark.cli  # runs the script in a subprocess, as a GPU session would

SCRIPT = Path(__file__).parents[2] / "scripts" / "bench_gpu.py"
SECTIONS = {"synthetic", "jpeg", "loaders", "decode", "cache", "predict", "unet", "ddp"}  # no compile
ROWS = [
    "ResNet-18 training, synthetic, eager (img/s)",  # --quick trains ResNet-18
    "Lightning overhead per step, synthetic, eager (ms/step)",
    "without the NaN guard",
    "ResNet-18 training, JPEGs through the loader, eager (img/s)",
    "JPEG loader alone, ",
    "decode_jpeg(device=cpu)",
    "feature cache build",
    "cached epoch",
    "predict, Predictor.predicted",
    "predict, transferlab.load(...).predict",
    "U-Net VGG16-bn training step",
    "trainer=ddp trainer.devices=1",
]


def jpeg_folder(root: Path) -> Path:
    """make_image_folder's two classes as JPEGs: the script measures JPEG decoding, and only reads
    .jpg/.jpeg files."""
    for split, n in (("train", 6), ("val", 3)):
        for cls, color in (("cats", (220, 20, 20)), ("dogs", (20, 20, 220))):
            for i in range(n):
                write_image(root / split / cls / f"{i}.jpg", color=color)
    return root


def test_quick_cpu_run_prints_the_table_and_writes_the_numbers(tmp_path):
    out = tmp_path / "out"
    # --repeats 2: the alternating repeated timings too (--quick alone times each side once).
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--repeats", "2",
         "--data", str(jpeg_folder(tmp_path / "data")), "--out", str(out), "--work", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    table = (out / "table.md").read_text()
    assert table.strip() in done.stdout
    assert table.startswith("machine: ") and "\ndevice: cpu" in table
    for measure in ROWS:
        assert measure in table, measure
    ddp_row = next(line for line in table.splitlines() if line.startswith("| trainer=ddp"))
    assert "world 1; 1 run dir" in ddp_row and ddp_row.endswith("| yes |")
    # The H100/H200 targets are printed but not judged on the CPU.
    assert "| >= 5,000 img/s |  |" in table
    assert "(runs within " in table

    numbers = json.loads((out / "results.json").read_text())
    results = numbers["results"]
    assert set(results) == SECTIONS
    assert not {name: r["error"] for name, r in results.items() if "error" in r}
    for name in ("synthetic", "jpeg", "unet"):
        assert results[name]["plain_s"] > 0 and results[name]["lab_s"] > 0
    assert len(results["synthetic"]["plain_runs"]) == len(results["unet"]["lab_runs"]) == 2
    assert results["cache"]["build_s"] > 0 and len(results["cache"]["epoch_s"]) == 2
    assert results["ddp"]["process_group"] and results["ddp"]["world_size"] == 1
    assert numbers["settings"]["quick"] and numbers["device"].startswith("device: cpu")

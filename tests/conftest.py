import os

# Two cores shared with other processes: OpenMP's busy-waiting threads slow torch down 5-10x under
# that contention. Set before torch is imported; the CLI subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

DATA_ENV = "TRANSFERLAB_DATA_DIR"


def real_dataset(name: str) -> Path:
    """The shared real dataset; CI sets TRANSFERLAB_DATA_DIR and then a missing set is a failure."""
    base = os.environ.get(DATA_ENV)
    if not base:
        pytest.skip(f"{DATA_ENV} is not set: real-data test skipped")
    root = Path(base) / name
    if not root.is_dir():
        pytest.fail(f"{DATA_ENV}={base} is set but {root} does not exist")
    return root


@pytest.fixture
def hymenoptera() -> Path:
    return real_dataset("hymenoptera")


def write_image(path: Path, size=(40, 30), mode="RGB", color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


def make_image_folder(root: Path, noise: float = 0.0) -> Path:
    """A tiny two-class ImageFolder with train and val splits: a red and a blue class, each pixel
    with Gaussian `noise` (std, in 0..255 levels) or none."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for cls, color in (("cats", (220, 20, 20)), ("dogs", (20, 20, 220))):
            for i in range(n):
                path = write_image(root / split / cls / f"{i}.png", color=color)
                if noise:
                    pixels = np.asarray(color) + rng.normal(0, noise, (30, 40, 3))
                    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "folder")


def make_mask_folder(root: Path, size: int = 32) -> Path:
    """Tiny image/mask pairs: a bright square on dark noise, its mask 255 inside, 0 outside."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for i in range(n):
            image = rng.integers(0, 60, (size, size), dtype=np.uint8)
            mask = np.zeros((size, size), dtype=np.uint8)
            top, left, side = rng.integers(2, size // 2, 3)
            image[top:top + side, left:left + side] += 150
            mask[top:top + side, left:left + side] = 255
            for folder, pixels in (("images", image), ("masks", mask)):
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / split / folder / f"p{i}.png")
    return root


def train_run(tmp: Path, *args: str) -> Path:
    """A finished transferlab-train run (2 epochs, He init, CPU) and its run dir."""
    from cli import TINY, console, run_cli, the_run_dir

    result = run_cli("transferlab-train", *TINY, *args, cwd=tmp)
    assert result.returncode == 0, console(result)[-3000:]
    return the_run_dir(tmp)


@pytest.fixture(scope="session")
def classification_run(tmp_path_factory) -> Path:
    """A finished classification run on a tiny synthetic ImageFolder (data.root in its config)."""
    tmp = tmp_path_factory.mktemp("classification_run")
    # Noisy pixels keep the tiny model's probabilities off exactly 0 and 1 (plain colours drove
    # its logits to ~1e10), so probability comparisons mean something.
    data = make_image_folder(tmp / "data", noise=40.0)
    return train_run(tmp, f"data.root={data}", "data.image_size=32")


@pytest.fixture(scope="session")
def segmentation_run(tmp_path_factory) -> Path:
    """A finished U-Net run on tiny synthetic 32 px masks, trained at their own size."""
    tmp = tmp_path_factory.mktemp("segmentation_run")
    data = make_mask_folder(tmp / "data")
    return train_run(tmp, "task=segmentation", "data=segmentation_folder", f"data.root={data}",
                     "data.image_size=32", "data.batch_size=2")


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)

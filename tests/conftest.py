import os

# Two cores shared with other processes: OpenMP's busy-waiting threads slow torch down 5-10x under
# that contention. Set before torch is imported; the CLI subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

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


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A tiny two-class ImageFolder with train and val splits."""
    root = tmp_path / "folder"
    for split, n in (("train", 6), ("val", 3)):
        for cls, color in (("cats", (220, 20, 20)), ("dogs", (20, 20, 220))):
            for i in range(n):
                write_image(root / split / cls / f"{i}.png", color=color)
    return root


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)

"""The images an export is checked on, and the check: the exported model's probabilities against
PyTorch's on the same inputs."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from transferlab.console import shown
from transferlab.errors import ConfigError
from transferlab.export.graphs import ExportCheckError

log = logging.getLogger("transferlab")

EXAMPLE_BATCH = 2  # the batch the export traces; the checks run other sizes


def val_folder(run_dir: Path, task) -> tuple[Path | None, str]:
    """The run's val images (from its config.yaml's data.root), or None and why not."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return None, f"{config} does not exist"
    try:
        root = OmegaConf.select(OmegaConf.load(config), "data.root")
    except Exception as err:  # a damaged config costs the real images, not the export
        return None, f"{config} does not load ({type(err).__name__})"
    if not root:
        return None, f"{config} sets no data.root"
    folder = task.image_folder(Path(root) / "val")
    if not folder.is_dir():
        return None, f"{folder} does not exist (data.root={root} in {config})"
    return folder, ""


def spread(items: list, count: int) -> list:
    """`count` items evenly spaced through `items` (so a sorted class folder gives several classes)."""
    if len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def usable_few(predictor, inputs, count: int) -> list:
    """Up to `count` images spread through `inputs` that decode; only a few files are decoded,
    not a whole val set."""
    from transferlab.data.images import is_image_name
    from transferlab.inference import image_sources

    named = [s for s in image_sources(inputs) if not isinstance(s, Path) or is_image_name(s)]
    return spread(predictor.usable(spread(named, 2 * count), on_bad_file="skip")[0], count)


def check_images_for(predictor, run_dir: Path, check_images, count: int) -> tuple[list, str]:
    """Up to `count` decoded check images (`check_images`, else the run's val images) and where
    they came from; none when there are none (the check then runs on random tensors)."""
    from transferlab.data.images import as_rgb, load_rgb

    if check_images:
        sources = usable_few(predictor, check_images, count)
        if not sources:
            raise ConfigError(f"check_images={check_images}: no usable image")
        source = f"check_images={check_images}"
    else:
        folder, why = val_folder(run_dir, predictor.task)
        sources = usable_few(predictor, folder, count) if folder else []
        if folder and not sources:
            why = f"{folder} holds no usable image"
        source = f"the run's val images in {shown(folder)}" if sources else ""
        if not sources:
            log.warning("no val images to check on (%s): checking on random tensors instead; "
                        "pass check_images=<folder> to check on real images", why)
    return [load_rgb(s) if isinstance(s, Path) else as_rgb(s) for s in sources], source


def check_batches(predictor, images: list, source: str, count: int):
    """[(label, batch)] to compare on: `images` through the eval transform, or random
    normalised-looking tensors when there are none; for a dense task also at a height and width
    the export did not trace."""
    import torch
    from torchvision.transforms import v2

    pre = predictor.preprocess
    size = int(pre["image_size"])
    count = max(int(count), EXAMPLE_BATCH)
    other = (size + 16, size + 8)
    generator = torch.Generator().manual_seed(0)
    if images:
        transform = predictor.transform()
        x = torch.stack([transform(i) for i in images])
        if len(x) < EXAMPLE_BATCH:  # one image: its mirror image makes the second
            x = torch.cat([x, x.flip(-1)])
        source = f"{len(images)} image(s): {source}"
    else:
        x = torch.randn(count, 3, size, size, generator=generator)
        source = f"{count} random tensors (no images)"
    batches = [(f"batch {len(x)} at {size}x{size}", x), (f"batch 1 at {size}x{size}", x[:1])]
    if predictor.task.dense:
        if images:
            resized = v2.Compose([
                v2.ToImage(), v2.Resize(other, antialias=True), v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(pre["mean"], pre["std"]),
            ])
            x2 = torch.stack([resized(i) for i in images])
        else:
            x2 = torch.randn(count, 3, *other, generator=generator)
        batches.append((f"batch {len(x2)} at {other[0]}x{other[1]}", x2))
    return x[:EXAMPLE_BATCH], batches, source


def compare_raw(predictor, run, images: list, tolerance: float, path: Path) -> float:
    """The raw-image model (`preprocess=inside`) on each image's uint8 pixels against PyTorch on
    the eval transform's tensor: the largest difference in the probabilities, refused above
    `tolerance` (the resize inside is torch's antialiased bilinear, not PIL's: ~1/255 apart)."""
    import numpy as np
    import torch

    transform, worst = predictor.transform(), 0.0
    for image in images:
        with torch.inference_mode():
            expected = predictor.module.predict_step(transform(image)[None], 0).float().numpy()
        got = np.asarray(run(np.asarray(image, dtype=np.uint8)[None]))
        if got.shape != expected.shape:
            raise ExportCheckError(f"{shown(path)} gives shape {got.shape} for a "
                                   f"{image.height}x{image.width} image; PyTorch gives {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    if not worst <= tolerance:
        raise ExportCheckError(f"{shown(path)} does not match PyTorch on raw images: max abs "
                               f"difference {worst:.2e} > raw_tolerance={tolerance:g}")
    return worst


def test_vector_image():
    """A generated RGB image of odd, portrait size (97 x 61: a crop offset rounds and the
    longer side is truncated), smooth gradients with edges, the same on every machine."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:97, 0:61]
    pixels = np.stack([(xx * 4) % 256, (yy * 3) % 256, ((xx + yy) * 7 % 256) * ((xx // 8 + yy // 8) % 2)], -1)
    return Image.fromarray(pixels.astype(np.uint8))


def compare(predictor, run, batches, tolerance: float, path: Path) -> list[tuple[str, float]]:
    import numpy as np
    import torch

    diffs = []
    for label, x in batches:
        with torch.inference_mode():
            expected = predictor.module.predict_step(x, 0).float().cpu().numpy()
        try:
            got = np.asarray(run(x))
        except Exception as err:
            raise ExportCheckError(
                f"{shown(path)} fails on a {label} input: {type(err).__name__}: "
                f"{(str(err).strip().splitlines() or [''])[0]}"
            ) from err
        if got.shape != expected.shape:
            raise ExportCheckError(f"{shown(path)} gives shape {got.shape} for a {label} input; "
                                   f"PyTorch gives {expected.shape}")
        diffs.append((label, float(np.abs(got - expected).max())))
    worst = max(d for _, d in diffs)
    if not worst <= tolerance:  # NaN fails too
        detail = ", ".join(f"{label}: {d:.2e}" for label, d in diffs)
        raise ExportCheckError(
            f"{shown(path)} does not match PyTorch: max abs difference in the probabilities "
            f"{worst:.2e} > tolerance={tolerance:g} ({detail}). Do not deploy it; a looser "
            "tolerance= accepts it"
        )
    return diffs



"""`transferlab-predict run=<run dir> input=<file | folder | glob>`: a finished run's model on new
images, written to `<run dir>/predict/<timestamp>/` (or `out=`). Like `transferlab-train`, only
Hydra is imported at start; torch loads when predicting begins."""

import csv
import glob
import logging
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from transferlab.errors import ConfigError
from transferlab.train import USER_ERRORS, config_dir, finished_run, shown

log = logging.getLogger("transferlab")


def device_of(trainer: DictConfig) -> str | None:
    import torch

    if str(trainer.get("devices", 1)) != "1":
        raise ConfigError(
            "transferlab-predict runs on one device (trainer.devices=1): predictions are written "
            "in input order by one process; run one command per device to split a large set"
        )
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={accelerator} but torch sees no CUDA GPU; "
                              "use trainer.accelerator=cpu or auto")
        return "cuda"
    return None if accelerator == "auto" else accelerator


def input_root(pattern: str) -> Path:
    """The folder that output paths are relative to: the input folder, a file's folder, or the
    part of a glob before its first wildcard."""
    path = Path(pattern)
    if path.is_dir():
        return path
    if path.is_file() or not glob.has_magic(pattern):
        return path.parent
    leading = next(i for i, part in enumerate(path.parts) if glob.has_magic(part))
    return Path(*path.parts[:leading]) if leading else Path(".")


def predict(cfg: DictConfig, out: Path) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from transferlab.console import quiet_libraries
    from transferlab.data.images import load_rgb, write_bad_files
    from transferlab.errors import BadFilesError
    from transferlab.inference import TTA, load
    from transferlab.modules.segmentation import overlay

    if cfg.tta not in TTA:
        raise ConfigError(f"tta={cfg.tta!r}; choose one of {TTA}")
    quiet_libraries()
    predictor = load(cfg.run, cfg.checkpoint, device_of(cfg.trainer))
    try:
        sources, bad = predictor.usable(cfg.input, cfg.on_bad_file)
    except BadFilesError as err:
        write_bad_files(out / "bad_files.txt", err.bad)
        raise
    if bad:
        write_bad_files(out / "bad_files.txt", bad)
    if not sources:
        raise ConfigError(f"input={cfg.input}: no image to predict")
    out.mkdir(parents=True, exist_ok=True)
    root, names = input_root(str(cfg.input)), predictor.class_names
    segmentation = predictor.task == "segmentation"
    header = ["path", "foreground_fraction", "mask"] if segmentation else [
        "path", "pred", *(f"prob_{c}" for c in names)]
    log.info("predicting %d image(s) with %s on %s", len(sources), shown(predictor.checkpoint),
             predictor.device)
    with (out / "predictions.csv").open("w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(header)
        for x, index, sizes in predictor.batches(sources, cfg.batch_size, cfg.num_workers):
            probs = predictor.probabilities(x, cfg.tta).float().cpu()
            for i, p, size in zip(index.tolist(), probs, sizes.tolist()):
                source = sources[i]
                result = predictor.result(str(source), p, size)
                if not segmentation:
                    rows.writerow([source, result.label, *(f"{v:.6f}" for v in result.probabilities.values())])
                    continue
                relative = source.relative_to(root).with_suffix(".png")
                # Two classes: a viewable 0/255 mask; more: the class index per pixel.
                pixels = result.mask * 255 if len(names) == 2 else result.mask
                mask_file = out / "masks" / relative
                mask_file.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels.astype(np.uint8)).save(mask_file)
                if cfg.overlays:
                    image = torch.from_numpy(np.array(load_rgb(source))).permute(2, 0, 1)
                    (drawn,) = overlay(image[None].float(), torch.from_numpy(result.mask)[None].long(),
                                       len(names))
                    overlay_file = out / "overlays" / relative
                    overlay_file.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(overlay_file)
                rows.writerow([source, f"{result.foreground_fraction:.6f}", mask_file.relative_to(out)])
    return {"images": len(sources), "unusable": len(bad), "task": predictor.task}


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        run_dir = finished_run(cfg)
        if OmegaConf.is_missing(cfg, "input"):
            raise ConfigError("input=<image, folder or glob> is missing: the images to predict")
        out = Path(cfg.out or run_dir / "predict" / time.strftime("%Y-%m-%d_%H-%M-%S"))
        done = predict(cfg, out)
    except USER_ERRORS as err:
        log.error("%s: %s", type(err).__name__, err)
        sys.exit(1)
    lines = [("out", shown(out)), ("images", str(done["images"])),
             ("predictions", shown(out / "predictions.csv"))]
    if done["task"] == "segmentation":
        lines.append(("masks", shown(out / "masks")))
    if done["unusable"]:
        lines.append(("unusable", f"{done['unusable']} file(s), listed in {shown(out / 'bad_files.txt')}"))
    log.info("predictions written:\n%s", "\n".join(f"  {k:<11}  {v}" for k, v in lines))


if __name__ == "__main__":
    main()

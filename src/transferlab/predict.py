"""A finished run's model on new images, written as files: `predictions.csv` in input order,
and the task's per-image files (segmentation: masks/ and overlays/). `transferlab-predict`
(`transferlab.cli.predict`) is this from the command line."""

import csv
import glob
import logging
from pathlib import Path

from transferlab.console import quiet_libraries, shown
from transferlab.data.images import listed
from transferlab.errors import ConfigError
from transferlab.inference import TTA, load

log = logging.getLogger("transferlab")


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


def predict_files(run: str | Path, inputs: str, out: Path, checkpoint: str = "best",
                  device: str | None = None, batch_size: int = 8, num_workers: int = 2,
                  tta: str | None = None, on_bad_file: str = "warn", overlays: bool = True,
                  cam=None) -> dict:
    """Predict every usable image of `inputs` (a file, a folder or a glob) into `out`; files
    that are no images or do not decode are listed in `out`/bad_files.txt. With `cam` (a
    `transferlab.explain.CamSettings` with a method), each image's class activation map is drawn
    over it in `out`/cam/ and its peak is the cam_peak column. Returns what the closing block
    shows: the image count, the unusable count and the task's output folders."""
    if tta not in TTA:
        raise ConfigError(f"tta={tta!r}; choose one of {TTA}")
    quiet_libraries()
    predictor = load(run, checkpoint, device)
    sources, bad = listed(out / "bad_files.txt", lambda: predictor.usable(inputs, on_bad_file))
    if not sources:
        raise ConfigError(f"input={inputs}: no image to predict")
    maps = cam_maps(predictor, sources, cam, batch_size, num_workers)
    out.mkdir(parents=True, exist_ok=True)
    root, names, task = input_root(str(inputs)), predictor.class_names, predictor.task
    log.info("predicting %d image(s) with %s on %s", len(sources), shown(predictor.checkpoint),
             predictor.device)
    with (out / "predictions.csv").open("w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["path", *task.prediction_header(names), *(["cam_peak"] if maps else [])])
        for i, probs, size in predictor.predicted(sources, batch_size, num_workers, tta):
            source = sources[i]
            prediction = predictor.result(str(source), probs, size)
            cells = task.write_prediction(prediction, source, source.relative_to(root), out,
                                          names, overlays)
            if maps:
                cells.append(write_cam(next(maps), source, out / "cam" / source.relative_to(root)))
            rows.writerow([source, *cells])
    files = task.prediction_files(out) + ([("cam", out / "cam")] if maps else [])
    return {"images": len(sources), "unusable": len(bad), "files": files}


def cam_maps(predictor, sources: list[Path], cam, batch_size: int, num_workers: int):
    """Each source's map in order (the predicted class's), or None without a cam method."""
    if cam is None or cam.method is None:
        return None
    from transferlab.explain import check_stage

    check_stage(predictor.module.backbone, cam.stage)  # before predictions.csv is begun
    found = predictor.explained(sources, cam.method, cam.stage, None, batch_size, num_workers)
    return (m for _, m in found)


def write_cam(cam, source: Path, relative_out: Path) -> str:
    """`cam` over the image as <out>/cam/<relative path>.png; the map's peak as "x,y" pixels."""
    from transferlab.data.images import load_rgb
    from transferlab.explain import peak, write_overlay

    write_overlay(relative_out.with_suffix(".png"), load_rgb(source), cam)
    x, y = peak(cam)
    return f"{x},{y}"

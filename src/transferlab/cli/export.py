"""`transferlab-export run=<run dir> format=onnx|torchscript`: a finished run's model as one file for
deployment, checked against PyTorch (`transferlab.export`). Only Hydra is imported at start."""

import logging

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from transferlab.cli.common import closing, config_dir, finished_run, shown, user_errors
from transferlab.export import ExportError, export  # imports nothing heavy until it runs

log = logging.getLogger("transferlab")


def outcome(done: dict) -> list[tuple[str, str]]:
    return [
        ("model", shown(done["model"]) + (f" (ONNX opset {done['opset']})" if done["opset"] else "")),
        ("preprocess", shown(done["preprocess"])),
        ("checkpoint", shown(done["checkpoint"])),
        ("checked on", done["checked_on"]),
        *((f"  {label}", f"max abs diff {d:.2e}") for label, d in done["diffs"]),
        ("max diff", f"{done['max_abs_diff']:.2e} <= tolerance {done['tolerance']:g}: matches PyTorch"),
        *([("raw model", f"{shown(done['raw_model'])}: uint8 NHWC images, max diff "
                         f"{done['raw_max_abs_diff']:.2e} <= {done['raw_tolerance']:g}")]
          if "raw_model" in done else []),
    ]


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
def main(cfg: DictConfig) -> None:
    check_images = cfg.check_images
    if isinstance(check_images, ListConfig):
        check_images = OmegaConf.to_container(check_images)
    with user_errors(also=(ExportError,)):
        finished_run(cfg)
        done = export(cfg.run, cfg.format, cfg.checkpoint, cfg.out, cfg.opset, cfg.tolerance,
                      check_images, cfg.check_count, cfg.preprocess, cfg.raw_tolerance)
    log.info("%s", closing("exported", outcome(done)))


if __name__ == "__main__":
    main()

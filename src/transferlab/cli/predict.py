"""`transferlab-predict run=<run dir> input=<file | folder | glob>`: a finished run's model on new
images (`transferlab.predict`), written to `<run dir>/predict/<timestamp>/` (or `out=`). Only
Hydra is imported at start; torch loads when predicting begins."""

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from transferlab.cli.common import closing, config_dir, finished_run, shown, user_errors
from transferlab.errors import ConfigError

log = logging.getLogger("transferlab")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run_dir = finished_run(cfg)
        if OmegaConf.is_missing(cfg, "input"):
            raise ConfigError("input=<image, folder or glob> is missing: the images to predict")
        from hydra.utils import instantiate

        from transferlab.devices import resolve
        from transferlab.predict import predict_files

        out = Path(cfg.out or run_dir / "predict" / time.strftime("%Y-%m-%d_%H-%M-%S"))
        done = predict_files(cfg.run, cfg.input, out, cfg.checkpoint, resolve(cfg.device),
                             cfg.batch_size, cfg.num_workers, cfg.tta, cfg.on_bad_file, cfg.overlays,
                             instantiate(cfg.cam))
    lines = [("out", shown(out)), ("images", str(done["images"])),
             ("predictions", shown(out / "predictions.csv"))]
    lines += [(name, shown(folder)) for name, folder in done["files"]]
    if done["unusable"]:
        lines.append(("unusable", f"{done['unusable']} file(s), listed in {shown(out / 'bad_files.txt')}"))
    log.info("%s", closing("predictions written", lines))


if __name__ == "__main__":
    main()

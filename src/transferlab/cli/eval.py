"""`transferlab-eval run=<run dir> split=val|test|<folder> checkpoint=best|last|<file.ckpt>`: score
a finished run's checkpoint on labelled images (`transferlab.evaluate`). Only Hydra is imported at
start; torch loads once the evaluation starts."""

import logging
import time

import hydra
from omegaconf import DictConfig

from transferlab.cli.common import closing, config_dir, finished_run, shown, user_errors

log = logging.getLogger("transferlab")


def outcome(result, seconds: float) -> list[tuple[str, str]]:
    """The closing block's lines: where the files went and the headline numbers."""
    from transferlab import tasks

    task = tasks.get(result.task)
    images = f"{result.n_images} {task.unit}"
    if result.skipped:
        images += f", {result.skipped} skipped: files that do not decode (bad_files.txt)"
    lines = [("eval dir", shown(result.out)), ("split", f"{shown(result.split_dir)}, {images}"),
             ("checkpoint", shown(result.checkpoint))]
    return lines + task.evaluation_lines(result.metrics) + [("time", f"{seconds:.0f} s")]


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    start = time.perf_counter()
    with user_errors():
        finished_run(cfg)
        from hydra.utils import instantiate

        from transferlab.devices import resolve
        from transferlab.evaluate import evaluate

        result = evaluate(cfg.run, str(cfg.split), str(cfg.checkpoint), cfg.out, resolve(cfg.device),
                          cfg.batch_size, cfg.num_workers, cfg.on_bad_file, instantiate(cfg.cam))
    log.info("%s", closing("evaluation finished", outcome(result, time.perf_counter() - start)))


if __name__ == "__main__":
    main()

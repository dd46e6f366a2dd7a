"""transferlab's Hydra configs: where they are, the resolvers they use, and composing them from
Python (`compose`), as `transferlab-train` would, without the command line. Imports Hydra and
OmegaConf only."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict


def config_dir() -> str:
    """The configs ship inside the wheel; an editable install reads the repo's `conf/`."""
    packaged = Path(__file__).parent / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf")


def _only_for_root(root: str, own_root: str, value):
    """`value` when `root` is `own_root` (a dataset config's own folder), else None: settings that
    describe one dataset (the lung set's class names) do not follow a `data.root` elsewhere."""
    same = Path(str(root)).expanduser().absolute() == Path(str(own_root)).expanduser().absolute()
    return value if same else None


# resume=<dir> makes that dir the run dir, and keeps the .hydra/ record of the run it continues.
OmegaConf.register_new_resolver("resume_dir", lambda resume, fresh: resume or fresh, replace=True)
OmegaConf.register_new_resolver(
    "unless_resuming", lambda resume, value: None if resume else value, replace=True
)
OmegaConf.register_new_resolver("only_for_root", _only_for_root, replace=True)
# The Optuna sweeper (hparams_search=...) opens its SQLite study before any job makes the sweep
# dir, and optimises in the direction of the monitor.
OmegaConf.register_new_resolver(
    "mkdir", lambda path: (Path(path).mkdir(parents=True, exist_ok=True), str(path))[1], replace=True)
OmegaConf.register_new_resolver(
    "optuna_direction", lambda mode: "maximize" if mode == "max" else "minimize", replace=True)


def compose(overrides: list[str] | tuple[str, ...] = (), run_dir: str | Path = "outputs/run",
            config_name: str = "train") -> DictConfig:
    """The config `transferlab-train <overrides>` would run with, its run dir set to `run_dir`
    (what `${hydra:runtime.output_dir}` resolves to), ready for `transferlab.fit.fit`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg

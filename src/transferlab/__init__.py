"""transferlab: transfer learning on small image datasets with Lightning and Hydra."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `transferlab.load` without importing torch for everything else that imports the package
    # (the CLIs answer --help before torch loads).
    if name == "load":
        from transferlab.inference import load

        return load
    raise AttributeError(f"module 'transferlab' has no attribute {name!r}")

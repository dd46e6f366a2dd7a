"""transferlab: transfer learning on small image datasets with Lightning and Hydra."""

__version__ = "0.1.0"

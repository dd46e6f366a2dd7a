"""A task that is not transferlab's: each image's class, with predictions written as the top class
and its margin over the runner-up. It is this module and `conf/task/toy.yaml` beside it, nothing
else, which is what adding a task takes (tests/tasks/test_registry.py)."""

from transferlab import tasks
from transferlab.data.classification import ImageFolderDataModule
from transferlab.modules.classification import ClassificationModule
from transferlab.tasks.classification import Classification

NAME = __name__  # found by its module path: a checkpoint that names it loads anywhere it imports


class ToyData(ImageFolderDataModule):
    task = NAME


class ToyModule(ClassificationModule):
    task = NAME


class Toy(Classification):
    name = NAME
    module = ToyModule

    def prediction_header(self, class_names):
        return ["top", "margin"]

    def write_prediction(self, prediction, source, relative, out, class_names, overlays):
        first, second = sorted(prediction.probabilities.values(), reverse=True)[:2]
        return [prediction.label, f"{first - second:.6f}"]

    def evaluation_lines(self, metrics):
        return [("toy", f"accuracy {metrics['accuracy']:.4f}")]


tasks.register(Toy())

"""Images per second when predicting with a finished classification run, three ways in one process:
a plain PyTorch loop over the same checkpoint, transferlab's predict path, and onnxruntime.

    python scripts/bench_predict.py --run outputs/runs/<date>/<time> --images data/hymenoptera/val

Every way decodes the same files with the same number of DataLoader workers and batch size;
the plain loop is what a user would write by hand (torchvision model, transforms, DataLoader).
onnxruntime runs `<run>/export/model.onnx` (transferlab-export) on the same tensors when present.
"""

import argparse
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import transferlab
from transferlab.data.images import is_image_name


class PlainImages(Dataset):
    def __init__(self, files: list[Path], transform):
        self.files = files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB"))


def plain_loop(predictor, files, batch_size, workers) -> int:
    """The hand-written baseline: the checkpoint's network weights in a torchvision model."""
    pre = predictor.preprocess
    hparams = predictor.module.hparams
    net = torchvision.models.get_model(hparams.backbone["name"], num_classes=hparams.num_classes)
    net.load_state_dict(predictor.module.net.state_dict())
    net.eval()
    transform = transforms.Compose([
        transforms.Resize(round(pre["image_size"] * 256 / 224)),
        transforms.CenterCrop(pre["image_size"]),
        transforms.ToTensor(),
        transforms.Normalize(pre["mean"], pre["std"]),
    ])
    loader = DataLoader(PlainImages(files, transform), batch_size=batch_size, num_workers=workers)
    seen = 0
    with torch.inference_mode():
        for x in loader:
            net(x).softmax(1)
            seen += len(x)
    return seen


def transferlab_path(predictor, files, batch_size, workers) -> int:
    """What transferlab-predict runs: the bad-file scan, then batches, probabilities, results."""
    files, _ = predictor.usable(files, "warn")
    seen = 0
    for x, index, sizes in predictor.batches(files, batch_size, workers):
        probs = predictor.probabilities(x).float().cpu()
        for i, p, size in zip(index.tolist(), probs, sizes.tolist()):
            predictor.result(str(files[i]), p, size)
        seen += len(index)
    return seen


def onnx_path(predictor, files, batch_size, workers, model: Path) -> int:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    seen = 0
    for x, index, _ in predictor.batches(files, batch_size, workers):
        session.run(None, {name: x.numpy()})
        seen += len(index)
    return seen


def timed(fn, *args) -> tuple[float, int]:
    start = time.perf_counter()
    n = fn(*args)
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a classification run dir")
    parser.add_argument("--images", type=Path, required=True, help="folder of images (recursive)")
    parser.add_argument("--count", type=int, default=1000, help="images per way (files repeat)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader decoding processes")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per way; best kept")
    args = parser.parse_args()

    predictor = transferlab.load(args.run, device="cpu")
    if predictor.task != "classification":
        parser.error("--run must be a classification run")
    found = sorted(p for p in args.images.rglob("*") if p.is_file() and is_image_name(p))
    files = [found[i % len(found)] for i in range(args.count)]
    ways = {"plain PyTorch loop": plain_loop, "transferlab predict": transferlab_path}
    model = args.run / "export" / "model.onnx"
    if model.is_file():
        ways["onnxruntime"] = lambda *a: onnx_path(*a, model)
    else:
        print(f"(no {model}: run transferlab-export run={args.run} to time onnxruntime too)")
    print(f"{args.count} images from {args.images}, batch {args.batch_size}, {args.workers} "
          f"workers, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| way | images/s | vs plain loop |\n|---|---:|---:|")
    baseline = None
    for name, fn in ways.items():
        seconds = min(timed(fn, predictor, files, args.batch_size, args.workers)[0]
                      for _ in range(args.repeats))
        rate = args.count / seconds
        baseline = baseline or rate
        print(f"| {name} | {rate:.1f} | {rate / baseline:.2f}x |", flush=True)


if __name__ == "__main__":
    main()

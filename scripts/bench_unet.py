"""Train-step time of the VGG16-bn U-Net: transferlab (Lightning) vs a plain PyTorch loop.

Both sides train the same network from the same weights on the same batches (random images and
masks at --size px, batch --batch), in this process, one after the other:

    python scripts/bench_unet.py                 # 256 px, batch 4, 5 timed steps after 1 warm-up
    python scripts/bench_unet.py --smp           # also segmentation_models_pytorch's Unet("vgg16_bn")
"""

import argparse
import platform
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferlab.modules.segmentation import BCEDiceLoss, SegmentationModule


def batches(n: int, size: int, batch: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n * batch, 3, size, size, generator=g)
    masks = (torch.rand(n * batch, size, size, generator=g) > 0.6).long()
    return TensorDataset(images, masks)


def module() -> SegmentationModule:
    return SegmentationModule(
        backbone={"_target_": "transferlab.models.backbones.UNetBackbone", "name": "vgg16_bn"},
        num_classes=2,
        freeze={"_target_": "transferlab.freeze.FullFineTune"},
        optimizer={"_target_": "torch.optim.SGD", "lr": 1e-3, "momentum": 0.9},
    )


def plain_steps(net: torch.nn.Module, data: TensorDataset, batch: int, loss_fn) -> list[float]:
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    net.train()
    times = []
    for x, y in DataLoader(data, batch_size=batch):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(net(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


class StepTimer(L.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self.start)


def lightning_steps(model: SegmentationModule, data: TensorDataset, batch: int) -> list[float]:
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )
    trainer.fit(model, DataLoader(data, batch_size=batch))
    return timer.times


def mean_after_warmup(times: list[float]) -> float:
    return sum(times[1:]) / len(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--smp", action="store_true", help="also time smp.Unet('vgg16_bn')")
    args = parser.parse_args()
    data = batches(args.steps + 1, args.size, args.batch)

    ours = module()
    plain_net = module().net
    plain_net.load_state_dict(ours.net.state_dict())
    plain = mean_after_warmup(plain_steps(plain_net, data, args.batch, BCEDiceLoss()))
    lightning = mean_after_warmup(lightning_steps(ours, data, args.batch))
    params = sum(p.numel() for p in ours.net.parameters())

    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; {args.size} px, batch {args.batch}, {args.steps} steps")
    print("| network | parameters | s/step | vs plain loop |")
    print("|---|---|---|---|")
    print(f"| transferlab U-Net, plain PyTorch loop | {params / 1e6:.2f} M | {plain:.3f} | 1.00 |")
    print(f"| transferlab U-Net, Lightning module | {params / 1e6:.2f} M | {lightning:.3f} | "
          f"{lightning / plain:.3f} |")
    if args.smp:
        import segmentation_models_pytorch as smp

        net = smp.Unet("vgg16_bn", encoder_weights=None, classes=1)
        t = mean_after_warmup(plain_steps(net, data, args.batch, BCEDiceLoss()))
        n = sum(p.numel() for p in net.parameters())
        print(f"| smp Unet('vgg16_bn'), plain loop | {n / 1e6:.2f} M | {t:.3f} | {t / plain:.3f} |")


if __name__ == "__main__":
    main()

"""The strategy sweep, timed whole: four plain PyTorch loops written the tutorial's way (one per
freeze strategy, each freezing what transferlab's default for that strategy freezes) against one
`transferlab-train -m freeze=feature_extraction,partial,full,gradual` sweep with the defaults:
same data, seed, initialisation, optimizer, schedule and epochs.

    python scripts/bench_sweep.py --quick            # minutes: 3 epochs at 112 px
    python scripts/bench_sweep.py --epochs 10        # the issue's setting: 224 px

Per strategy it prints the wall time of each side after imports (the plain loop's inside its
process, the sweep job's from its train.log), the ratio, and best / last val accuracy side by
side; then the whole sweep's ratio, after imports and as whole processes. One seed: the accuracy
columns say whether the two sides learn alike, not which strategy wins.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
from torch import nn, optim
from torchvision import models

# The script's own folder: bench.py's tutorial data pipeline and machine line.
from bench import machine, tutorial_loaders
from transferlab.models.init import he_init

STRATEGIES = ("feature_extraction", "partial", "full", "gradual")
# transferlab's defaults, mirrored by the plain loops (conf/freeze/*.yaml, optimizer/sgd,
# scheduler/step): partial freezes the first 3 stages; gradual trains the head alone for 3
# epochs, then thaws one stage top-down every 2, the newest at 0.1 x LR and each deeper 0.5 x that.
PARTIAL_FROZEN = 3
HEAD_EPOCHS, UNFREEZE_EVERY, BACKBONE_LR_MULT, STAGE_LR_DECAY = 3, 2, 0.1, 0.5
LR, MOMENTUM, STEP_SIZE, GAMMA = 0.001, 0.9, 7, 0.1


# ---- the plain loops ----------------------------------------------------------------------------

def plain_stages(model: nn.Module) -> list[list[nn.Module]]:
    return [[model.conv1, model.bn1], [model.layer1], [model.layer2], [model.layer3],
            [model.layer4], [model.fc]]


def frozen_count(strategy: str, epoch: int, body: int) -> int:
    """How many stages from the input are frozen at `epoch` (the head is never frozen)."""
    if strategy == "feature_extraction":
        return body
    if strategy == "partial":
        return PARTIAL_FROZEN
    if strategy == "full":
        return 0
    if epoch < HEAD_EPOCHS:
        return body
    return max(body - 1 - (epoch - HEAD_EPOCHS) // UNFREEZE_EVERY, 0)


def plain_run(args) -> dict:
    torch.manual_seed(args.seed)
    loaders, sizes = tutorial_loaders(args.data, args.image_size)
    model = models.resnet18(weights=None)
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.fc = nn.Linear(model.fc.in_features, 2)
    if not args.weights:
        he_init(model)
    stages = plain_stages(model)
    body = len(stages) - 1
    if args.strategy == "gradual":
        mults = [BACKBONE_LR_MULT * STAGE_LR_DECAY ** (body - 1 - i) for i in range(body)] + [1.0]
    else:
        mults = [1.0] * len(stages)
    groups = [{"params": [p for m in s for p in m.parameters()], "lr": LR * k} for s, k in zip(stages, mults)]
    optimizer = optim.SGD(groups, lr=LR, momentum=MOMENTUM)
    scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=STEP_SIZE, gamma=GAMMA)
    criterion = nn.CrossEntropyLoss()
    accuracies = []
    for epoch in range(args.epochs):
        frozen = frozen_count(args.strategy, epoch, body)
        for i, stage in enumerate(stages):
            for p in (p for m in stage for p in m.parameters()):
                p.requires_grad_(i >= frozen)
        model.train()
        for inputs, labels in loaders["train"]:
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for inputs, labels in loaders["val"]:
                correct += int((model(inputs).argmax(1) == labels).sum())
        accuracies.append(correct / sizes["val"])
    return {"best": max(accuracies), "last": accuracies[-1]}


# ---- the sweep ----------------------------------------------------------------------------------

def log_span(log: Path) -> float:
    """Seconds from a job's first to its last log line (Hydra stamps each with the time)."""
    stamps = [line[1:24] for line in log.read_text().splitlines() if line.startswith("[20")]
    first, last = (datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in (stamps[0], stamps[-1]))
    return (last - first).total_seconds()


def sweep(args) -> tuple[dict, float]:
    sweep_dir = args.out / "sweep"
    init = ["init=pretrained", f"init.weights_path={args.weights}"] if args.weights else ["init=he"]
    # The command of the environment this script runs in, as a user of that venv types it.
    beside = Path(sys.executable).with_name("transferlab-train")
    cmd = [
        str(beside) if beside.is_file() else "transferlab-train", "-m", f"freeze={','.join(STRATEGIES)}", f"data.root={args.data}",
        *init, f"seed={args.seed}", f"trainer.max_epochs={args.epochs}",
        f"data.image_size={args.image_size}", f"hydra.sweep.dir={sweep_dir}",
        f"callbacks.feature_cache.dir={args.out / 'cache'}", "callbacks.progress_bar.refresh_rate=0",
    ]
    print("running the transferlab sweep ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with open(args.out / "sweep.log", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False, cwd=args.out)
    process_s = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"the sweep failed; see {args.out / 'sweep.log'}")
    jobs = {}
    for job in sweep_dir.iterdir():
        if not (job / "summary.json").is_file():
            continue
        summary = json.loads((job / "summary.json").read_text())
        history = [h.get("val/acc") for h in summary["history"]]
        jobs[summary["choices"]["freeze"]] = {
            "wall_s": log_span(job / "train.log"), "best": summary["best"], "last": history[-1],
        }
    return jobs, process_s


# ---- the parent ---------------------------------------------------------------------------------

def spawn_plain(args, strategy: str) -> dict:
    result = args.out / f"plain_{strategy}.json"
    cmd = [sys.executable, __file__, "--strategy", strategy, "--result", str(result),
           "--data", str(args.data), "--epochs", str(args.epochs), "--image-size", str(args.image_size),
           "--seed", str(args.seed), "--out", str(args.out),
           *(["--weights", str(args.weights)] if args.weights else [])]
    print(f"running the plain {strategy} loop ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with open(args.out / f"plain_{strategy}.log", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        sys.exit(f"plain {strategy} failed; see {args.out / f'plain_{strategy}.log'}")
    return json.loads(result.read_text()) | {"process_s": time.perf_counter() - start}


def run_child(args) -> None:
    start = time.perf_counter()
    result = plain_run(args)
    args.result.write_text(json.dumps(result | {"wall_s": time.perf_counter() - start}))


def report(args, plain: dict, lab: dict, lab_process_s: float) -> None:
    print(f"machine: {machine()}")
    print(f"data: {args.data}; {args.epochs} epochs at {args.image_size} px, batch 4; seed {args.seed}; "
          f"init {args.weights or 'he'} on both sides; cold feature cache\n")
    columns = ["strategy", "plain s", "transferlab s", "ratio", "best val acc plain / lab",
               "last val acc plain / lab"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for strategy in STRATEGIES:
        p, t = plain[strategy], lab[strategy]
        print(f"| {strategy} | {p['wall_s']:.1f} | {t['wall_s']:.1f} | {p['wall_s'] / t['wall_s']:.2f}x "
              f"| {p['best']:.3f} / {t['best']:.3f} | {p['last']:.3f} / {t['last']:.3f} |")
    plain_s = sum(p["wall_s"] for p in plain.values())
    lab_s = sum(t["wall_s"] for t in lab.values())
    plain_process_s = sum(p["process_s"] for p in plain.values())
    print(f"| whole sweep, after imports | {plain_s:.1f} | {lab_s:.1f} | {plain_s / lab_s:.2f}x | | |")
    print(f"| whole sweep, whole processes | {plain_process_s:.1f} | {lab_process_s:.1f} | "
          f"{plain_process_s / lab_process_s:.2f}x | | |")
    print("\nplain s: the loop's process after its imports (data setup, training, validation); "
          "transferlab s: the sweep job's first to last log line (setup, cache build, training, "
          "checkpoints). Whole processes: each plain loop's process and the one sweep process, "
          "imports and start-up included.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = Path(os.environ.get("TRANSFERLAB_DATA_DIR", "data")) / "hymenoptera"
    parser.add_argument("--data", type=Path, default=default_data, help=f"ImageFolder root ({default_data})")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every strategy (default 10)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, help="resnet18 state_dict for both sides (default: init=he)")
    parser.add_argument("--quick", action="store_true", help="3 epochs at 112 px")
    parser.add_argument("--out", type=Path, help="runs and logs (default: a new temporary folder)")
    parser.add_argument("--strategy", choices=STRATEGIES, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data = args.data.expanduser().resolve()
    args.weights = args.weights.expanduser().resolve() if args.weights else None
    if args.strategy:
        run_child(args)
        return
    if args.quick:
        args.epochs, args.image_size = 3, 112
    if not (args.data / "train").is_dir():
        sys.exit(f"no ImageFolder data at {args.data} (set --data or TRANSFERLAB_DATA_DIR)")
    args.out = (args.out or Path(tempfile.mkdtemp(prefix="transferlab-bench-sweep-"))).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    plain = {s: spawn_plain(args, s) for s in STRATEGIES}
    lab, lab_process_s = sweep(args)
    report(args, plain, lab, lab_process_s)
    print(f"\nruns and logs: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

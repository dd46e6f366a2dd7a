"""The strategy sweep, timed whole: four plain PyTorch loops written the tutorial's way (one per
freeze strategy, each freezing what transferlab's default for that strategy freezes) against
`transferlab-train -m freeze=feature_extraction,partial,full,gradual` sweeps: one with the
defaults, one with `trainer=fast` at the same batch size. Same data, seeds, initialisation,
optimizer, schedule and epochs.

    python scripts/bench_sweep.py --quick                   # minutes: 3 epochs at 112 px
    python scripts/bench_sweep.py --epochs 10               # the issue's setting: 224 px
    python scripts/bench_sweep.py --quick --seeds 0,1,2     # accuracy against the seed spread

Per strategy and sweep it prints the wall time of each side after imports (the plain loop's
inside its process, the sweep job's from its train.log), the ratio, and best val accuracy side
by side; then each whole sweep's ratio, after imports and as whole processes. With several
seeds, times are summed over seeds, accuracies are mean +- std, and the difference of the means
gets a 95 % Welch interval: "within the seed spread" when it contains 0.
"""

import argparse
import json
import os
import shutil
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
from bench import machine, run_in_child, tutorial_loaders
from transferlab.models.init import he_init

STRATEGIES = ("feature_extraction", "partial", "full", "gradual")
# transferlab's defaults, mirrored by the plain loops (conf/freeze/*.yaml, optimizer/sgd,
# scheduler/step): partial freezes all stages below the head but the last (layer4 and the head
# train); gradual trains the head alone for 3 epochs, then thaws one stage top-down every 2, the
# newest at 0.1 x LR and each deeper 0.5 x that.
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
        return body - 1
    if strategy == "full":
        return 0
    if epoch < HEAD_EPOCHS:
        return body
    return max(body - 1 - (epoch - HEAD_EPOCHS) // UNFREEZE_EVERY, 0)


def plain_run(args, seed: int) -> dict:
    torch.manual_seed(seed)
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
        model.train()
        # Frozen as transferlab freezes (and a careful plain loop): no gradients, and BatchNorm
        # on its running statistics (the tutorial's frozen layers keep training theirs).
        for i, stage in enumerate(stages):
            for m in stage:
                m.train(i >= frozen)
                m.requires_grad_(i >= frozen)
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


# ---- the sweeps ---------------------------------------------------------------------------------

# What each transferlab sweep adds to the defaults. trainer=fast keeps the plain loops' batch of
# 4, so both sides take the same optimizer steps: what differs is numerics and memory layout.
PRESETS = {"default": [], "fast": ["trainer=fast", "data.batch_size=4"]}


def log_span(log: Path) -> float:
    """Seconds from a job's first to its last log line (Hydra stamps each with the time)."""
    stamps = [line[1:24] for line in log.read_text().splitlines() if line.startswith("[20")]
    first, last = (datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in (stamps[0], stamps[-1]))
    return (last - first).total_seconds()


def sweep(args, preset: str) -> tuple[dict, float]:
    """{(strategy, seed): result} of one `-m` sweep, and the sweep's whole process time."""
    sweep_dir = args.out / f"sweep_{preset}"
    init = ["init=pretrained", f"init.weights_path={args.weights}"] if args.weights else ["init=he"]
    # The command of the environment this script runs in, as a user of that venv types it.
    beside = Path(sys.executable).with_name("transferlab-train")
    cmd = [
        str(beside) if beside.is_file() else "transferlab-train", "-m", f"freeze={','.join(STRATEGIES)}",
        f"seed={','.join(map(str, args.seeds))}", f"data.root={args.data}", *init,
        f"trainer.max_epochs={args.epochs}", f"data.image_size={args.image_size}", *PRESETS[preset],
        f"hydra.sweep.dir={sweep_dir}", f"callbacks.feature_cache.dir={args.out / 'cache'}",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    print(f"running the transferlab sweep ({preset}) ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with open(args.out / f"sweep_{preset}.log", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False, cwd=args.out)
    process_s = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"the {preset} sweep failed; see {args.out / f'sweep_{preset}.log'}")
    jobs = {}
    for job in sweep_dir.iterdir():
        if not (job / "summary.json").is_file():
            continue
        summary = json.loads((job / "summary.json").read_text())
        key = summary["choices"]["freeze"], int(summary["hparams"]["seed"])
        jobs[key] = {"wall_s": log_span(job / "train.log"), "best": summary["best"]}
    return jobs, process_s


# ---- the parent ---------------------------------------------------------------------------------

def spawn_plain(args, strategy: str, seed: int) -> dict:
    argv = ["--strategy", strategy, "--data", str(args.data), "--epochs", str(args.epochs),
            "--image-size", str(args.image_size), "--seeds", str(seed), "--out", str(args.out),
            *(["--weights", str(args.weights)] if args.weights else [])]
    print(f"running the plain {strategy} loop, seed {seed} ...", file=sys.stderr, flush=True)
    return run_in_child(__file__, f"plain_{strategy}_seed{seed}", argv, args.out)


def run_child(args) -> None:
    start = time.perf_counter()
    result = plain_run(args, args.seeds[0])
    args.result.write_text(json.dumps(result | {"wall_s": time.perf_counter() - start}))


def accuracy(runs: list[dict]) -> str:
    bests = torch.tensor([r["best"] for r in runs], dtype=torch.float64)
    return f"{bests.mean():.3f}" + (f" ± {bests.std():.3f}" if len(bests) > 1 else "")


def welch_interval(a: list[float], b: list[float]) -> tuple[float, float]:
    """95 % confidence interval of mean(a) - mean(b), unequal variances (Welch). The seeds of
    the two sides are independent draws, so this is the seed spread a difference must exceed."""
    from scipy import stats  # here: the plain loops' processes do not pay for importing it

    diff = sum(a) / len(a) - sum(b) / len(b)
    if len(set(a)) == 1 and len(set(b)) == 1:  # no spread at all: the interval is the difference
        return diff, diff
    low, high = stats.ttest_ind(a, b, equal_var=False).confidence_interval()
    return float(low), float(high)


def report(args, plain: dict, labs: dict) -> None:
    print(f"machine: {machine()}")
    print(f"data: {args.data}; {args.epochs} epochs at {args.image_size} px, batch 4; seeds "
          f"{', '.join(map(str, args.seeds))}; init {args.weights or 'he'} on both sides; cold feature cache\n")
    several = len(args.seeds) > 1
    columns = ["strategy", "sweep", "plain s", "transferlab s", "ratio", "ratio, whole processes",
               "best val acc plain / lab"]
    columns += ["lab - plain, 95 % interval (Welch)", "within the seed spread"] if several else []
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))

    def side(results: dict, strategy: str) -> list[dict]:
        return [results[strategy, seed] for seed in args.seeds]

    for preset, (lab, process_s) in labs.items():
        # What one `transferlab-train` process costs beyond its job: the sweep's start-up and
        # per-job overhead, shared out over the jobs.
        start_up = (process_s - sum(r["wall_s"] for r in lab.values())) / len(lab)
        for strategy in STRATEGIES:
            p, t = side(plain, strategy), side(lab, strategy)
            p_s, t_s = sum(r["wall_s"] for r in p), sum(r["wall_s"] for r in t)
            p_process = sum(r["process_s"] for r in p)
            row = [strategy, preset, f"{p_s:.1f}", f"{t_s:.1f}", f"{p_s / t_s:.2f}x",
                   f"{p_process / (t_s + start_up * len(t)):.2f}x", f"{accuracy(p)} / {accuracy(t)}"]
            if several:
                low, high = welch_interval([r["best"] for r in t], [r["best"] for r in p])
                row += [f"[{low:+.3f}, {high:+.3f}]", "yes" if low <= 0 <= high else "no"]
            print("| " + " | ".join(row) + " |")
    plain_s = sum(r["wall_s"] for r in plain.values())
    plain_process_s = sum(r["process_s"] for r in plain.values())
    for preset, (lab, process_s) in labs.items():
        lab_s = sum(r["wall_s"] for r in lab.values())
        blank = " |" * (len(columns) - 6)
        print(f"| whole sweep | {preset} | {plain_s:.1f} | {lab_s:.1f} | {plain_s / lab_s:.2f}x | "
              f"{plain_process_s:.1f} s / {process_s:.1f} s = {plain_process_s / process_s:.2f}x |{blank}")
    print("\nplain s: the loop's process after its imports (data setup, training, validation); "
          "transferlab s: the sweep job's first to last log line (setup, cache build, training, "
          "checkpoints). Whole processes: each plain loop's process and the one sweep process, "
          "imports and start-up included; per strategy, the sweep's time outside its jobs is shared "
          "out evenly over the jobs. Sweeps: " + "; ".join(
              f"{k}: {' '.join(v) or 'the defaults'}" for k, v in PRESETS.items() if k in labs) + ".")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = Path(os.environ.get("TRANSFERLAB_DATA_DIR", "data")) / "hymenoptera"
    parser.add_argument("--data", type=Path, default=default_data, help=f"ImageFolder root ({default_data})")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every strategy (default 10)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, each run on both sides (default 0)")
    parser.add_argument("--sweeps", default=",".join(PRESETS),
                        help=f"transferlab sweeps to run, of {', '.join(PRESETS)} (default: all)")
    parser.add_argument("--weights", type=Path, help="resnet18 state_dict for both sides (default: init=he)")
    parser.add_argument("--quick", action="store_true", help="3 epochs at 112 px")
    parser.add_argument("--out", type=Path, help="runs and logs (default: a new temporary folder)")
    parser.add_argument("--strategy", choices=STRATEGIES, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.data = args.data.expanduser().resolve()
    args.weights = args.weights.expanduser().resolve() if args.weights else None
    if args.strategy:
        run_child(args)
        return
    presets = args.sweeps.split(",")
    if unknown := set(presets) - set(PRESETS):
        parser.error(f"unknown --sweeps {sorted(unknown)}; choose from {', '.join(PRESETS)}")
    if args.quick:
        args.epochs, args.image_size = 3, 112
    if not (args.data / "train").is_dir():
        sys.exit(f"no ImageFolder data at {args.data} (set --data or TRANSFERLAB_DATA_DIR)")
    args.out = (args.out or Path(tempfile.mkdtemp(prefix="transferlab-bench-sweep-"))).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    plain = {(s, seed): spawn_plain(args, s, seed) for seed in args.seeds for s in STRATEGIES}
    # Each sweep builds its own cache entries, as a first sweep on a machine would.
    labs = {}
    for preset in presets:
        labs[preset] = sweep(args, preset)
        if (args.out / "cache").is_dir():
            shutil.rmtree(args.out / f"cache_{preset}", ignore_errors=True)  # a reused --out
            (args.out / "cache").rename(args.out / f"cache_{preset}")
    report(args, plain, labs)
    print(f"\nruns and logs: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

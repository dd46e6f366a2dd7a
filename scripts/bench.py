"""Side-by-side timing: the PyTorch tutorial's training loop against transferlab, same data,
same machine, same seed and initialisation.

    python scripts/bench.py --quick            # a few minutes: 5 epochs at 112 px
    python scripts/bench.py                    # the real thing: 25 epochs at 224 px
    python scripts/bench.py --only sweep       # a run's fixed cost: a 2-job sweep on CIFAR-10
    python scripts/bench.py --only scan        # the bad-file scan: processes against threads

Each run happens in a fresh process, so peak memory and warm-up are its own. transferlab runs
through `transferlab.cli.train.main`, the function behind the `transferlab-train` command, with the
command-line overrides a user would type. The table is Markdown; docs/performance.md explains it.
"""

import argparse
import copy
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A run's libraries are imported before its clock starts, and only its own: a plain loop's
# process pays for torch and torchvision alone (transferlab's are imported in run_variant).
import torch
from torch import nn, optim
from torchvision import datasets, models, transforms

from transferlab.devices import cpu_cores, cpu_has_bf16
from transferlab.models.init import he_init  # torch and torchvision only

TUTORIAL_MEAN, TUTORIAL_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# ---- the plain loop, as the seeds write it (PyTorch transfer-learning tutorial) -------------

def tutorial_loaders(data: Path, size: int):
    data_transforms = {
        "train": transforms.Compose([
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(TUTORIAL_MEAN, TUTORIAL_STD),
        ]),
        "val": transforms.Compose([
            transforms.Resize(round(size * 256 / 224)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(TUTORIAL_MEAN, TUTORIAL_STD),
        ]),
    }
    image_datasets = {x: datasets.ImageFolder(data / x, data_transforms[x]) for x in ["train", "val"]}
    dataloaders = {
        x: torch.utils.data.DataLoader(image_datasets[x], batch_size=4, shuffle=True, num_workers=4)
        for x in ["train", "val"]
    }
    return dataloaders, {x: len(image_datasets[x]) for x in ["train", "val"]}


def train_model(model, criterion, optimizer, scheduler, dataloaders, sizes, device, num_epochs):
    epoch_times = []
    best_model_wts = copy.deepcopy(model.state_dict())
    best_acc = 0.0
    for _ in range(num_epochs):
        start = time.perf_counter()
        for phase in ["train", "val"]:
            if phase == "train":
                model.train()
            else:
                model.eval()
            running_corrects = 0
            for inputs, labels in dataloaders[phase]:
                inputs, labels = inputs.to(device), labels.to(device)
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                running_corrects += torch.sum(preds == labels.data)
            if phase == "train":
                scheduler.step()
            epoch_acc = running_corrects.double().item() / sizes[phase]
            if phase == "val" and epoch_acc > best_acc:
                best_acc = epoch_acc
                best_model_wts = copy.deepcopy(model.state_dict())
        epoch_times.append(time.perf_counter() - start)
    model.load_state_dict(best_model_wts)
    return best_acc, epoch_times


def plain_run(args, fixed_feature_extractor: bool) -> dict:
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    dataloaders, sizes = tutorial_loaders(args.data, args.image_size)
    # The tutorial asks torchvision for ImageNet weights; here they come from --weights, or
    # transferlab's init=he. The RNG is drawn in the same order as transferlab's runs draw it.
    model = models.resnet18(weights=None)
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    if fixed_feature_extractor:
        for param in model.parameters():
            param.requires_grad = False
    model.fc = nn.Linear(model.fc.in_features, 2)
    if not args.weights:
        he_init(model)
    model = model.to(device)
    params = model.fc.parameters() if fixed_feature_extractor else model.parameters()
    optimizer = optim.SGD(params, lr=0.001, momentum=0.9)
    scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    best_acc, epoch_times = train_model(
        model, nn.CrossEntropyLoss(), optimizer, scheduler, dataloaders, sizes, device, args.epochs
    )
    return {"val_acc": best_acc, "epoch_s": epoch_times}


# ---- transferlab through its command-line entry point -----------------------------------------

def transferlab_run(args, overrides: list[str]) -> dict:
    from transferlab.cli.train import main as transferlab_train  # imported before the clock started

    run_dir = args.out / args.variant
    init = ["init=pretrained", f"init.weights_path={args.weights}"] if args.weights else ["init=he"]
    sys.argv = [
        "transferlab-train", f"data.root={args.data}", *init, f"seed={args.seed}",
        f"trainer.max_epochs={args.epochs}", f"data.image_size={args.image_size}",
        f"hydra.run.dir={run_dir}", f"callbacks.feature_cache.dir={args.out / 'cache'}",
        *overrides,
    ]
    transferlab_train()
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary["status"] != "completed":
        raise RuntimeError(f"{args.variant}: {summary.get('error')}")
    return {"val_acc": summary["best"], "epoch_s": [h["time_s"] for h in summary["history"]]}


VARIANTS = {
    "plain_fe": lambda a: plain_run(a, fixed_feature_extractor=True),
    "lab_fe": lambda a: transferlab_run(
        a, ["freeze=feature_extraction", f"callbacks.feature_cache.views={a.views}"]
    ),
    "plain_ft": lambda a: plain_run(a, fixed_feature_extractor=False),
    "lab_ft": lambda a: transferlab_run(a, ["freeze=full"]),
    "lab_ft_fast": lambda a: transferlab_run(a, ["freeze=full", "trainer=fast"]),
}


def run_variant(args) -> None:
    """In the child process: run one variant, write its numbers as JSON."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant.startswith("lab_"):
        import transferlab.fit  # noqa: F401  (transferlab.cli.train loads it only when a run starts)
        import transferlab.cli.train  # noqa: F401
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = VARIANTS[args.variant](args)
    result["wall_s"] = time.perf_counter() - start
    result["peak_rss_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    args.result.write_text(json.dumps(result))


# ---- the parent: run the variants, print the table -------------------------------------------

def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    if Path("/proc/cpuinfo").is_file():
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    cores = cpu_cores()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    load = ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    return (
        f"{cpu}, {cores} cores{load}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"device {device}; CPU bf16 {'native' if cpu_has_bf16() else 'emulated (fast preset uses fp32)'}"
    )


# Children import from cached bytecode, as every run after a package's first does. Where the
# environment forbids writing it (PYTHONDONTWRITEBYTECODE), each process would compile its imports
# from source (3,582 modules for a transferlab run: 14.9 s of imports instead of 6.5 s on 2 cores;
# torch and torchvision alone, a plain loop's, 8.9 s instead of 4.0 s),
# which no user's second run pays: the children write it, after one warm-up process.
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
IMPORTS = "import torch, torchvision, lightning, torch.utils.tensorboard, transferlab.fit, transferlab.cli.train"


def cache_bytecode() -> None:
    if sys.flags.dont_write_bytecode:
        print("caching the imports' bytecode once (PYTHONDONTWRITEBYTECODE is set here) ...",
              file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-c", IMPORTS], env=CHILD_ENV, check=True)


def run_in_child(script: str, name: str, argv: list[str], out: Path) -> dict:
    """`script argv --result <out>/<name>.json` in a fresh process, its output in <name>.log: the
    JSON it writes, plus `process_s`, the whole process's time (start-up and imports included)."""
    result = out / f"{name}.json"
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        done = subprocess.run([sys.executable, script, *argv, "--result", str(result)], env=CHILD_ENV,
                              stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        sys.exit(f"{name} failed; see {out / f'{name}.log'}")
    return json.loads(result.read_text()) | {"process_s": time.perf_counter() - start}


def spawn(args, variant: str, epochs: int) -> dict:
    argv = [
        "--variant", variant, "--data", str(args.data), "--epochs", str(epochs),
        "--image-size", str(args.image_size), "--seed", str(args.seed), "--views", str(args.views),
        "--threads", str(args.threads), "--out", str(args.out),
        *(["--weights", str(args.weights)] if args.weights else []),
    ]
    print(f"running {variant} ({epochs} epoch{'s' * (epochs > 1)}) ...", file=sys.stderr, flush=True)
    return run_in_child(__file__, variant, argv, args.out)


def per_epoch(r: dict) -> float:
    return sum(r["epoch_s"]) / len(r["epoch_s"])


def row(comparison: str, run: str, r: dict, ratio: str = "") -> str:
    other = r["wall_s"] - sum(r["epoch_s"])
    return (
        f"| {comparison} | {run} | {r['wall_s']:.1f} | {r['process_s']:.1f} | {per_epoch(r):.2f} | {other:.1f} | "
        f"{100 * r['val_acc']:.1f} | {r['peak_rss_growth_mb']:.0f} | {ratio} |"
    )


# ---- the fixed cost of a run: a 2-job sweep on CIFAR-10's 60,000 files -----------------------

def log_times(train_log: Path) -> dict[str, float]:
    """Wall-clock seconds of a job's milestones in its train.log: its first line (`run dir`),
    the data's check (torch and Lightning imported by then), the split (after the scan), the stage
    table (right before the first training step)."""
    from datetime import datetime

    marks = {"start": "] - run dir ", "scan": "] - data: listing and checking", "split": "] - split of ",
             "first_step": "] - stages ("}
    found = {}
    for line in train_log.read_text().splitlines():
        for name, mark in marks.items():
            if name not in found and mark in line:
                found[name] = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return found


def sweep_start(args) -> dict:
    """`transferlab-train -m seed=0,1` on CIFAR-10, one training step a job, from a cold scan
    record: each job's seconds from its start (job 1: the process's) to the split and to its first
    step. Job 2 runs in job 1's process, as in every sweep on Hydra's basic launcher."""
    sweep, cache = args.out / "sweep", args.out / "sweep_cache"
    for old in (sweep, cache):  # a run dir's train.log appends: an earlier sweep's lines would count
        shutil.rmtree(old, ignore_errors=True)
    env = CHILD_ENV | {"TRANSFERLAB_CACHE_DIR": str(cache)}
    argv = ["-m", "seed=0,1", "data=cifar10", f"data.root={args.cifar}", "init=he", "freeze=full",
            "trainer=cpu", "trainer.max_steps=1", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", "data.num_workers=0", "logger=none",
            "callbacks.progress_bar.refresh_rate=0", f"hydra.sweep.dir={sweep}"]
    print("running a 2-job sweep on CIFAR-10 ...", file=sys.stderr, flush=True)
    started = time.time()
    with open(args.out / "sweep.log", "w") as log:
        done = subprocess.run([sys.executable, "-m", "transferlab.cli.train", *argv], env=env,
                              stdout=log, stderr=subprocess.STDOUT, check=False)
    total = time.time() - started
    if done.returncode != 0:
        sys.exit(f"the sweep failed; see {args.out / 'sweep.log'}")
    first, second = (log_times(sweep / str(i) / "train.log") for i in (0, 1))
    # Job 1 from the start of its data check (its scan: the record is empty) and from the
    # process's start (imports included); job 2 from its first log line (it runs in job 1's
    # process, everything imported).
    clocks = [(first, first["scan"]), (first, started), (second, second["start"])]
    return {"process_s": total, "jobs": [{k: t[k] - start for k in ("split", "first_step")}
                                         for t, start in clocks]}


def sweep_report(result: dict) -> None:
    print("\n| 2-job sweep on CIFAR-10 (60,000 files), 1 step a job | to the split (scan) s | "
          "to the first step s | target |")
    print("|---|---:|---:|---|")
    rows = [("job 1, from the start of its data check", "scan <= 15 s"),
            ("job 1, from the process's start", "imports included"),
            ("job 2, from its first log line", "first step <= 5 s")]
    for (name, target), job in zip(rows, result["jobs"]):
        print(f"| {name} | {job['split']:.1f} | {job['first_step']:.1f} | {target} |")
    print(f"\nthe whole sweep process: {result['process_s']:.1f} s")


def scan_speed(args) -> None:
    """The scan's inspection (decode check and SHA-1 from one read) of the CIFAR-10 files and of
    the ants/bees photos, in threads (how it ran before) and in one forked process per core (how
    `map_files` runs it from PROCESSES_FROM files on), same files, same process, best of 2."""
    from transferlab.data import scan
    from transferlab.data.images import files_under, inspect_file, is_image_name

    cifar = [f for f in files_under(args.cifar) if is_image_name(f)]
    photos = [f for f in files_under(args.data) if is_image_name(f)]
    print("\n| files inspected | threads s | processes s | ratio |\n|---|---:|---:|---:|")
    for name, files in ((f"ants/bees, {len(photos[:100])}", photos[:100]),
                        (f"CIFAR-10, {len(cifar[:1000]):,}", cifar[:1000]),
                        (f"CIFAR-10, {len(cifar):,}", cifar)):
        times = {}
        for way, processes_from in (("threads", float("inf")), ("processes", 1)):
            scan.PROCESSES_FROM = processes_from
            runs = []
            for _ in range(2):
                start = time.perf_counter()
                scan.map_files(inspect_file, files)
                runs.append(time.perf_counter() - start)
            times[way] = min(runs)
        print(f"| {name} | {times['threads']:.2f} | {times['processes']:.2f} | "
              f"{times['threads'] / times['processes']:.1f}x |")


def report(args, results: dict) -> None:
    print(f"machine: {machine()}")
    print(
        f"data: {args.data}; image size {args.image_size}; seed {args.seed}; "
        f"init {args.weights or 'he'} on both sides; "
        f"feature cache views={args.views} (cold cache)\n"
    )
    columns = ["comparison", "run", "wall s", "process s", "s/epoch", "other s", "best val acc %", "peak RSS +MB",
               "ratio (target)"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    fe = f"feature extraction, {args.epochs} epochs"
    if "plain_fe" in results:
        plain, lab = results["plain_fe"], results["lab_fe"]
        speedup = plain["wall_s"] / lab["wall_s"]
        whole = plain["process_s"] / lab["process_s"]
        gap = 100 * (lab["val_acc"] - plain["val_acc"])
        print(row(fe, "plain loop", plain))
        print(row(fe, "transferlab, feature cache", lab,
                  f"{speedup:.1f}x faster (>= 20x), {whole:.1f}x as whole processes (>= 15x); "
                  f"acc {gap:+.1f} pts (within 2)"))
    if "plain_ft" in results:
        ft = "fine-tune, 1 epoch"
        plain, lab, fast = results["plain_ft"], results["lab_ft"], results["lab_ft_fast"]
        overhead = 100 * (per_epoch(lab) / per_epoch(plain) - 1)
        print(row(ft, "plain loop, batch 4 fp32", plain))
        whole = lab["process_s"] / plain["process_s"]
        print(row(ft, "transferlab, batch 4 fp32", lab, f"{overhead:+.1f}% per epoch (<= 5%), "
                                                        f"{whole:.2f}x as whole processes (<= 1.10x)"))
        print(row(ft, "transferlab, trainer=fast", fast,
                  f"{per_epoch(plain) / per_epoch(fast):.2f}x faster per epoch (>= 2x)"))
    print(
        "\nwall s: the run end to end after imports (data setup, cache build, training, checkpoints); "
        "process s: the run's whole process, start-up and imports included; "
        "s/epoch: train + val of one epoch; other s: wall minus epochs. "
        "peak RSS +MB: growth of the main process's peak resident set (resource.getrusage "
        "ru_maxrss) over its value after imports; DataLoader workers not included."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = Path(os.environ.get("TRANSFERLAB_DATA_DIR", "data")) / "hymenoptera"
    parser.add_argument("--data", type=Path, default=default_data, help=f"ImageFolder root ({default_data})")
    parser.add_argument("--epochs", type=int, default=25, help="feature-extraction epochs (default 25)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views", type=int, default=0, help="feature cache views (0: no augmentation)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    parser.add_argument("--weights", type=Path, help="resnet18 state_dict for both sides (default: init=he)")
    parser.add_argument("--only", choices=["fe", "ft", "sweep", "scan"],
                        help="feature extraction, fine-tune, the CIFAR-10 sweep's start or the scan only")
    default_cifar = Path(os.environ.get("TRANSFERLAB_DATA_DIR", "data")) / "cifar10"
    parser.add_argument("--cifar", type=Path, default=default_cifar, help=f"CIFAR-10 root ({default_cifar})")
    parser.add_argument("--quick", action="store_true", help="5 epochs at 112 px: minutes, not an hour")
    parser.add_argument("--out", type=Path, help="run folders and logs (default: a new temporary folder)")
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data, args.cifar = args.data.expanduser().resolve(), args.cifar.expanduser().resolve()
    args.weights = args.weights.expanduser().resolve() if args.weights else None

    if args.variant:
        run_variant(args)
        return
    if args.quick:
        args.epochs, args.image_size = 5, 112
    if not (args.data / "train").is_dir():
        sys.exit(f"no ImageFolder data at {args.data} (set --data or TRANSFERLAB_DATA_DIR)")
    args.out = (args.out or Path(tempfile.mkdtemp(prefix="transferlab-bench-"))).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    cache_bytecode()
    if args.only in ("sweep", "scan"):
        print(f"machine: {machine()}")
        if args.only == "sweep":
            sweep_report(sweep_start(args))
        else:
            scan_speed(args)
        return
    if args.only != "ft":
        results |= {v: spawn(args, v, args.epochs) for v in ("plain_fe", "lab_fe")}
    if args.only != "fe":
        results |= {v: spawn(args, v, 1) for v in ("plain_ft", "lab_ft", "lab_ft_fast")}
    report(args, results)
    if args.only is None and (args.cifar / "train").is_dir():
        sweep_report(sweep_start(args))
    print(f"\nrun folders and logs: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

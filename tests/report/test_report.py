import csv
import json
import statistics
from pathlib import Path

import pytest

from transferlab.cli.report import main
from transferlab.report import build_report, paired

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFAULT_CHOICES = {"init": "pretrained", "freeze": "full", "backbone": "resnet18",
                   "data": "hymenoptera"}


def summary(best, *, monitor="val/acc", status="completed", error=None, best_epoch=1,
            curve=(0.5, 0.7, 0.6), epoch_time=2.0, params=(100, 1000), memory=None):
    history = [{"epoch": i, "time_s": epoch_time, monitor: v, "train/loss": 1.0 / (i + 1)}
               for i, v in enumerate(curve)]
    return {
        "monitor": monitor, "best": best, "best_epoch": best_epoch,
        "epochs_completed": len(history), "status": status, "error": error,
        "metrics": {monitor: curve[-1]} if curve else {},
        "time_per_epoch_s": epoch_time if history else None,
        "time_total_s": epoch_time * len(history),
        "params_trainable": params[0], "params_total": params[1],
        "peak_memory": memory or {"cpu_rss_mb": 1000.0}, "history": history, "hparams": {},
    }


def make_job(sweep: Path, num: int, overrides: list[str], data: dict | None,
             choices: dict | None = None) -> Path:
    """A job dir as Hydra and transferlab-train leave it; data=None: no summary.json. The
    report reads summary.json only: .hydra/ is there, empty, as the mark of a job dir."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    choices = {**DEFAULT_CHOICES, **(choices or {})}
    for item in overrides:
        key, _, value = item.partition("=")
        if key in choices:
            choices[key] = value
    if data is not None:
        record = {"overrides": overrides, "choices": choices}
        (job / "summary.json").write_text(json.dumps(record | data))
    return job


# configuration -> per-seed (best, best_epoch, time per epoch, peak cpu MB)
RESULTS = {
    "freeze=full, init=he": [(0.71, 3, 2.0, 900.0), (0.75, 2, 2.2, 950.0), (0.69, 4, 2.1, 920.0)],
    "freeze=full, init=pretrained": [(0.91, 1, 1.9, 1100.0), (0.93, 2, 2.0, 1200.0),
                                     (0.90, 1, 2.1, 1150.0)],
    "freeze=partial, init=pretrained": [(0.85, 2, 1.0, 700.0), (0.88, 3, 1.1, 650.0)],
}


def write_sweep(sweep: Path) -> None:
    num = 0
    for name, seeds in RESULTS.items():
        overrides = name.split(", ")
        for seed, (best, epoch, t, mem) in enumerate(seeds):
            data = summary(best, best_epoch=epoch, epoch_time=t, memory={"cpu_rss_mb": mem},
                           curve=(best - 0.2, best, best - 0.05))
            make_job(sweep, num, [*overrides, f"seed={seed}"], data)
            num += 1


@pytest.fixture
def sweep(tmp_path) -> Path:
    path = tmp_path / "outputs/multirun/2026-01-02/10-00-00"
    write_sweep(path)
    return path


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {row["configuration"]: row for row in csv.DictReader(f)}


def test_means_and_stds_match_the_summary_files(sweep):
    result = build_report(sweep, plots=False)
    table = read_csv(sweep / "report.csv")
    assert set(table) == set(RESULTS)
    for name, seeds in RESULTS.items():
        bests = [s[0] for s in seeds]
        row = table[name]
        assert int(row["n_seeds"]) == len(seeds)
        assert int(row["n_failed"]) == int(row["n_unfinished"]) == 0
        assert float(row["best_mean"]) == pytest.approx(statistics.mean(bests))
        assert float(row["best_std"]) == pytest.approx(statistics.stdev(bests))
        assert float(row["best_epoch_mean"]) == pytest.approx(statistics.mean(s[1] for s in seeds))
        assert float(row["time_per_epoch_s"]) == pytest.approx(statistics.mean(s[2] for s in seeds))
        assert float(row["time_total_s"]) == pytest.approx(3 * statistics.mean(s[2] for s in seeds))
        assert float(row["peak_cpu_rss_mb"]) == max(s[3] for s in seeds)
        assert (row["params_trainable"], row["params_total"]) == ("100", "1000")
    assert result.monitor == "val/acc" and result.mode == "max"
    assert not result.problems
    assert not list(sweep.glob("*.png"))


def test_rows_sorted_best_first_with_he_baseline_and_differences(sweep):
    result = build_report(sweep, plots=False)
    means = {n: statistics.mean(s[0] for s in seeds) for n, seeds in RESULTS.items()}
    assert [r.configuration for r in result.rows] == sorted(means, key=means.get, reverse=True)

    table = read_csv(sweep / "report.csv")
    he = "freeze=full, init=he"
    assert table[he]["is_baseline"] == "1" and table[he]["diff_vs_baseline"] == ""
    for name in set(RESULTS) - {he}:
        assert table[name]["is_baseline"] == "0"
        # Paired: over the seeds both rows completed (partial has seeds 0 and 1 only).
        pairs = list(zip(RESULTS[name], RESULTS[he]))
        expected = statistics.mean(a[0] - b[0] for a, b in pairs)
        assert float(table[name]["diff_vs_baseline"]) == pytest.approx(expected)
        assert int(table[name]["n_pairs"]) == len(pairs)
        assert table[name]["baseline"] == he

    md = (sweep / "report.md").read_text()
    assert f"| {he} **(baseline)** |" in md
    assert "Failed or unfinished" not in md


def test_failed_unfinished_and_missing_jobs_are_listed(tmp_path):
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["init=he", "seed=0"], summary(0.7))
    make_job(sweep, 1, ["init=he", "seed=1"],
             summary(0.6, status="failed", error="RuntimeError: CUDA out of memory"))
    make_job(sweep, 2, ["init=pretrained", "seed=0"], summary(0.9))
    make_job(sweep, 3, ["init=pretrained", "seed=1"], summary(0.8, status="running"))
    make_job(sweep, 4, ["init=default", "seed=0"], None)
    # What train.main writes when a run fails before the trainer starts.
    make_job(sweep, 5, ["init=default", "seed=1"],
             {"monitor": "val/acc", "status": "failed", "error": "DataError: no images"})

    result = build_report(sweep, plots=False)
    statuses = {j.path.name: j.status for j in result.problems}
    assert statuses == {"1": "failed", "3": "unfinished", "4": "missing", "5": "failed"}

    table = read_csv(sweep / "report.csv")
    assert table["init=he"]["n_seeds"] == "1" and table["init=he"]["n_failed"] == "1"
    assert float(table["init=he"]["best_mean"]) == 0.7 and table["init=he"]["best_std"] == ""
    assert table["init=pretrained"]["n_unfinished"] == "1"
    assert float(table["init=pretrained"]["best_mean"]) == 0.9
    # Every job of this configuration failed: it is still a row, with nothing to average.
    assert table["init=default"]["n_seeds"] == "0"
    assert (table["init=default"]["n_failed"], table["init=default"]["n_unfinished"]) == ("1", "0")
    assert table["init=default"]["best_mean"] == table["init=default"]["diff_vs_baseline"] == ""
    # A job that never wrote its summary.json has no settings to group it by: named by its dir.
    assert table["(job 4)"]["n_unfinished"] == "1"
    assert {r.configuration for r in result.rows[-2:]} == {"init=default", "(job 4)"}

    md = (sweep / "report.md").read_text()
    problems = md.split("## Failed or unfinished jobs")[1]
    assert "| 1 | init=he | failed | RuntimeError: CUDA out of memory |" in problems
    assert "| 3 | init=pretrained | unfinished |" in problems
    assert "| 4 | (job 4) | missing | no summary.json" in problems
    assert "| 5 | init=default | failed | DataError: no images |" in problems


def test_damaged_files_are_reported_not_fatal(tmp_path):
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["init=he", "seed=0"], summary(0.7))
    torn = make_job(sweep, 1, ["init=he", "seed=1"], None) / "summary.json"
    torn.write_text('{"status": "runn')
    make_job(sweep, 2, ["init=he", "seed=2"], summary(None))  # completed, monitor never logged
    older = make_job(sweep, 3, ["init=he", "seed=3"], summary(0.9)) / "summary.json"
    older.write_text(json.dumps(summary(0.9)))  # a summary without the run's record
    result = build_report(sweep, plots=False)
    problems = {j.path.name: (j.status, j.error) for j in result.problems}
    assert problems["1"][0] == "unreadable" and "summary.json" in problems["1"][1]
    assert problems["2"] == ("completed", "no value of val/acc was recorded")
    rows = {r.configuration: len(r.ok_jobs) for r in result.rows}
    assert rows.pop("init=he") == 1
    assert rows.pop("(job 1)") == 0  # a torn summary.json: named by its dir, listed, not dropped
    # A summary from before runs recorded how they were asked for: named by its dir, still counted.
    assert rows == {"(job 3)": 1}


def test_pngs_are_written(sweep):
    build_report(sweep)
    for name in ("curves.png", "best.png", "tradeoff.png"):
        data = (sweep / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        assert len(data) > 5000, name
        assert f"]({name})" in (sweep / "report.md").read_text()


def test_pngs_are_written_when_nothing_completed(tmp_path):
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["init=he", "seed=0"], summary(None, status="failed", error="boom"))
    result = build_report(sweep)
    assert [len(r.ok_jobs) for r in result.rows] == [0]
    for name in ("curves.png", "best.png", "tradeoff.png"):
        assert (sweep / name).read_bytes()[:8] == PNG_SIGNATURE


def test_several_he_rows_each_compared_with_the_closest(tmp_path):
    sweep = tmp_path / "sweep"
    bests = {"freeze=full, init=he": 0.6, "freeze=partial, init=he": 0.5,
             "freeze=full, init=pretrained": 0.9, "freeze=partial, init=pretrained": 0.8}
    for num, (name, best) in enumerate(bests.items()):
        make_job(sweep, num, [*name.split(", "), "seed=0"], summary(best))
    build_report(sweep, plots=False)
    table = read_csv(sweep / "report.csv")
    assert {n for n, r in table.items() if r["is_baseline"] == "1"} == {
        "freeze=full, init=he", "freeze=partial, init=he"}
    full, partial = table["freeze=full, init=pretrained"], table["freeze=partial, init=pretrained"]
    assert full["baseline"] == "freeze=full, init=he"
    assert float(full["diff_vs_baseline"]) == pytest.approx(0.9 - 0.6)
    assert partial["baseline"] == "freeze=partial, init=he"
    assert float(partial["diff_vs_baseline"]) == pytest.approx(0.8 - 0.5)


def test_loss_monitor_sorts_ascending(tmp_path):
    sweep = tmp_path / "sweep"
    for num, (name, best) in enumerate({"init=he": 0.4, "init=pretrained": 0.1,
                                        "init=default": 0.7}.items()):
        make_job(sweep, num, [name, "seed=0"], summary(best, monitor="val/loss", curve=(1.0, best)))
    result = build_report(sweep, plots=False)
    assert result.mode == "min"
    assert [r.configuration for r in result.rows] == ["init=pretrained", "init=he", "init=default"]
    assert result.rows[0].diff == pytest.approx(0.1 - 0.4)  # negative: better than He for a loss


def test_the_recorded_monitor_mode_wins_over_the_metric_name(tmp_path):
    # e.g. monitor=val/error (lower is better) with monitor_mode=min, recorded by the runs
    sweep = tmp_path / "sweep"
    for num, (name, best) in enumerate({"init=he": 0.4, "init=pretrained": 0.1}.items()):
        data = summary(best, monitor="val/error", curve=(1.0, best)) | {"monitor_mode": "min"}
        make_job(sweep, num, [name, "seed=0"], data)
    result = build_report(sweep, plots=False)
    assert result.mode == "min" and result.rows[0].configuration == "init=pretrained"


def test_seed_only_jobs_are_named_by_their_choices(tmp_path):
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["seed=0"], summary(0.8))
    make_job(sweep, 1, ["seed=1"], summary(0.9))
    make_job(sweep, 2, ["seed=0"], summary(0.5), choices={"init": "he"})
    result = build_report(sweep, plots=False)
    rows = {r.configuration: r for r in result.rows}
    assert result.common == {"backbone": "resnet18", "freeze": "full"}
    assert set(rows) == {"init=pretrained", "init=he"}
    assert len(rows["init=pretrained"].ok_jobs) == 2
    assert rows["init=he"].is_baseline


def test_overrides_shared_by_every_job_are_stated_once(tmp_path):
    sweep = tmp_path / "sweep"
    common = ["trainer.max_epochs=3", "data.root=/data/x"]
    make_job(sweep, 0, ["init=he", *common, "seed=0"], summary(0.6))
    make_job(sweep, 1, ["init=he", *common, "seed=1"], summary(0.7))
    make_job(sweep, 2, ["init=pretrained", *common, "seed=0"], summary(0.9))
    result = build_report(sweep, plots=False)
    assert [r.configuration for r in result.rows] == ["init=pretrained", "init=he"]
    assert "Common to all jobs: `data.root=/data/x, trainer.max_epochs=3`." in result.markdown

    # A sweep over seeds only keeps the full name: there is nothing else to call it.
    single = tmp_path / "single"
    for seed in range(2):
        make_job(single, seed, ["init=he", *common, f"seed={seed}"], summary(0.6))
    (row,) = build_report(single, plots=False).rows
    assert row.configuration == "data.root=/data/x, init=he, trainer.max_epochs=3"
    assert len(row.ok_jobs) == 2 and not row.is_baseline  # nothing is compared with it


def test_main_defaults_to_the_latest_sweep(tmp_path, monkeypatch, capsys):
    root = tmp_path / "outputs/multirun"
    for stamp in ("2026-01-01/23-59-59", "2026-01-02/09-00-00"):
        make_job(root / stamp, 0, ["init=he", "seed=0"], summary(0.5))
    latest = root / "2026-01-02/11-30-00"
    write_sweep(latest)
    monkeypatch.chdir(tmp_path)

    assert main([]) == 0
    assert (latest / "report.md").is_file() and (latest / "report.csv").is_file()
    assert not (root / "2026-01-02/09-00-00/report.md").exists()
    out = capsys.readouterr().out
    assert "| configuration | n |" in out and "freeze=partial, init=pretrained" in out


def test_main_explicit_dir_and_clear_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    assert "no sweep found" in capsys.readouterr().err
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["empty"]) == 2
    assert "no job dirs" in capsys.readouterr().err

    make_job(tmp_path / "mine", 0, ["init=he", "seed=0"], summary(0.5))
    assert main(["mine"]) == 0
    assert (tmp_path / "mine/report.md").is_file()


def table_header(md: str) -> str:
    return next(line for line in md.splitlines() if line.startswith("| configuration |"))


# Sweeps in which no row is compared with a He row: (job overrides, best) per job; choices are
# Hydra's defaults for the jobs whose overrides do not name init.
NO_COMPARISON = {
    "all he": ([(["freeze=full", "init=he"], 0.6), (["freeze=partial", "init=he"], 0.5),
                (["freeze=gradual", "init=he"], 0.5)], None),
    "init never varied, default pretrained": (
        [(["freeze=full"], 0.9), (["freeze=partial"], 0.8)], None),
    "init never varied, default he": ([(["freeze=full"], 0.6), (["freeze=partial"], 0.5)],
                                      {"init": "he"}),
    "seeds only, he": ([([], 0.6), ([], 0.7)], {"init": "he"}),
}


@pytest.mark.parametrize("case", NO_COMPARISON)
def test_no_baseline_without_rows_to_compare(tmp_path, case):
    jobs, choices = NO_COMPARISON[case]
    sweep = tmp_path / "sweep"
    for num, (overrides, best) in enumerate(jobs):
        make_job(sweep, num, [*overrides, f"seed={num}"], summary(best), choices=choices)
    result = build_report(sweep, plots=False)
    assert not any(r.is_baseline or r.baseline or r.diff is not None for r in result.rows)

    md = (sweep / "report.md").read_text()
    assert "(baseline)" not in md and "Baseline rows" not in md and "Δ" not in md
    # Header, separator and every row have the same cells, so the table still renders.
    lines = md.splitlines() + [""]
    start = lines.index(table_header(md))
    table_lines = lines[start:lines.index("", start)]
    assert len(table_lines) == 2 + len(result.rows)
    assert {line.count("|") for line in table_lines} == {table_header(md).count("|")}

    # The CSV keeps its columns, empty.
    table = read_csv(sweep / "report.csv")
    assert len(table) == len({tuple(o) for o, _ in jobs})
    for row in table.values():
        assert row["is_baseline"] == "0"
        assert row["diff_vs_baseline"] == row["baseline"] == ""


# Pretrained + He sweeps: configuration -> per-seed bests, and the expected baseline of each
# non-He configuration.
WITH_COMPARISON = [
    ({"init=he": [0.50, 0.60], "init=pretrained": [0.90, 0.80]},
     {"init=pretrained": "init=he"}),
    ({"freeze=full, init=he": [0.6], "freeze=partial, init=he": [0.4, 0.5],
      "freeze=full, init=pretrained": [0.9], "freeze=partial, init=pretrained": [0.7, 0.8],
      "freeze=partial, init=default": [0.45]},
     {"freeze=full, init=pretrained": "freeze=full, init=he",
      "freeze=partial, init=pretrained": "freeze=partial, init=he",
      "freeze=partial, init=default": "freeze=partial, init=he"}),
]


@pytest.mark.parametrize("results, baselines", WITH_COMPARISON)
def test_he_rows_are_baselines_when_compared(tmp_path, results, baselines):
    sweep = tmp_path / "sweep"
    num = 0
    for name, bests in results.items():
        for seed, best in enumerate(bests):
            make_job(sweep, num, [*name.split(", "), f"seed={seed}"], summary(best))
            num += 1
    build_report(sweep, plots=False)
    he_rows = set(baselines.values())

    table = read_csv(sweep / "report.csv")
    md = (sweep / "report.md").read_text()
    header = [c.strip() for c in table_header(md).split("|")[1:-1]]
    assert "Δ vs init=he" in header and "Baseline rows have `init=he`" in md
    delta = header.index("Δ vs init=he")
    for name, row in table.items():
        assert row["is_baseline"] == ("1" if name in he_rows else "0")
        line = next(l for l in md.splitlines() if l.startswith(f"| {name} "))
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if name in he_rows:
            assert cells[0] == f"{name} **(baseline)**"
            assert cells[delta] == row["diff_vs_baseline"] == ""
        else:
            base = baselines[name]
            # the mean paired difference over the seeds both rows have
            expected = statistics.mean(a - b for a, b in zip(results[name], results[base]))
            assert row["baseline"] == base
            assert float(row["diff_vs_baseline"]) == pytest.approx(expected)
            assert cells[0] == name and cells[delta] == f"{expected:+.4f}"


def test_he_row_nobody_is_compared_with_is_not_a_baseline(tmp_path):
    sweep = tmp_path / "sweep"
    for num, (name, best) in enumerate({"freeze=full, init=he": 0.6,
                                        "freeze=partial, init=he": 0.5,
                                        "freeze=full, init=pretrained": 0.9}.items()):
        make_job(sweep, num, [*name.split(", "), "seed=0"], summary(best))
    build_report(sweep, plots=False)
    table = read_csv(sweep / "report.csv")
    assert table["freeze=full, init=he"]["is_baseline"] == "1"
    assert table["freeze=partial, init=he"]["is_baseline"] == "0"
    assert float(table["freeze=full, init=pretrained"]["diff_vs_baseline"]) == pytest.approx(0.3)


def is_png(path: Path) -> bool:
    """A PNG signature, an IHDR chunk with a non-empty image, and an IEND chunk at the end."""
    data = path.read_bytes()
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or data[-8:-4] != b"IEND":
        return False
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return width > 100 and height > 100


# Sweeps whose rows overlap: identical curves and results, or none at all.
PLOT_CASES = {
    "identical rows, no baseline": {
        f"freeze={f}, init=he": [(0.5, 0.6, 0.6)] * 2 for f in ("full", "gradual", "partial")},
    "pretrained and he, identical": {
        "init=he": [(0.5, 0.7, 0.6)], "init=pretrained": [(0.5, 0.7, 0.6)],
        "init=default": [(0.4, 0.7, 0.65)]},
    "long names": {
        "backbone=convnext_tiny, freeze=feature_extraction, init=pretrained, "
        f"optimizer.lr={lr}, data.image_size=224": [(0.5, 0.8)] for lr in (0.1, 0.01, 0.001)},
}


@pytest.mark.parametrize("case", PLOT_CASES)
def test_pngs_are_valid_for_overlapping_rows(tmp_path, case):
    sweep = tmp_path / "sweep"
    num = 0
    for name, curves in PLOT_CASES[case].items():
        for seed, curve in enumerate(curves):
            make_job(sweep, num, [*name.split(", "), f"seed={seed}"],
                     summary(max(curve), curve=curve))
            num += 1
    result = build_report(sweep)
    for name in ("curves.png", "best.png", "tradeoff.png"):
        assert sweep / name in result.files
        assert is_png(sweep / name), name


def test_paired_difference_against_a_hand_computed_case():
    # diffs 0.1, 0.2, 0.3: mean 0.2, sd 0.1, se 0.1/sqrt(3) = 0.057735, t = 3.4641 on 2 df.
    # 95 % half-width: t(0.975, 2) = 4.302653 (table value) x se = 0.248414.
    # p: with 2 df the t CDF is 1/2 + t / (2 sqrt(2 + t^2)), so p = 1 - t / sqrt(2 + t^2)
    #    = 1 - 3.4641 / sqrt(14) = 0.074180.
    pair = paired([0.1, 0.2, 0.3])
    assert (pair.n, pair.mean) == (3, pytest.approx(0.2))
    assert (pair.low, pair.high) == (pytest.approx(-0.048414, abs=1e-6), pytest.approx(0.448414, abs=1e-6))
    assert pair.p == pytest.approx(0.074180, abs=1e-6)
    assert pair.verdict("max") == "not distinguishable at this n"
    assert paired([0.10, 0.12, 0.11, 0.13]).verdict("max") == "better"
    assert paired([0.10, 0.12, 0.11, 0.13]).verdict("min") == "worse"  # e.g. a loss went up
    assert paired([0.2]).low is None and paired([0.2]).verdict("max").endswith("at this n")


def with_test(data: dict, value: float, metric: str = "test/acc") -> dict:
    return data | {"test": {"checkpoint": "best-epoch001.ckpt", "epoch": 1,
                            "metrics": {metric: value}}}


def fold_sweep(sweep: Path, results: dict[str, list[tuple[float, float, float]]]) -> None:
    """configuration -> per fold (best val, last val, test)."""
    num = 0
    for name, folds in results.items():
        for fold, (best, last, test) in enumerate(folds):
            data = with_test(summary(best, curve=(best - 0.1, best, last)), test)
            make_job(sweep, num, [*name.split(", "), "data.folds=3", f"data.fold={fold}"], data)
            num += 1


def test_folds_are_replicates_and_rows_are_compared_on_test(tmp_path):
    sweep = tmp_path / "sweep"
    fold_sweep(sweep, {
        "init=he": [(0.80, 0.70, 0.60), (0.82, 0.75, 0.62), (0.78, 0.74, 0.61)],
        "init=pretrained": [(0.81, 0.80, 0.71), (0.83, 0.80, 0.74), (0.80, 0.79, 0.72)],
    })
    result = build_report(sweep)
    assert result.common == {"data.folds": "3"}
    rows = {r.configuration: r for r in result.rows}
    assert [r.configuration for r in result.rows] == ["init=pretrained", "init=he"]
    assert len(rows["init=he"].ok_jobs) == 3
    assert rows["init=he"].last_mean == pytest.approx(statistics.mean([0.70, 0.75, 0.74]))
    assert rows["init=he"].test_mean == pytest.approx(0.61)
    # Paired on test, fold by fold: 0.11, 0.12, 0.11.
    assert rows["init=pretrained"].vs_baseline.mean == pytest.approx(0.34 / 3)
    assert rows["init=pretrained"].vs_baseline.verdict("max") == "better"

    md = result.markdown
    header = [c.strip() for c in table_header(md).split("|")[1:-1]]
    assert header[:5] == ["configuration", "n", "best val/acc (mean ± std)", "last val/acc",
                          "test/acc (selected checkpoint)"]
    line = next(l for l in md.splitlines() if l.startswith("| init=pretrained "))
    cells = dict(zip(header, (c.strip() for c in line.split("|")[1:-1])))
    assert cells["test/acc (selected checkpoint)"] == "0.7233 ± 0.0153" and cells["verdict"] == "better"
    assert cells["Δ vs init=he"] == "+0.1133" and cells["95% CI"].startswith("[+0.09")
    assert "compared on test/acc" in md
    assert "**Winner: init=pretrained** on test/acc" in md
    table = read_csv(sweep / "report.csv")
    assert float(table["init=pretrained"]["diff_p_value"]) < 0.01


def test_top_rows_whose_interval_includes_zero_are_tied(tmp_path):
    sweep = tmp_path / "sweep"
    fold_sweep(sweep, {
        "freeze=full": [(0.8, 0.8, 0.70), (0.8, 0.8, 0.60), (0.8, 0.8, 0.75)],
        "freeze=partial": [(0.8, 0.8, 0.65), (0.8, 0.8, 0.68), (0.8, 0.8, 0.66)],
        "freeze=feature_extraction": [(0.5, 0.5, 0.40), (0.5, 0.5, 0.41), (0.5, 0.5, 0.42)],
    })
    md = build_report(sweep, plots=False).markdown
    assert "Winner" not in md
    tied = next(l for l in md.splitlines() if l.startswith("**Tied at this n**"))
    assert "freeze=full; freeze=partial." in tied and "feature_extraction" not in tied.split(".")[0]


def test_baseline_is_chosen_on_the_command_line(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for num, (name, best) in enumerate({"freeze=full": 0.8, "freeze=partial": 0.7,
                                        "freeze=feature_extraction": 0.6}.items()):
        for seed in range(2):
            make_job(sweep, 2 * num + seed, [name, f"seed={seed}"], summary(best + seed / 100))
    assert main([str(sweep), "--baseline", "freeze=feature_extraction"]) == 0
    table = read_csv(sweep / "report.csv")
    assert table["freeze=feature_extraction"]["is_baseline"] == "1"
    assert float(table["freeze=full"]["diff_vs_baseline"]) == pytest.approx(0.2)
    assert "Δ vs freeze=feature_extraction" in capsys.readouterr().out
    # the plots' legends name the baseline row as such, not as an He row
    from transferlab.report import build_report
    from transferlab.report.plots import _legend_label

    rows = build_report(sweep, plots=False, baseline=("freeze", "feature_extraction")).rows
    labels = [_legend_label(i, r) for i, r in enumerate(rows)]
    assert labels[-1].endswith("freeze=feature_extraction (baseline)") and "He" not in " ".join(labels)
    with pytest.raises(SystemExit):
        main([str(sweep), "--baseline", "init"])


def test_a_key_added_with_a_plus_is_compared_by_its_name(tmp_path):
    """`-m +piece=basic ...`: the rows are piece=..., and --baseline piece=basic finds them."""
    sweep = tmp_path / "sweep"
    for num, (piece, best) in enumerate({"basic": 0.6, "ema": 0.7}.items()):
        for seed in range(2):
            make_job(sweep, 2 * num + seed, [f"+piece={piece}", f"seed={seed}"], summary(best + seed / 100))
    assert main([str(sweep), "--baseline", "piece=basic"]) == 0
    table = read_csv(sweep / "report.csv")
    assert table["piece=basic"]["is_baseline"] == "1"
    assert float(table["piece=ema"]["diff_vs_baseline"]) == pytest.approx(0.1)


# freeze -> lr -> per-seed (best val, test): feature extraction wants the larger LR, full the
# smaller; at a common LR of 1e-3 full would win, at its own LR feature extraction does.
TUNED = {
    "feature_extraction": {"0.001": [(0.60, 0.58), (0.62, 0.59), (0.61, 0.57)],
                           "0.01": [(0.80, 0.78), (0.82, 0.80), (0.81, 0.77)]},
    "full": {"0.001": [(0.70, 0.66), (0.72, 0.69), (0.71, 0.70)],
             "0.01": [(0.65, 0.64), (0.66, 0.62), (0.64, 0.63)]},
}


def tuned_sweep(sweep: Path, tested: bool = True) -> Path:
    num = 0
    for freeze, by_lr in TUNED.items():
        for lr, seeds in by_lr.items():
            for seed, (best, test) in enumerate(seeds):
                data = summary(best, curve=(best - 0.1, best))
                if tested:
                    data["test"] = {"metrics": {"test/acc": test}}
                make_job(sweep, num, [f"freeze={freeze}", f"optimizer.lr={lr}", f"seed={seed}"], data)
                num += 1
    return sweep


def test_each_strategy_is_compared_at_the_setting_it_selected_on_val(tmp_path, capsys):
    sweep = tuned_sweep(tmp_path / "sweep")
    assert main([str(sweep), "--compare", "freeze", "--baseline", "freeze=full"]) == 0
    selected = read_csv(sweep / "selected.csv")
    assert selected["freeze=feature_extraction"]["selected_setting"] == "optimizer.lr=0.01"
    assert selected["freeze=full"]["selected_setting"] == "optimizer.lr=0.001"
    assert selected["freeze=full"]["selected_of"] == "2"
    # compared on test at the selected settings: +0.1167 paired over the three seeds
    assert float(selected["freeze=feature_extraction"]["test_mean"]) == pytest.approx(0.7833, abs=1e-4)
    assert float(selected["freeze=feature_extraction"]["diff_vs_baseline"]) == pytest.approx(
        statistics.mean([0.78 - 0.66, 0.80 - 0.69, 0.77 - 0.70]))
    out = capsys.readouterr().out
    assert "selected on val only" in out and "**Winner: freeze=feature_extraction** on test/acc" in out


def test_without_a_test_split_the_selected_comparison_says_it_is_optimistic(tmp_path):
    sweep = tuned_sweep(tmp_path / "sweep", tested=False)
    md = build_report(sweep, plots=False, compare=("freeze",)).markdown
    assert "there is no test split, so this comparison is optimistic" in md

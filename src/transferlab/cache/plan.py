"""Which part of a fit trains on cached outputs: a pure function of the stage map, the freeze
schedule and the epochs, table-tested without a Trainer (`plan`)."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from transferlab.models.backbones import HEAD

HORIZON = 10_000  # epochs read of a fit without an epoch limit: far beyond any schedule

# A freeze strategy's schedule: (stage names, epoch) -> the stages frozen at that epoch.
Schedule = Callable[[list[str], int], set[str]]


@dataclass(frozen=True)
class Plan:
    cut: str | None  # the stage whose output is cached (HEAD: the head's input); None: no cache
    why: str  # what trains on the cache, or why there is none
    until: int | None = None  # the epoch the fit goes back to images, if it does
    notes: tuple[str, ...] = ()  # what the log should say besides


def frozen_leading(schedule: Schedule, names: list[str], epochs: Iterable[int]) -> dict[int, int]:
    """Per epoch, how many stages from the input on are frozen (all of them below the head:
    only the head trains)."""
    body = [n for n in names if n != HEAD]
    counts = {}
    for epoch in epochs:
        frozen = schedule(names, epoch)
        counts[epoch] = next((i for i, n in enumerate(body) if n not in frozen), len(body))
    return counts


def plan(names: list[str], schedule: Schedule, start: int, end: int | None, *,
         strategy: str = "the freeze strategy", reload_every: int = 0,
         head_blocker: str | None = None, cut_blocker: Callable[[str], str | None] = lambda cut: None,
         cost: Callable[[str], float] | None = None, builds: int = 1) -> Plan:
    """The cache of a fit over epochs `start`..`end` (exclusive; None or <= 0: no limit).

    `reload_every`: the trainer's own loader reload interval (0: none), which a switch back to
    images must fit; `head_blocker` / `cut_blocker(stage)`: why the head's input / a stage's output
    cannot stand in for images (None: it can); `cost(cut)`: forward FLOPs per image up to `cut`,
    to choose between two possible caches; `builds`: the passes that build a train entry.
    """
    body = [n for n in names if n != HEAD]
    epochs = range(start, end if end and end > 0 else start + HORIZON)
    leading = frozen_leading(schedule, names, epochs)
    count = min(leading.values())
    head_first, notes = _head_only_epochs(leading, len(body), start, reload_every, head_blocker)
    if count == len(body) and head_blocker is None:
        return Plan(HEAD, "only the head trains, on cached head inputs", None, tuple(notes))
    if count == len(body):  # stateful layers in the head stage: cut below them instead
        notes.append(f"{head_blocker}, so the cache ends at {body[-1]}")
    if count == 0:
        if head_first:
            return _noted(head_first, notes)
        epoch = min(e for e, n in leading.items() if n == 0)
        return Plan(None, f"{body[0]} trains from epoch {epoch} under {strategy}: no stage stays "
                          "frozen for the whole fit, so there is no fixed output to cache", None,
                    tuple(notes))
    cut = body[count - 1]
    blocked = cut_blocker(cut)
    if blocked:
        return _noted(head_first or Plan(None, blocked), notes)
    prefix = Plan(cut, f"{', '.join(body[:count])} stay frozen; {', '.join(names[count:])} train "
                       f"on the cached output of {cut}")
    if head_first is None or cost is None:
        return _noted(prefix, notes)
    # Both would do (a gradual fit too short to thaw its first stages): take the one that skips
    # more backbone arithmetic. Each skips the forward pass up to its cut on the epochs it
    # serves, less the passes that build it.
    thaws = head_first.until
    saved = {HEAD: (thaws - start - builds) * cost(HEAD), cut: (len(leading) - builds) * cost(cut)}
    notes.append(f"per image, cached head inputs for the {thaws - start} head-only epochs skip "
                 f"{saved[HEAD] / 1e9:.3g} GFLOP, {cut}'s output for all {len(leading)} epochs "
                 f"{saved[cut] / 1e9:.3g} (each net of its build)")
    return _noted(head_first if saved[HEAD] > saved[cut] else prefix, notes)


def _head_only_epochs(leading: dict[int, int], n_body: int, start: int, reload_every: int,
                      head_blocker: str | None) -> tuple[Plan | None, list[str]]:
    """The plan that caches the head-only epochs before the first thaw (gradual unfreezing),
    when there are some and the trainer's reloads can switch back to images at that epoch."""
    thaws = min((e for e, n in leading.items() if n < n_body), default=None)
    if thaws is None or thaws <= start or head_blocker is not None:
        return None, []
    if reload_every and (thaws - start) % reload_every:
        return None, [f"the head-only epochs before epoch {thaws} could train on cached inputs "
                      f"with trainer.reload_dataloaders_every_n_epochs dividing {thaws - start}"]
    return Plan(HEAD, f"only the head trains until epoch {thaws}, on cached head inputs; images "
                      "from then on", thaws), []


def _noted(chosen: Plan, notes: list[str]) -> Plan:
    return Plan(chosen.cut, chosen.why, chosen.until, (*chosen.notes, *notes))

"""After the last session: the returned model on every rank, test losses, the results file, exports.

The paper's step 6, "return the best neural network(s)": the best member
(the last session's best, or with elitism the best ever) goes from the rank
that keeps it to every rank with `share_state`; rank 0 evaluates it on the
test split, and every rank adds its members' predictions to the population's
average, on the validation split (or the held-back part) and the test split.
With `--returns average`, or `auto` when the average scores better on
validation than the best-member rule (cross-validated), the run returns the
average instead: its losses are the average's, and `Result.returned_model()`
reads it from the results file on the rank that asks.  Nothing large is
gathered: every rank writes its own members' final weights to its own file,
rank 0 writes the results file (with virtual datasets over those files) and
best.pt, each top-K member's owner its file, while every rank's shard of the
last checkpoint is written in the background
(hsmpi.engine.observers.Checkpoints), complete before the run ends.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hsmpi import __version__
from hsmpi.algorithm.space import HParams, describe_space
from hsmpi.config import RETURNED
from hsmpi.engine.average import Average, Ensemble, PopulationAverage, population_average
from hsmpi.engine.batched import CPU_BATCHING
from hsmpi.engine.history import PHASES
from hsmpi.engine.member import Member
from hsmpi.engine.observers import Checkpoints
from hsmpi.engine.search import Search
from hsmpi.io import export
from hsmpi.io.files import DiskError, disk_error, fresh_folder_name
from hsmpi.io.results import hparam_array, part_file, write_part, write_results
from hsmpi.parallel import flatstate
from hsmpi.parallel.share import share_state


@dataclass
class Result:
    """What a run hands back (on every rank)."""

    best_model: torch.nn.Module  # the best member (what `returned_model()` is unless the average was returned)
    best_hparams: HParams  # the best member's
    best_val_loss: float  # the returned model's validation loss (with --holdout: on the held-back part)
    best_session: int  # 0-based session in which the best member was evaluated (-1: the initial weights)
    best_member: int
    test_loss: float  # the returned model's
    ensemble_test_loss: float  # the final population's averaged prediction
    history: dict[str, Any]  # the results file's `history/` group, on rank 0 (empty elsewhere)
    path: str | None  # the results file, on rank 0
    finite_model: bool = True  # False: no member ever had a finite validation loss (or objective)
    best_objective: float = math.nan  # the objective's value the returned member was judged on
    test_metrics: dict[str, float] = field(default_factory=dict)  # the task's metrics of it on the test split
    returned: str = "member"  # "member" (the best member), "average" (the population's averaged prediction) or
    # "greedy" (a weighted average of members chosen greedily on validation)
    member_test_loss: float = math.nan  # the best member's test loss, whichever was returned
    averaged: list[int] = field(default_factory=list)  # the members the returned average holds (else the plain one)
    returned_why: str = ""  # with --returns auto: why `returned` is what it is
    results_file: str = ""  # results.h5, on every rank: where `returned_model()` reads an average from
    task: Any = None

    def returned_model(self) -> torch.nn.Module:
        """The model the run returns: the best member, or (`returned` "average" or "greedy") the `Average` of
        the final population's members it holds, read by this rank from the results file's population weights
        (nothing is gathered for it; it holds every averaged member, so it is built only when asked for)."""
        if self.returned == "member":
            return self.best_model
        device = next(self.best_model.parameters()).device
        return Average.from_results(self.results_file, self.task, device)


def finish(search: Search, checkpoints: Checkpoints, log: Callable[[str], None], start: float,
           startup: float = 0.0) -> Result:
    """Evaluate, write results.h5 and the exports, complete the last checkpoint, say what the run found
    (collective)."""
    comm, config = search.comm, search.population.config
    result, record = returned_model(search)
    path = os.path.join(config.out, "results.h5")
    finite = bool(comm.bcast(record["finite_model"] if comm.is_root else None))
    result.finite_model = finite
    failed = _write_outputs(search, record, path, start, finite)
    if failed is None and comm.is_root:
        result.path = path
    final_error = None
    try:
        checkpoints.complete(search, results=path if failed is None else None)
    except DiskError as err:
        final_error = err
    if failed is not None:  # told with the checkpoint that is intact now
        raise checkpoints.disk_error(DiskError(errno.EIO, failed), "the results file", then=" to write the results")
    if final_error is not None:
        raise final_error
    if comm.is_root:
        metrics = "".join(f" | test {n} {v:.5g}" for n, v in result.test_metrics.items())
        mark = {w: " (returned)" if config.returns != "member" and result.returned == w else ""
                for w in ("member", "average", "greedy")}
        test = record["test"]
        greedy = (f" | greedy ensemble {test['greedy_loss']:.5g} ({test['greedy_members']} members, "
                  f"weights summing to {test['greedy_picks']}){mark['greedy']}" if "greedy_loss" in test else "")
        log(f"test loss: best member {result.member_test_loss:.5g} (member {result.best_member}, "
            f"{search.unit} {result.best_session + 1}){mark['member']} | population average "
            f"{result.ensemble_test_loss:.5g} ({test['ensemble_members']} members){mark['average']}{greedy}"
            f"{metrics}")
        if config.returns == "auto":
            log(f"returned: the {RETURNED[result.returned]} (--returns auto: {result.returned_why})")
        log(time_summary(record["history"]["time"], search.next_session, time.perf_counter() - start, startup))
        log(f"results: {path} ({time.perf_counter() - start:.1f}s in all)")
    return result


def _write_outputs(search: Search, record: dict[str, Any], path: str, start: float, finite: bool) -> str | None:
    """Every rank its members' weights, rank 0 the results file, best.pt and top.json, each top-K member's
    owner its file (collective); the first failure's message, the same on every rank, or None."""
    comm, pop = search.comm, search.population
    config = pop.config
    out = config.out

    def agreed(work: Callable[[], None], what: str) -> str | None:
        error = None
        try:
            work()
        except OSError as err:
            error = (err if isinstance(err, DiskError) else disk_error(err, what, out)).strerror
        return next((e for e in comm.allgather(error) if e), None)

    tag = comm.bcast(fresh_folder_name(len(search.schedule)) if comm.is_root else None)
    shapes = comm.bcast(record["shapes"] if comm.is_root else None)

    def weights() -> None:
        if pop.members:
            write_part(out, part_file(tag, comm.rank), pop.indices, [m.weights for m in pop.members], shapes)

    def results() -> None:
        if not comm.is_root:
            return
        meta = {"hsmpi_version": __version__, "torch_version": torch.__version__, "cpu_kernels": pop.kernels,
                "cpu_batching": CPU_BATCHING,
                "population": pop.size, "ranks": comm.size, "threads": pop.threads, "device_type": pop.device.type,
                "mpi": comm.library(), "wall_seconds": time.perf_counter() - start, "finite_model": finite}
        settings = dataclasses.replace(config, population=pop.size).to_dict()
        population = {**record["population"], "tag": tag, "shapes": shapes,
                      "parts": [(part_file(tag, r), list(b)) for r, b in enumerate(pop.blocks) if len(b)]}
        write_results(path, meta, settings, describe_space(search.space), record["history"], record["best"],
                      population, record["test"])

    top = min(config.export_top, pop.size)
    order = comm.bcast(export.top_order(record["population"]["score"], top) if comm.is_root and top else [])

    def exports() -> None:
        for place, i in enumerate(order, start=1):
            if i in pop.local:
                export.save_weights(export.top_file(out, place), pop.local[i].weights())
        if comm.is_root:
            export.write_described(out, record, order)

    for work, what in ((weights, "the population's weights"), (results, "the results file"),
                       (exports, "best.pt and the top-K files")):
        failed = agreed(work, what)
        if failed is not None:
            return failed
    return None


def returned_model(search: Search) -> tuple[Result, dict[str, Any]]:
    """The returned model to every rank, its test loss and the population's; on rank 0 the results record."""
    comm, pop, best = search.comm, search.population, search.best
    hp = comm.bcast(best.hparams if comm.is_root else None)
    session, member = best.session, best.member
    c = pop.config
    champion = Member.create(pop.task, member, hp, c.seed, pop.device, c.independent_init, c.batch_size)
    pop.writer.hold_buffer()  # the last checkpoint's writer takes the members' states through it first
    share_state(comm, pop.buffer, pop.owner(member), best.state, [_WeightsOf(champion)])
    tested = comm.bcast(champion.evaluate_all(pop.data["test"]) if comm.is_root else None)
    member_test = tested.pop("loss")
    average = population_average(search)
    record: dict[str, Any] = _record(search, champion, member_test, tested, average) if comm.is_root else {}
    judged = comm.bcast(record["best"]["val_loss"] if comm.is_root else None)
    returned, why = average.auto_choice() if c.returns == "auto" else (c.returns, "")
    kept = _returned_average(average, returned)
    if kept is None:
        returned = "member"
    val_loss, test_loss, metrics, score = judged, member_test, tested, best.score
    if kept is not None:
        val_loss, test_loss, score = kept.judged["loss"], kept.test["loss"], kept.score
        metrics = {n: v for n, v in kept.test.items() if n != "loss"}
    if comm.is_root:
        record["test"].update({"returned": returned, "returned_loss": test_loss})
        if why:
            record["test"]["returned_why"] = why
        if kept is not None:
            record["test"].update({"returned_metrics": metrics, "average_members": np.array(kept.members),
                                   "average_counts": np.array(kept.counts)})
            record["average"] = {"members": kept.members, "counts": kept.counts, "val_loss": float(val_loss)}
    result = Result(champion.model, dict(hp), float(val_loss), int(session), int(member), float(test_loss),
                    float(average.test.get("loss", math.nan)), record.get("history", {}), None,
                    best_objective=search.objective.value(score), test_metrics=metrics, returned=returned,
                    member_test_loss=float(member_test),
                    averaged=list(kept.members if kept is not None else average.members),
                    returned_why=why, results_file=os.path.join(c.out, "results.h5"), task=pop.task)
    return result, record


def _returned_average(average: PopulationAverage, returned: str) -> Ensemble | None:
    """The averaged model `returned` names ("average" or "greedy"), or None when the run returns its best member
    (or has no such average)."""
    if returned == "average" and average.members:
        return Ensemble(list(average.members), [1] * len(average.members), average.judged, average.test,
                        average.score)
    return average.greedy if returned == "greedy" else None


class _WeightsOf:
    """A receiver of a shared state that takes only its weights and buffers: the returned model is for
    evaluating and using, so it gets no optimizer state (two more copies of its weights, with Adam)."""

    def __init__(self, member: Member) -> None:
        self.member = member

    def header(self) -> flatstate.Header:
        return self.member.header()

    def pack(self, header: flatstate.Header, flat: torch.Tensor) -> None:
        self.member.pack(header, flat)

    def load_state(self, header: flatstate.Header, flat: torch.Tensor, host: torch.Tensor | None) -> None:
        flatstate.unpack_weights(header, flat, self.member.model)


def _record(search: Search, champion: Member, test_loss: float, test_metrics: dict[str, float],
            average: PopulationAverage) -> dict[str, Any]:
    """Rank 0: the results file's content as plain dicts of arrays (the population's weights are written
    by their owners; `shapes` says what one member's look like)."""
    h, names, best, objective = search.history, list(search.space), search.best, search.objective
    weights = champion.weights()
    record: dict[str, Any] = {
        "history": h.state_dict(),
        "best": {"val_loss": best.score, "session": best.session, "member": best.member,
                 "weights": weights, "hparams": dict(best.hparams)},
        "shapes": {k: (tuple(v.shape), v.dtype.name) for k, v in weights.items()},
        "population": {
            "hparams": {n: hparam_array([hp[n] for hp in search.hparams]) for n in names},
            "val_loss": h.val_loss[-1],
            "score": search.last_ranking(),  # the order of the top-K exports; not a dataset of its own
        },
        "test": {"best_loss": test_loss, "ensemble_loss": average.test.get("loss", math.nan),
                 "ensemble_members": len(average.members), "ensemble_val_loss": average.judged.get("loss", math.nan),
                 "member_val_cv": search.objective.value(average.member_cv), "judged_samples": average.samples,
                 "judged_classes": int(average.classes),
                 "member_val_median": search.objective.value(average.member_median)},
        "finite_model": any(math.isfinite(v) for v in h.winner_score),
    }
    if average.greedy is not None:
        g = average.greedy
        record["test"].update({"greedy_loss": g.test["loss"], "greedy_val_loss": g.judged["loss"],
                               "greedy_members": len(g.members), "greedy_picks": sum(g.counts)})
    if test_metrics:
        record["test"]["metrics"] = dict(test_metrics)
    if not objective.is_loss:  # `best/` follows the objective: its value, and the loss beside it
        session_loss = float(h.val_loss[best.session][best.member]) if best.session >= 0 else math.nan
        record["best"].update({"val_loss": session_loss, "objective": objective.name,
                               "direction": objective.direction, "objective_value": objective.value(best.score)})
        record["population"]["objective"] = np.array([objective.value(v) for v in h.last_scores()])
    return record


def time_summary(times: dict[str, np.ndarray], first: int, wall: float, startup: float) -> str:
    """Rank 0's share of this process's wall time per phase, and what was neither training nor validation.

    Only the sessions this process ran count (`first` on: a resumed run's
    earlier sessions were another process's time); `startup` is PyTorch's own
    one-time start-up, which any PyTorch program pays, named apart from hsmpi's.
    """
    spent = {p: float(np.nansum(values[first:, 0])) for p, values in times.items() if p in PHASES}
    work = spent["train"] + spent["val"]
    other = max(0.0, wall - sum(spent.values()) - startup)
    parts = ", ".join(f"{p} {spent[p] / wall:.1%}" for p in ("select", "scatter", "bcast", "checkpoint"))
    return (f"time (rank 0): training and validation {work / wall:.1%} | not {1 - work / wall:.1%}: {parts}, "
            f"torch start-up {startup / wall:.1%}, setup and finish {other / wall:.1%}")

"""The Hypersearch loop: train, evaluate, select, share, resample, session after session.

`run_sessions` is the whole loop; each step is a method of `Search`, which
holds the search's state on this rank.  Everything else (the lineage log,
stop requests, checkpoints, the session line) hangs off the loop as observers
called after each session (hsmpi.engine.observers).

Who holds what: every rank trains its own members (`population`).  Rank 0
holds every member's current hyperparameters, the random streams they are
drawn from and the history; it decides the plan.  The donors' owners
broadcast their state (hsmpi.parallel.share); the best state so far is kept
by the rank that owns that member, and every rank writes its own members'
states to checkpoints (hsmpi.engine.snapshot, written by
hsmpi.engine.observers.Checkpoints).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from hsmpi.algorithm.plan import BEST_EVER, RUNG, Plan, is_new_best, plan_session, sampler_for
from hsmpi.algorithm.sampling import TPE, make_sampler
from hsmpi.algorithm.selection import Islands, Prune, make_selection, tie_broken
from hsmpi.algorithm.space import HParams, sample_space
from hsmpi.algorithm.streams import SearchStreams
from hsmpi.engine import snapshot
from hsmpi.engine.history import PHASES, Best, History
from hsmpi.engine.population import Population, ProgressBar
from hsmpi.parallel.share import Saved, share_state
from hsmpi.schedule import session_epochs, with_rungs
from hsmpi.tasks import task_objective


def run_sessions(search: Search, observers: Sequence[Observer]) -> SessionEnd | None:
    """Every session still to run; the session that a stop request ended the run after, or None."""
    for k in range(search.next_session, len(search.schedule)):
        clock = Clock()
        with clock("train"):
            train = search.train(k)                                                     # 1. train M/m epochs
        with clock("val"):
            val = search.evaluate(train)                                                # 2. validation
        with clock("select"):
            plan = search.select(k, train, val)                                         # 3. who copies whom
        with clock("bcast"):
            search.share(k, plan)                                                       # 4. donors' states
        with clock("scatter"):
            search.resample(plan)                                                       # 5. new hyperparameters
        search.record_times(clock.times)
        end = SessionEnd(k, plan, clock.times, last=k == len(search.schedule) - 1)
        for observer in observers:
            observer.session_ended(search, end)
        if end.stop:
            return end
    return None


class Clock:
    """This rank's seconds per phase of one session (PHASES order)."""

    def __init__(self) -> None:
        self.times = np.zeros(len(PHASES))

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[PHASES.index(phase)] += time.perf_counter() - start


@dataclass
class SessionEnd:
    """What observers see after session k (0-based), and what they say back (`stop`, `saved`)."""

    k: int
    plan: Plan
    times: np.ndarray
    last: bool
    stop: int = 0  # the signal number that asked to stop (-1: --stop-after), 0: go on
    saved: bool = False  # a checkpoint holds this session
    written: float = 0.0  # seconds the slowest rank's shard of the checkpoint completed here took to write
    path: str = ""  # the checkpoint's path, once one has been written


@dataclass
class Evaluation:
    """Step 2's numbers for this rank's members: the validation loss, the task's metrics, and the score that
    selection compares (the objective, signed so that lower is better; +inf for a member that diverged)."""

    loss: list[float]
    metrics: dict[str, list[float]]
    score: list[float]

    @classmethod
    def mean(cls, evaluations: Sequence[Evaluation]) -> Evaluation:
        """Each member's mean over several evaluations (--smooth); one that diverged in any stays +inf."""
        def mean(rows: Sequence[Sequence[float]]) -> list[float]:
            return [float(np.mean(column)) for column in zip(*rows)]
        first = evaluations[0]
        return cls(mean([e.loss for e in evaluations]),
                   {n: mean([e.metrics[n] for e in evaluations]) for n in first.metrics},
                   mean([e.score for e in evaluations]))


class Observer(Protocol):
    def session_ended(self, search: Search, end: SessionEnd) -> None: ...


@dataclass
class Search:
    """The search's state on one rank (rank 0's parts are empty or None elsewhere)."""

    population: Population
    schedule: list[int]  # epochs per step: the sessions, each split in two at its rung with --prune-at
    rungs: list[bool] = field(default_factory=list)  # which steps end at a rung (all False without --prune-at)
    next_session: int = 0
    pending_selection: bool = False  # resumed after a last session, which had no selection step
    hparams: list[HParams] = field(default_factory=list)  # rank 0: every member's current values
    streams: SearchStreams | None = None  # rank 0
    history: History = field(default_factory=History)  # rank 0
    best: Best = field(default_factory=Best)  # its record everywhere, its values on rank 0, its state on its owner
    last_sources: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    holdout_losses: dict[int, float] = field(default_factory=dict)  # this session's, of local members
    earlier: list[Evaluation] = field(default_factory=list)  # --smooth: this session's evaluations so far
    done: int = 0  # epochs trained so far (every rank)
    trained: int = 0  # epochs this session trained
    evaluated: Evaluation | None = None  # --plateau: the evaluation after the epoch that ended the session

    def __post_init__(self) -> None:
        c = self.population.config
        self.comm = self.population.comm
        self.space = self.population.task.space
        self.sampler = make_sampler(c.sampler, c.radius, c.resample_probability, c.candidates, c.explore)
        self.selection = make_selection(c.select, c.truncation_fraction)
        self.islands = Islands(c.islands, c.migrate_every) if c.islands > 1 else None
        self.prune = Prune(c.prune_fraction)
        self.rungs = self.rungs or [False] * len(self.schedule)
        self.objective = task_objective(self.population.task, c.objective, c.direction)
        self.ties_by_loss = c.tie_break == "loss" and not self.objective.is_loss
        self.history.objective = self.objective

    @property
    def unit(self) -> str:
        """What the loop's steps are called to the user: sessions, or steps with rungs (two a session)."""
        return "step" if any(self.rungs) else "session"

    @classmethod
    def start(cls, population: Population, schedule: list[int] | None = None) -> Search:
        """Step 1: sample S hyperparameter sets, one from each member's own stream, and build the members.

        Before any training, the best state is member 0's initial one (every member's, with shared weights).
        `schedule`: epochs per session (a resumed run's), else the settings'.
        """
        comm, c = population.comm, population.config
        steps, rungs = with_rungs(schedule or session_epochs(c.epochs, c.sessions, c.session_growth), c.prune_at)
        search = cls(population, steps, rungs)
        if comm.is_root:
            search.streams = SearchStreams(c.seed, population.size)
            search.hparams = [sample_space(search.space, rng) for rng in search.streams.hparams]
        population.create_members(comm.scatter(population.per_rank(search.hparams) if comm.is_root else None))
        search.best = Best(member=0, hparams=dict(search.hparams[0]) if comm.is_root else {})
        if 0 in population.local:  # its owner keeps the state
            search.best.state = Saved.of(population.local[0], population.buffer)
        return search

    # ---- the steps -----------------------------------------------------------------------------
    def train(self, k: int) -> list[float]:
        """Step 1: this rank's members train session k's epochs (rank 0 shows a bar on a terminal with
        --progress); each one's mean training loss of its last epoch."""
        pop = self.population
        epochs = self.budget(k)
        bar = None
        if pop.config.progress and self.comm.is_root and sys.stderr.isatty():
            bar = ProgressBar(k, len(self.schedule), len(pop.members) * epochs, self.unit)
        smooth = min(pop.config.smooth, epochs)
        self.earlier, self.evaluated = [], None
        try:
            if pop.config.plateau is not None and k < len(self.schedule) - 1:
                train = self._train_to_plateau(epochs, pop.config.plateau, bar)
            else:
                train = pop.train(epochs - smooth + 1, bar)
                for _ in range(smooth - 1):  # --smooth: evaluated after each of the last epochs too
                    self.earlier.append(self._evaluate(train))
                    train = pop.train(1, bar)
                self.trained = epochs
            self.done += self.trained
            return train
        finally:
            if bar is not None:
                bar.close()

    def budget(self, k: int) -> int:
        """Session k's epochs at most: its share of M; with --plateau, its share of the epochs still to run,
        split over the sessions still to run as the schedule's split is (so the epochs an early end saves
        go to all later sessions, and the last trains all that is left)."""
        c = self.population.config
        if c.plateau is None:
            return self.schedule[k]
        return session_epochs(c.epochs - self.done, len(self.schedule) - k, c.session_growth)[0]

    def _train_to_plateau(self, epochs: int, plateau: float, bar: ProgressBar | None) -> list[float]:
        """--plateau: up to `epochs` epochs, one at a time, validated after each, until the best member's
        score improved by less than the fraction `plateau` in an epoch (after 2 at least).  Every rank
        decides alike, on the allreduced best score."""
        pop, before = self.population, math.inf
        for n in range(1, epochs + 1):
            train = pop.train(1, bar)
            self.trained = n
            if n == epochs:
                return train  # step 2 validates it
            evaluation = self._evaluate(train)
            best, _ = self.comm.allreduce_minloc(evaluation.score, pop.indices)
            if n >= 2 and not _improved(before, best, plateau):
                self.evaluated = evaluation
                return train
            before = best
        raise AssertionError("unreachable: a session trains at least one epoch")

    def evaluate(self, train: Sequence[float]) -> Evaluation:
        """Step 2: the validation loss and metrics, and the objective's score (with --smooth each member's
        mean over the session's last evaluations; with --holdout also the held-back part's score after
        the session, kept for `share` to judge the winner on)."""
        pop = self.population
        ev = self.evaluated or self._evaluate(train)
        self.evaluated = None
        if self.earlier:  # --smooth: each member's mean over the session's last evaluations
            ev = Evaluation.mean(self.earlier + [ev])
            self.earlier = []
        if "holdout" in pop.data:
            held = pop.evaluate("holdout", train)
            self.holdout_losses = {i: h if math.isfinite(v) else math.inf
                                   for i, h, v in zip(pop.indices, self._scores(held, train), ev.score)}
        return ev

    def _evaluate(self, train: Sequence[float]) -> Evaluation:
        values = self.population.evaluate("val", train)
        return Evaluation([v["loss"] for v in values], {n: [v[n] for v in values] for n in (values or [{}])[0]
                                                        if n != "loss"}, self._scores(values, train))

    def _scores(self, values: Sequence[dict[str, float]], train: Sequence[float]) -> list[float]:
        """Lower-is-better scores of the objective; +inf for a member whose training diverged."""
        if self.objective.is_loss:
            return [v["loss"] for v in values]
        name = self.objective.name
        return [self.objective.score(v[name]) if math.isfinite(t) else math.inf for v, t in zip(values, train)]

    def select(self, k: int, train: Sequence[float], val: Evaluation, replan: bool = False) -> Plan:
        """Step 3: the winner (one MINLOC), and rank 0's plan of who copies whom, to every rank.

        Rank 0 records the session first (`replan`: a finished run extended on
        resume plans its last session again; it is recorded already).
        """
        comm, pop = self.comm, self.population
        value, winner = self._winner(val)
        parts = comm.gather((train, val))
        plan = None
        if comm.is_root:
            assert parts is not None and self.streams is not None
            joined = lambda rows: np.concatenate([np.asarray(r, dtype=float) for r in rows])  # noqa: E731
            scores, loss = joined([v.score for _, v in parts]), joined([v.loss for _, v in parts])
            if self.ties_by_loss:
                scores = tie_broken(scores, loss)  # the rules see the order by (score, loss, index)
            if not replan:
                self.history.add(train_loss=joined([t for t, _ in parts]), val_loss=loss, winner=winner,
                                 winner_loss=value if self.objective.is_loss else float(loss[winner]),
                                 winner_score=value, hparams=self.hparams, epochs=self.trained,
                                 metrics={n: joined([v.metrics[n] for _, v in parts]) for n in val.metrics})
            seen = self.history.observations() if isinstance(self.sampler, TPE) else []
            rung = self.rungs[k]
            plan = plan_session(
                scores=scores, winner=winner, winner_score=value, hparams=self.hparams,
                best_hparams=self.best.hparams, last=k == len(self.schedule) - 1,
                selection=self.prune if rung else self.selection,
                sampler=sampler_for(self.sampler, k, len(self.schedule), pop.config.radius, pop.config.radius_final,
                                    seen),
                space=self.space, selection_rng=self.streams.selection, hparam_rngs=self.streams.hparams,
                islands=self.islands, session=None if rung else k - sum(self.rungs[:k]))
            if rung and not plan.note:  # (a rung where every member diverged keeps ALL_DIVERGED's note)
                pruned = [i for i, s in enumerate(plan.sources) if s != i]
                donor = "their island's best" if self.islands else f"member {winner}"
                who = (f"member {pruned[0]} restarts" if len(pruned) == 1 else
                       f"members {', '.join(map(str, pruned))} restart" if pruned else "no member restarts")
                plan = replace(plan, note=f"{RUNG}{who}" + (f" from {donor}" if pruned else ""))
            self.history.set_plan(plan.sources, plan.note)
        sources, note = comm.bcast((plan.sources, plan.note) if plan else None)
        self.last_sources = np.asarray(sources)
        # every rank: the plan without the new values, which only rank 0 needs until `resample`
        return plan if plan is not None else Plan(np.asarray(sources), {}, note, winner, value)

    def _winner(self, val: Evaluation) -> tuple[float, int]:
        """The lowest score and its member (one MINLOC); with --tie-break loss, of the members with that score
        the one with the lowest validation loss (a second MINLOC), else the lowest index."""
        value, winner = self.comm.allreduce_minloc(val.score, self.population.indices)
        if self.ties_by_loss and math.isfinite(value):
            tied = [loss if score == value else math.inf for score, loss in zip(val.score, val.loss)]
            loss, first = self.comm.allreduce_minloc(tied, self.population.indices)
            if math.isfinite(loss):  # (tied members whose loss is not finite keep the lowest index)
                winner = first
        return value, winner

    def last_ranking(self) -> np.ndarray:
        """Rank 0: the last session's scores as its selection ordered them (with --tie-break loss, each
        member's place by score, then validation loss), for the top-K exports and --average-top."""
        scores = self.history.last_scores()
        return tie_broken(scores, self.history.val_loss[-1]) if self.ties_by_loss else scores

    def share(self, k: int, plan: Plan) -> None:
        """Step 4: each donor's state, from its owner, to the members that copy it; the best so far.

        Every rank decides alike whether this session's winner becomes the best
        (with --holdout judged on the held-back part, which no session saw); if
        so the winner's owner keeps a copy of its state (the bytes it sent, when
        the winner was a donor).
        """
        value, winner = plan.winner_score, plan.winner
        pop, c = self.population, self.population.config
        pop.writer.hold_buffer()  # a checkpoint's writer may still be using it
        judged = self._holdout_of(winner) if c.holdout > 0 and math.isfinite(value) else value
        new_best = is_new_best(judged, self.best.score, c.elitism)
        keep_on = pop.owner(winner) if new_best else None
        kept = None
        for donor in plan.donors:
            copy = self._send(donor, plan.sources, keep_on if donor == winner else None)
            kept = copy if donor == winner else kept
        if new_best:  # its record everywhere, its values on rank 0, its state on its owner
            hp = dict(self.history.hparams[k][winner]) if self.comm.is_root else {}
            if self.comm.rank == keep_on and kept is None:  # not sent this session (the last one): copy it
                kept = Saved.of(pop.local[winner], pop.buffer)
            self.best = Best(judged, k, winner, hp, kept)

    def resample(self, plan: Plan) -> None:
        """Step 5: every member that copied another trains on with the new values rank 0 drew for it."""
        comm, pop = self.comm, self.population
        if comm.is_root:
            for i, hp in plan.new_hparams.items():
                self.hparams[i] = hp
        mine = comm.scatter(pop.split(plan.new_hparams) if comm.is_root else None)
        for i, hp in sorted(mine.items()):
            pop.local[i].set_hparams(hp)

    def _send(self, donor: int, sources: np.ndarray, keep_on: int | None = None) -> Saved | None:
        """One donor's state to every rank (collective); rank `keep_on` keeps a copy of the bytes."""
        pop = self.population
        root = pop.owner(self.best.member if donor == BEST_EVER else donor)
        source = self.best.state if donor == BEST_EVER else pop.local.get(donor)
        receivers = pop.receivers([i for i, s in enumerate(sources) if s == donor and i in pop.local and i != donor])
        return share_state(self.comm, pop.buffer, root, source, receivers, keep_on)

    def _holdout_of(self, member: int) -> float:
        """The member's loss on the held-back part, from its owner to every rank (inf when not known: a
        session re-planned on resume was judged before the checkpoint)."""
        owner = self.population.owner(member)
        mine = self.holdout_losses.get(member, math.inf) if self.comm.rank == owner else None
        self.holdout_losses = {}
        return float(self.comm.bcast(mine, root=owner))

    def load_state_dict(self, ckpt: dict[str, Any] | None, path: str = "") -> None:
        """Continue from the checkpoint at `path`, on any layout (collective; `ckpt`, its manifest, is read
        on rank 0): hsmpi.engine.snapshot.restore."""
        snapshot.restore(self, ckpt, path)

    def record_times(self, times: np.ndarray) -> None:
        """Every rank's phase times for the session, to rank 0's history."""
        gathered = self.comm.gather(times)
        if self.comm.is_root:
            self.history.add_times(np.array(gathered))

    def replan(self) -> None:
        """A finished run extended on resume: its last session gets the selection step it skipped."""
        comm, pop, k = self.comm, self.population, self.next_session - 1
        h = self.history
        rows = comm.bcast((h.train_loss[-1], h.val_loss[-1], h.last_scores()) if comm.is_root else None)
        train = [float(rows[0][i]) for i in pop.indices]
        val = Evaluation([float(rows[1][i]) for i in pop.indices], {}, [float(rows[2][i]) for i in pop.indices])
        clock = Clock()
        with clock("select"):
            plan = self.select(k, train, val, replan=True)
        with clock("bcast"):
            self.share(k, plan)
        with clock("scatter"):
            self.resample(plan)
        self.record_times(clock.times)


def _improved(before: float, after: float, fraction: float) -> bool:
    """Did the best score (lower is better) fall by at least `fraction` of its size?  A first finite score
    counts as improved; a score that is not finite never does."""
    if not math.isfinite(after):
        return False
    return not math.isfinite(before) or before - after >= fraction * abs(before) and after < before

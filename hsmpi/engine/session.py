"""The Hypersearch loop: train -> evaluate -> select -> share -> resample.

Talks only to a `Comm`.  Rank 0 owns every hyperparameter stream and the
selection stream (keyed by member index and run seed) and decides who copies
whom; the ranks holding donors broadcast their state as one flat buffer.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset, TensorDataset

from hsmpi.algorithm.sampling import URS, Sampler, make_sampler
from hsmpi.algorithm.selection import make_selection
from hsmpi.algorithm.space import HParams, SpaceError, check_hparams, sample_space
from hsmpi.config import Config, layout, resolve_population, session_epochs
from hsmpi.engine import vectorize
from hsmpi.engine.data import Data
from hsmpi.engine.device import pick_device, set_threads
from hsmpi.engine.member import HPARAMS, SELECTION, Member, derive_seed
from hsmpi.parallel import flatstate
from hsmpi.parallel.comm import SerialComm
from hsmpi.tasks import task_loss

PHASES = ("train", "val", "select", "scatter", "bcast", "checkpoint")
BEST_EVER = -1  # a source index meaning "the best state seen so far", held by rank 0


class SetupError(ValueError):
    """A problem with the task or settings found before training; every rank raises it."""


@dataclass
class Best:
    """The best member ever seen on validation (elitism), kept on rank 0."""

    val_loss: float = math.inf
    session: int = -1
    member: int = 0
    hp: HParams = field(default_factory=dict)
    header: flatstate.Header | None = None
    state: np.ndarray | None = None


@dataclass
class History:
    """Per-session records, filled on rank 0 (S columns are member indices)."""

    train_loss: list[np.ndarray] = field(default_factory=list)
    val_loss: list[np.ndarray] = field(default_factory=list)
    winner: list[int] = field(default_factory=list)
    winner_loss: list[float] = field(default_factory=list)
    sources: list[np.ndarray] = field(default_factory=list)
    hparams: list[list[HParams]] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    time: list[np.ndarray] = field(default_factory=list)  # (ranks, phases) per session
    note: list[str] = field(default_factory=list)


def agree(comm: SerialComm, error: str | None) -> None:
    """Raise SetupError on every rank if any rank found a problem (rank order decides which is told)."""
    errors = [e for e in comm.allgather(error) if e]
    if errors:
        raise SetupError(errors[0])


def _check_model(task: Any, member: Member, data: Data, split: str) -> None:
    """One forward pass on two items: the loss must be a finite scalar and shapes must match."""
    x, y = data.sample(2)
    with torch.no_grad():
        out = member.model(x)
        if getattr(task, "loss", None) is None and tuple(out.shape) != tuple(y.shape):
            raise SetupError(f"the model's output shape {tuple(out.shape)} does not match the {split} targets' "
                             f"shape {tuple(y.shape)} (mean squared error needs equal shapes)")
        loss = task_loss(task, out, y)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise SetupError(f"the task's loss must return a scalar tensor, but returned {loss!r:.80}")


class Search:
    """The state of one Hypersearch job on one rank."""

    def __init__(self, config: Config, task: Any, comm: SerialComm, log: Callable[[str], None]) -> None:
        self.config = config
        self.task = task
        self.comm = comm
        self.log = log if comm.is_root else (lambda _: None)
        self.space = task.space
        self.sampler = make_sampler(config.sampler, config.radius, config.resample_probability)
        self.selection = make_selection(config.select, config.truncation_fraction)
        self.population = 0
        self.blocks: list[range] = []
        self.members: list[Member] = []
        self.hps: list[HParams] = []  # rank 0: every member's current hyperparameters
        self.hp_rngs: list[np.random.Generator] = []
        self.sel_rng = np.random.default_rng(derive_seed(config.seed, SELECTION))
        self.schedule = session_epochs(config.epochs, config.sessions)
        self.history = History()
        self.best = Best()  # its state lives on rank 0 only
        self.best_val_loss = math.inf  # the same on every rank (on the held-back part with --holdout)
        self.holdout_losses: dict[int, float] = {}  # this session's losses of local members on the held-back part
        self.device = torch.device("cpu")
        self.buffer = flatstate.Buffer(self.device)
        self.data: dict[str, Data] = {}
        self.threads = 0
        self._told: set[str] = set()  # fallback reasons already reported
        self.next_session = 0  # where the loop starts (later than 0 when resumed)
        self.pending_selection = False  # resumed after a last session that had no selection step
        self.last_sources = np.zeros(0, dtype=np.int64)  # every rank: the last plan
        self.donor_states: dict[int, tuple[flatstate.Header, np.ndarray]] = {}  # rank 0: states sent this session
        self.last_donors: set[int] = set()

    # ---- setup -------------------------------------------------------------
    def setup(self) -> None:
        """Everything before the first session; user errors surface here on every rank at once."""
        c, comm = self.config, self.comm
        error = None
        try:
            self.population = resolve_population(c, comm.size)
            self.device = pick_device(c.device, comm.local_rank)
        except ValueError as err:
            error = str(err)
        agree(comm, error)
        self.blocks = layout(self.population, comm.size)
        self.threads = set_threads(c.threads, comm.local_size)
        self.buffer = flatstate.Buffer(self.device)
        agree(comm, self._load_data())
        if comm.is_root:
            self.hp_rngs = [np.random.default_rng(derive_seed(c.seed, HPARAMS, i)) for i in range(self.population)]
            self.hps = [sample_space(self.space, rng) for rng in self.hp_rngs]
        mine = comm.scatter(self._per_rank(self.hps) if comm.is_root else None)
        agree(comm, self._build_members(mine))
        if comm.is_root:  # before any training, the best state is the shared initial one
            m0 = self.members[0]
            header = m0.header()
            self.best = Best(hp=dict(m0.hp), header=header, member=0, state=self._pack(m0, header).copy())

    def _load_data(self) -> str | None:
        try:
            splits = self.task.data(self.config.seed)
            if not isinstance(splits, (tuple, list)) or len(splits) != 3:
                return f"the task's data() must return (train, val, test), but returned {type(splits).__name__}"
            for name, ds in zip(("train", "val", "test"), splits):
                if not hasattr(ds, "__len__") or not hasattr(ds, "__getitem__"):
                    return f"the task's {name} split is not a torch Dataset: {type(ds).__name__}"
                if len(ds) == 0:
                    return f"the task's {name} split is empty"
                self.data[name] = Data(ds, self.device)
            if self.config.holdout > 0:
                error = self._hold_back(splits[1])
                if error:
                    return error
            x0, y0 = self.data["train"].sample(1)
            for name in ("val", "test"):
                x, y = self.data[name].sample(1)
                if x.shape[1:] != x0.shape[1:] or y.shape[1:] != y0.shape[1:]:
                    return (f"the task's {name} split has inputs {tuple(x.shape[1:])} / targets {tuple(y.shape[1:])} "
                            f"but train has {tuple(x0.shape[1:])} / {tuple(y0.shape[1:])}")
        except Exception as err:  # a user's task: report what it raised, once
            return f"the task's data() failed: {type(err).__name__}: {err}"
        return None

    def _hold_back(self, val: Any) -> str | None:
        """--holdout: the validation split's last part judges the returned model only, never a session."""
        n = len(val)
        held = int(round(self.config.holdout * n))
        if held < 1 or held >= n:
            return (f"holdout {self.config.holdout} of a validation split of {n} items leaves "
                    f"{n - held} for selection and {held} held back; both need at least one")
        parts: tuple[Any, Any]
        if isinstance(val, TensorDataset):
            parts = (TensorDataset(*(t[:n - held] for t in val.tensors)),
                     TensorDataset(*(t[n - held:] for t in val.tensors)))
        else:
            parts = Subset(val, range(n - held)), Subset(val, range(n - held, n))
        self.data["val"], self.data["holdout"] = Data(parts[0], self.device), Data(parts[1], self.device)
        return None

    def _build_members(self, mine: dict[int, HParams]) -> str | None:
        c = self.config
        try:
            for i, hp in sorted(mine.items()):
                check_hparams(self.space, hp)
                try:
                    member = Member.create(self.task, i, hp, c.seed, self.device, c.independent_init, c.batch_size)
                except Exception as err:
                    return f"the task rejected member {i}'s hyperparameters {hp}: {type(err).__name__}: {err}"
                self.members.append(member)
            if self.members:
                for split in ("train", "val", "test"):
                    _check_model(self.task, self.members[0], self.data[split], split)
        except (SetupError, SpaceError) as err:
            return str(err)
        except Exception as err:
            return f"a first forward pass of the task's model failed: {type(err).__name__}: {err}"
        return None

    def _per_rank(self, values: list[Any]) -> list[dict[int, Any]]:
        return [{i: values[i] for i in block} for block in self.blocks]

    def owner(self, member: int) -> int:
        return next(r for r, block in enumerate(self.blocks) if member in block)

    # ---- one session -------------------------------------------------------
    def run_session(self, k: int) -> tuple[float, int, str, np.ndarray]:
        """Train every local member, pick the winner, share its state, resample.

        Returns the winner's loss and index, the session's note and this rank's phase times.
        """
        train, val, times = self.train_local(k)
        return self.select_and_share(k, train, val, times)

    def train_local(self, k: int) -> tuple[list[float], list[float], np.ndarray]:
        """Session k's training and validation of this rank's members (no communication)."""
        times = np.zeros(len(PHASES))
        t = time.perf_counter()
        batched = self.vectorized()
        tick = self._progress(k)
        if batched:
            train = vectorize.train(self.members, self.data["train"], self.schedule[k], tick)
        else:
            train = [m.train(self.data["train"], self.schedule[k], tick) for m in self.members]
        if tick is not None:
            sys.stderr.write("\r" + " " * 60 + "\r")
        times[0] = time.perf_counter() - t
        t = time.perf_counter()
        if batched:
            val = vectorize.evaluate(self.members, self.data["val"])
        else:
            val = [m.evaluate(self.data["val"]) for m in self.members]
        val = [v if math.isfinite(tl) else math.inf for v, tl in zip(val, train)]
        if "holdout" in self.data:
            held = (vectorize.evaluate(self.members, self.data["holdout"]) if batched
                    else [m.evaluate(self.data["holdout"]) for m in self.members])
            self.holdout_losses = {m.index: h if math.isfinite(v) else math.inf
                                   for m, h, v in zip(self.members, held, val)}
        times[1] = time.perf_counter() - t
        return train, val, times

    def _progress(self, k: int) -> Callable[[], None] | None:
        """Rank 0's live bar for session k (member-epochs of its own members), on a terminal only."""
        if not (self.config.progress and self.comm.is_root and sys.stderr.isatty()):
            return None
        total, done = len(self.members) * self.schedule[k], [0]

        def tick() -> None:
            done[0] += 1
            filled = int(30 * done[0] / total)
            sys.stderr.write(f"\rsession {k + 1}/{len(self.schedule)} [{'#' * filled}{'.' * (30 - filled)}] "
                             f"{done[0]}/{total} member-epochs on rank 0")
            sys.stderr.flush()
        return tick

    def vectorized(self) -> bool:
        """Train this session's members as one batched model?  Says once (rank 0) why not, when asked for."""
        mode = self.config.vectorize
        if mode == "off" or (mode == "auto" and self.device.type != "cuda"):
            return False
        reason = vectorize.reason_not_to(self.members, self.data["train"])
        if reason and reason not in self._told:
            self._told.add(reason)
            self.log(f"vectorize: training one member at a time: {reason}")
        return reason is None

    def select_and_share(self, k: int, train: list[float], val: list[float], times: np.ndarray,
                         replan: bool = False) -> tuple[float, int, str, np.ndarray]:
        """MINLOC over validation losses, rank 0's plan, the hyperparameter scatter, the state broadcasts.

        `replan`: session k was run as the last one and is now followed by more
        (a finished run extended on resume): plan again instead of recording it.
        """
        comm = self.comm
        t = time.perf_counter()
        value, winner = comm.allreduce_minloc(val, [m.index for m in self.members])
        losses = comm.gather((train, val))
        last = k == len(self.schedule) - 1
        sources, new_hps, note = self._plan(k, losses, value, winner, last, replan)
        sources = comm.bcast(sources)
        self.last_sources = np.asarray(sources)
        self.donor_states = {}
        times[2] = time.perf_counter() - t

        t = time.perf_counter()
        mine: dict[int, HParams] = comm.scatter(self._per_rank(new_hps) if comm.is_root else None)
        times[3] = time.perf_counter() - t

        t = time.perf_counter()
        # Every rank knows both numbers, so every rank agrees.  Without elitism the
        # best is simply the latest finite winner (the last session's, at the end).
        # With --holdout the winner is judged on the held-back part, which no
        # session's selection has seen.
        judged = self._holdout_of(winner) if self.config.holdout > 0 and math.isfinite(value) else value
        new_best = judged < self.best_val_loss or (not self.config.elitism and math.isfinite(judged))
        if new_best:
            self.best_val_loss = judged
        donors = sorted({int(s) for i, s in enumerate(sources) if s != i} | ({winner} if new_best else set()))
        self.last_donors = set(donors)  # every rank: rank 0 holds a copy of each of these states
        for donor in donors:
            self._share(donor, sources, mine, winner, new_best, judged, k)
        times[4] = time.perf_counter() - t
        return value, winner, note, times

    def _holdout_of(self, member: int) -> float:
        """The member's loss on the held-back part, from its owner to every rank (inf when not known:
        a session re-planned on resume was judged before the checkpoint)."""
        owner = self.owner(member)
        mine = self.holdout_losses.get(member, math.inf) if self.comm.rank == owner else None
        self.holdout_losses = {}
        return float(self.comm.bcast(mine, root=owner))

    def record_times(self, times: np.ndarray, replan: bool = False) -> None:
        """Every rank's phase times for the session to rank 0's history."""
        all_times = self.comm.gather(times)
        if self.comm.is_root:
            if replan and self.history.time:
                self.history.time[-1] = self.history.time[-1] + np.array(all_times)
            else:
                self.history.time.append(np.array(all_times))

    def _plan(self, k: int, losses: Any, value: float, winner: int, last: bool, replan: bool = False
              ) -> tuple[np.ndarray | None, list[HParams], str]:
        """Rank 0: record the session, choose sources and draw new hyperparameters."""
        if not self.comm.is_root:
            return None, [], ""
        train = np.concatenate([np.asarray(t, dtype=float) for t, _ in losses])
        val = np.concatenate([np.asarray(v, dtype=float) for _, v in losses])
        h = self.history
        if replan:  # the session is recorded already; only its plan changes
            h.sources.pop()
            h.note.pop()
        else:
            h.train_loss.append(train)
            h.val_loss.append(val)
            h.winner.append(winner)
            h.winner_loss.append(value)
            h.hparams.append([dict(hp) for hp in self.hps])
            h.epochs.append(self.schedule[k])
        note = ""
        if last:
            sources = np.arange(self.population)
        elif not math.isfinite(value):
            note = "every member diverged: restarting all from the best state so far"
            sources = np.full(self.population, BEST_EVER)
        else:
            sources = self.selection.plan(val, winner, self.sel_rng)
        h.sources.append(sources.copy())
        h.note.append(note)
        new_hps = list(self.hps)
        sampler = self.sampler_after(k)
        for i, s in enumerate(sources):
            if s != i:
                base = self.best.hp if s == BEST_EVER else self.hps[s]
                new_hps[i] = sampler.neighbour(self.space, base, self.hp_rngs[i])
        self.hps = new_hps
        return sources, new_hps, note

    def sampler_after(self, k: int) -> Sampler:
        """The sampler for the draws after session k (0-based): urs's box shrinks when radius_final is set.

        The half-width goes geometrically from `radius` (after the first
        session) to `radius_final` (after the last session that draws).
        """
        c = self.config
        if c.radius_final is None or not isinstance(self.sampler, URS):
            return self.sampler
        draws = len(self.schedule) - 1  # sessions followed by a draw
        t = min(k, draws - 1) / (draws - 1) if draws > 1 else 0.0
        return URS(radius=c.radius * (c.radius_final / c.radius) ** t)

    def _pack(self, member: Member, header: flatstate.Header) -> np.ndarray:
        self.buffer.ensure(header.nbytes)
        member.pack(header, self.buffer.device_view())
        self.buffer.to_host(header.nbytes)
        return self.buffer.array(header.nbytes)

    def _share(self, donor: int, sources: np.ndarray, mine: dict[int, HParams],
               winner: int, new_best: bool, value: float, k: int) -> None:
        """Broadcast one donor's state with one Bcast; local members whose source it is adopt it."""
        comm = self.comm
        root = 0 if donor == BEST_EVER else self.owner(donor)
        local = {m.index: m for m in self.members}
        header = None
        if comm.rank == root:
            header = self.best.header if donor == BEST_EVER else local[donor].header()
        header = comm.bcast(header, root=root)
        assert header is not None
        self.buffer.ensure(header.nbytes)
        array = self.buffer.array(header.nbytes)
        if comm.rank == root:
            if donor == BEST_EVER:
                assert self.best.state is not None
                array[:] = self.best.state
            else:
                self._pack(local[donor], header)
        comm.bcast_buffer(array, root=root)
        self.buffer.to_device(header.nbytes)
        if comm.is_root:  # kept for the checkpoint: members that copied this donor hold this state
            self.donor_states[donor] = (header, array.copy())
        if donor == winner and new_best and comm.is_root:
            self.best = Best(value, k, winner, dict(self.history.hparams[k][winner]), header,
                             self.donor_states[donor][1])
        for i, s in enumerate(sources):
            if s == donor and i in local and i != donor:
                local[i].adopt(header, self.buffer.device_view(), mine[i], self.buffer.host)

    def log_session(self, k: int, value: float, winner: int, note: str, times: np.ndarray, elapsed: float,
                    saved: bool = True) -> None:
        """Rank 0's one line for session k (times: this rank's phases; `saved`: a checkpoint was written)."""
        if not self.comm.is_root:
            return
        m, done = len(self.schedule), sum(self.schedule[:k + 1])
        total = sum(self.schedule)
        hp = ", ".join(f"{n}={_fmt(v)}" for n, v in self.history.hparams[k][winner].items())
        eta = elapsed / max(1, done - sum(self.schedule[:self.next_session])) * (total - done)
        line = (f"session {k + 1}/{m} | epochs {done}/{total} | best val {value:.5g} "
                f"(member {winner}) | {hp} | {times.sum():.2f}s "
                f"(train {times[0]:.2f}, val {times[1]:.2f}, share {times[2:5].sum():.3f}, "
                f"checkpoint {f'{times[5]:.3f}' if saved else 'not due'}) | elapsed {elapsed:.0f}s, eta {eta:.0f}s")
        self.log(line + (f" | {note}" if note else ""))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)

"""Per-user interaction sequences in time order, the input of the sequence-aware user tower.

The user tower reads a user's most recent items, so everything here works on per-user
sequences: CSR arrays (``indptr``, ``items``) with each user's dense item indices in time order.

* :func:`history_matrix`: the ``length`` items before a position, most recent first, as
  ``item index + 1`` (0 pads short histories); this is the model's ``history`` input.
* :func:`sample_training_rows`: the training examples of one epoch. For each user we cut its
  sequence at random positions; the history before the cut is the input and the next
  ``window`` items are the targets, weighted ``exp(-decay * j)`` for the j-th next item. This
  teaches the model what a user picks *next*, which is exactly what leave-one-out evaluation
  (and a recommender in production) asks.
* :func:`validation_split`: the latest training interaction of each user held out, for tuning
  and early stopping without ever looking at the test items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import Split


@dataclass
class Sequences:
    indptr: np.ndarray  # (n_users + 1,)
    items: np.ndarray  # dense item indices, user by user, in time order

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)


def from_pairs(users: np.ndarray, items: np.ndarray, n_users: int) -> Sequences:
    """Group (user, item) pairs given in time order into per-user sequences (order kept)."""
    order = np.argsort(users, kind="stable")  # stable: time order within a user is kept
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return Sequences(indptr=indptr, items=np.asarray(items, dtype=np.int64)[order])


def training_sequences(split: Split) -> Sequences:
    return from_pairs(split.train_users, split.train_items, split.n_users)


def all_sequences(split: Split) -> Sequences:
    return from_pairs(split.all_users, split.all_items, split.n_users)


def history_matrix(seq: Sequences, users: np.ndarray, ends: np.ndarray | None, length: int) -> np.ndarray:
    """``(len(users), length)`` int64: the ``length`` items before ``ends`` (exclusive, a
    position within each user's sequence; None = the whole sequence), most recent first, as
    ``item index + 1``; 0 pads."""
    users = np.asarray(users, dtype=np.int64)
    start = seq.indptr[users]
    stop = seq.indptr[users + 1] if ends is None else start + np.asarray(ends, dtype=np.int64)
    out = np.zeros((len(users), length), dtype=np.int64)
    for k in range(length):
        pos = stop - 1 - k
        valid = pos >= start
        out[valid, k] = seq.items[pos[valid]] + 1
    return out


@dataclass
class TrainingRows:
    users: np.ndarray  # (n,) dense user indices
    history: np.ndarray  # (n, length) item index + 1, 0 pads
    targets: np.ndarray  # (n, window) dense item indices (0 where the weight is 0)
    weights: np.ndarray  # (n, window) float32


def sample_training_rows(
    seq: Sequences, rng: np.random.Generator, per_user: int, length: int, window: int, decay: float
) -> TrainingRows:
    """One epoch of (history before a random cut, next ``window`` items) examples.

    Every user with at least two interactions gets ``per_user`` cuts, so each user weighs the
    same, as in the evaluation; a cut position is uniform over 1..len-1 (never an empty target).
    """
    lengths = seq.lengths
    eligible = np.flatnonzero(lengths >= 2)
    users = np.repeat(eligible, per_user)
    cuts = 1 + (rng.random(len(users)) * (lengths[users] - 1)).astype(np.int64)
    hist = history_matrix(seq, users, cuts, length)
    pos = seq.indptr[users][:, None] + cuts[:, None] + np.arange(window)[None, :]
    valid = pos < seq.indptr[users + 1][:, None]
    targets = np.where(valid, seq.items[np.minimum(pos, len(seq.items) - 1)], 0)
    weights = np.where(valid, np.exp(-decay * np.arange(window))[None, :], 0.0).astype(np.float32)
    return TrainingRows(users=users, history=hist, targets=targets.astype(np.int64), weights=weights)


def validation_split(split: Split) -> Split:
    """Hold out each user's latest *training* interaction: a leave-one-out split of the training
    part (users with one training interaction stay in training). The test items never appear."""
    u, i = split.train_users, split.train_items  # user by user, time order (see leave_one_out)
    last = np.ones(len(u), dtype=bool)
    last[:-1] = u[1:] != u[:-1]
    counts = np.bincount(u, minlength=split.n_users)
    held = last & (counts[u] >= 2)
    return Split(
        user_ids=split.user_ids,
        item_ids=split.item_ids,
        train_users=u[~held],
        train_items=i[~held],
        test_users=u[held],
        test_items=i[held],
        all_users=u,
        all_items=i,
    )

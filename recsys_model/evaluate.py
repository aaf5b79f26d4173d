"""Leave-one-out evaluation, as in He et al., "Neural Collaborative Filtering" (WWW 2017).

For every evaluated user the latest interaction is held out. The held-out item is ranked
against

* ``sampled``: 99 items drawn uniformly from those the user never interacted with (the NCF
  protocol; the same negatives are used for every scorer in a run), and
* ``full``: the whole catalogue minus the items the user interacted with in training.

HR@10 is the share of users whose held-out item ranks in the top 10; NDCG@10 adds
``1 / log2(rank + 2)`` for those hits (rank 0 is the top). Ties in score are broken at random
(seeded), which is the expected value of an arbitrary tie-break and matters for the
popularity baseline, where many items share a count.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .data import Split

ScoreFn = Callable[[np.ndarray], np.ndarray]  # dense user indices -> (len, n_items) scores


def seen_csr(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of each user's distinct items, sorted by user."""
    order = np.lexsort((items, users))
    u, i = users[order], items[order]
    keep = np.ones(len(u), dtype=bool)
    keep[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    u, i = u[keep], i[keep]
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=n_users), out=indptr[1:])
    return indptr, i.astype(np.int64)


def popularity(split: Split) -> np.ndarray:
    """Training interaction count of every item."""
    return np.bincount(split.train_items, minlength=split.n_items).astype(np.float64)


def sample_negatives(
    split: Split, n_neg: int = 99, seed: int = 0, max_users: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick evaluated users and, for each, ``n_neg`` items it never interacted with.

    Returns (users, held_out_items, negatives[len(users), n_neg]). With ``max_users`` a seeded
    subset of users is used (for cheap per-epoch monitoring).
    """
    rng = np.random.default_rng(seed)
    users, targets = split.test_users, split.test_items
    if max_users is not None and len(users) > max_users:
        pick = np.sort(rng.choice(len(users), size=max_users, replace=False))
        users, targets = users[pick], targets[pick]
    indptr, indices = seen_csr(split.all_users, split.all_items, split.n_users)
    negs = np.empty((len(users), n_neg), dtype=np.int64)
    for k, u in enumerate(users):
        seen = indices[indptr[u] : indptr[u + 1]]
        n_free = split.n_items - len(seen)
        if n_free >= n_neg:
            # Rejection sampling is fast when the user has seen a small part of the catalogue.
            got = np.empty(0, dtype=np.int64)
            while len(got) < n_neg:
                cand = rng.integers(0, split.n_items, size=2 * n_neg)
                cand = cand[~np.isin(cand, seen)]
                got = np.concatenate([got, cand])
                _, first = np.unique(got, return_index=True)
                got = got[np.sort(first)]
            negs[k] = got[:n_neg]
        else:  # tiny catalogue: sample with replacement among the unseen items
            free = np.setdiff1d(np.arange(split.n_items), seen)
            negs[k] = rng.choice(free, size=n_neg, replace=True) if len(free) else targets[k]
    return users, targets, negs


def _rank(
    target_scores: np.ndarray, cand_scores: np.ndarray, cand_valid: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    greater = ((cand_scores > target_scores[:, None]) & cand_valid).sum(axis=1)
    ties = ((cand_scores == target_scores[:, None]) & cand_valid).sum(axis=1)
    return greater + rng.integers(0, ties + 1)


def _metrics(ranks: np.ndarray, k: int) -> tuple[float, float]:
    hit = ranks < k
    ndcg = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(hit.mean()), float(ndcg.mean())


def evaluate(
    score_fn: ScoreFn,
    split: Split,
    k: int = 10,
    n_neg: int = 99,
    seed: int = 0,
    protocols: tuple[str, ...] = ("sampled", "full"),
    max_users: int | None = None,
    batch: int = 1024,
    negatives=None,
) -> dict[str, float]:
    """HR@k and NDCG@k of ``score_fn`` under the requested protocols."""
    users, targets, negs = negatives if negatives is not None else sample_negatives(split, n_neg, seed, max_users)
    rng = np.random.default_rng(seed + 1)
    train_ptr, train_idx = seen_csr(split.train_users, split.train_items, split.n_users)
    ranks = {p: [] for p in protocols}
    for s in range(0, len(users), batch):
        ub, tb = users[s : s + batch], targets[s : s + batch]
        scores = np.asarray(score_fn(ub), dtype=np.float64)
        rows = np.arange(len(ub))
        tscore = scores[rows, tb]
        if "sampled" in protocols:
            ns = scores[rows[:, None], negs[s : s + batch]]
            ranks["sampled"].append(_rank(tscore, ns, np.ones_like(ns, dtype=bool), rng))
        if "full" in protocols:
            valid = np.ones_like(scores, dtype=bool)
            for r, u in enumerate(ub):
                valid[r, train_idx[train_ptr[u] : train_ptr[u + 1]]] = False
            valid[rows, tb] = False  # the target itself is not a competitor
            ranks["full"].append(_rank(tscore, scores, valid, rng))
    out = {}
    for p, rs in ranks.items():
        hr, ndcg = _metrics(np.concatenate(rs) if rs else np.zeros(0), k)
        out[f"hr_at_{k}_{p}"] = hr
        out[f"ndcg_at_{k}_{p}"] = ndcg
    return out


def popularity_score_fn(split: Split) -> ScoreFn:
    pop = popularity(split)
    return lambda users: np.broadcast_to(pop, (len(users), len(pop)))

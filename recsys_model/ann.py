"""Approximate-nearest-neighbour index over the item tower, built at training time.

The served score is an inner product with a bias, ``u . v_i + b_i = [u, 1] . [v_i, b_i]``, so
the index holds ``[v_i, b_i]`` and is queried with ``[u, 1]`` by maximum inner product. It is a
faiss ``IndexIVFFlat`` (inner-product metric): k-means splits the catalogue into ``nlist ~
4 sqrt(n)`` lists, a query scans the ``nprobe`` lists whose centroids score best, exactly.
Chosen by measurement on this machine (README, "Serving a large catalogue"): at 1M items it
matched hnswlib's latency at the same recall, built 4.8x faster, needs no MIPS-to-L2
reduction, and has a single knob; ScaNN 1.4.2 cannot be imported next to TensorFlow 2.21.

``nprobe`` is calibrated at build time, not guessed: exact top-10 of up to 256 real user
vectors against the whole catalogue, then the smallest ``nprobe`` whose recall@10 reaches
``TARGET_RECALL`` (doubling, then bisecting). The pyfunc re-scores the candidates exactly.

Small catalogues are scored exactly (``EXACT_MAX_ITEMS``, measured through ``mlflow models
serve``); ``policy`` overrides: ``auto``, ``exact`` (never build) or ``ann`` (always).
"""

from __future__ import annotations

import logging
import time

import numpy as np

log = logging.getLogger(__name__)

EXACT_MAX_ITEMS = 20_000  # at or below: exact scoring is within the index's latency (README)
TARGET_RECALL = 0.97  # recall@10 against exact top-10 that nprobe is calibrated to reach
CALIBRATION_USERS = 256
POLICIES = ("auto", "exact", "ann")


def should_index(n_items: int, policy: str = "auto") -> bool:
    if policy not in POLICIES:
        raise ValueError(f"index policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    return policy == "ann" or (policy == "auto" and n_items > EXACT_MAX_ITEMS)


def item_matrix(item_vectors: np.ndarray, item_bias: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.hstack([item_vectors, item_bias[:, None]]), dtype=np.float32)


def query_matrix(user_vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.hstack([user_vectors, np.ones((len(user_vectors), 1))]), dtype=np.float32)


def exact_top(items: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), 32):  # bounded memory at a million items
        scores = queries[s : s + 32] @ items.T
        out[s : s + 32] = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return out


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]))


def calibrate_nprobe(index, queries: np.ndarray, exact: np.ndarray, target: float = TARGET_RECALL):
    """The smallest nprobe reaching ``target`` recall@10 (or every list); (nprobe, recall)."""

    def at(p: int) -> float:
        index.nprobe = p
        return recall(index.search(queries, exact.shape[1])[1], exact)

    hi, got = 1, at(1)
    while got < target and hi < index.nlist:
        hi = min(2 * hi, index.nlist)
        got = at(hi)
    lo = hi // 2
    while hi - lo > max(1, hi // 16):  # bisect to within ~6 % of the answer
        mid = (lo + hi) // 2
        r = at(mid)
        if r >= target:
            hi, got = mid, r
        else:
            lo = mid
    return hi, got


def build_index(item_vectors, item_bias, user_vectors, path: str, seed: int = 0) -> dict:
    """Build, calibrate and save the IVF index; returns what the pyfunc needs to use it."""
    import faiss

    t0 = time.perf_counter()
    items = item_matrix(item_vectors, item_bias)
    n, dim = items.shape
    nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))  # faiss wants >= 39 training points per list
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    rng = np.random.default_rng(seed)
    sample = items[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))]
    index.train(sample)
    index.add(items)
    users = user_vectors[rng.choice(len(user_vectors), size=min(len(user_vectors), CALIBRATION_USERS), replace=False)]
    queries = query_matrix(users)
    nprobe, got = calibrate_nprobe(index, queries, exact_top(items, queries))
    faiss.write_index(index, path)
    seconds = time.perf_counter() - t0
    log.info(
        "IVF index over %d items: %d lists, nprobe %d (recall@10 %.3f), built in %.1fs", n, nlist, nprobe, got, seconds
    )
    return {"index_kind": "ivf", "index_nprobe": nprobe, "index_recall_at_10": got, "index_lists": nlist}

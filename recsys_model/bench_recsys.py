"""Quality benchmark: our two-tower model against popularity and a tuned library peer, on the
same leave-one-out split and the same sampled negatives, in one run.

The peer is ``implicit``'s ALS (the ``bench`` extra), with the tuned setting from the issue:
factors 32, regularisation 1.0, alpha 5 (confidence ``1 + alpha`` on observed pairs), 15
iterations. Figures: HR@10 and NDCG@10 under both protocols (99 sampled negatives, full
catalogue), training seconds, and every figure as a ratio to the peer's.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import evaluate as ev
from .data import Split, leave_one_out
from .train import fit_model, load_data, model_config

log = logging.getLogger(__name__)

FIGURES = ("hr_at_10_sampled", "ndcg_at_10_sampled", "hr_at_10_full", "ndcg_at_10_full")


@dataclass
class AlsConfig:
    factors: int = 32
    regularization: float = 1.0
    alpha: float = 5.0
    iterations: int = 15
    seed: int = 0


def train_als(split: Split, cfg: AlsConfig) -> Callable[[np.ndarray], np.ndarray]:
    """Fit implicit's ALS on the training pairs; returns a score function over dense users."""
    try:
        import scipy.sparse as sp
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits
    except ImportError as e:
        raise RuntimeError(
            f"the ALS peer needs the bench extra ({e}); install it with: pip install -e '.[bench]'"
        ) from None
    conf = np.full(len(split.train_users), cfg.alpha, dtype=np.float32)
    matrix = sp.csr_matrix((conf, (split.train_users, split.train_items)), shape=(split.n_users, split.n_items))
    als = AlternatingLeastSquares(
        factors=cfg.factors,
        regularization=cfg.regularization,
        iterations=cfg.iterations,
        random_state=cfg.seed,
        calculate_training_loss=False,
    )
    with threadpool_limits(1, "blas"):  # implicit's own threads; a threaded BLAS only competes with them
        als.fit(matrix, show_progress=False)
    users, items = np.asarray(als.user_factors), np.asarray(als.item_factors)
    return lambda rows: users[rows] @ items.T


def _ratios(figures: dict, peer: dict) -> dict:
    return {k: (figures[k] / peer[k] if peer[k] else None) for k in FIGURES}


def run_bench(
    data: str | None = "ml-100k",
    seed: int = 42,
    epochs: int | None = None,
    model_kwargs: dict | None = None,
    als: AlsConfig | None = None,
    synthetic_kwargs: dict | None = None,
    progress=None,
) -> dict:
    """Ours, popularity and ALS on one split and one set of negatives; figures and ratios."""
    from . import model as M
    from .sequences import training_sequences

    interactions = load_data(data, seed=seed, synthetic_kwargs=synthetic_kwargs)
    split = leave_one_out(interactions)
    negatives = ev.sample_negatives(split, 99, seed)
    cfg = model_config(seed, epochs, model_kwargs)
    als = als or AlsConfig()

    t0 = time.perf_counter()
    fitted = fit_model(split, cfg, on_progress=progress)
    ours_s = time.perf_counter() - t0
    towers = M.export_towers(fitted.model, split.user_ids, split.item_ids, training_sequences(split))
    ours = ev.evaluate(towers.scores, split, negatives=negatives, seed=seed)
    log.info("ours: %s in %.1fs", ours, ours_s)

    t0 = time.perf_counter()
    als_scores = train_als(split, als)
    als_s = time.perf_counter() - t0
    peer = ev.evaluate(als_scores, split, negatives=negatives, seed=seed)
    log.info("ALS: %s in %.1fs", peer, als_s)
    pop = ev.evaluate(ev.popularity_score_fn(split), split, negatives=negatives, seed=seed)

    ratio = _ratios(ours, peer)
    return {
        "data": interactions.describe(),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "n_eval_users": len(negatives[0]),
        "ours": {**ours, "train_seconds": ours_s, "epochs": fitted.epochs_run, "config": cfg.as_params()},
        "als": {**peer, "train_seconds": als_s, "config": als.__dict__},
        "popularity": pop,
        "ratio_to_als": {
            "ours": {**ratio, "train_seconds": ours_s / als_s if als_s else None},
            "popularity": _ratios(pop, peer),
        },
        "targets": {"ours_ge_1.05x_als_" + k: (ratio[k] or 0) >= 1.05 for k in FIGURES},
    }

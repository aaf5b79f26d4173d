"""Deterministic synthetic implicit-feedback data, the default training set.

Nothing is downloaded: the data is generated from a seed. Each user and item gets a latent
vector; each item also gets a popularity bias drawn from a Zipf-like law. A user picks items
(without replacement) with probability proportional to ``exp(affinity / temperature + bias)``,
so there is personal structure for a model to learn and a popularity skew that makes a
popularity baseline a sensible, non-trivial reference. Each user's interactions get increasing
timestamps, so the leave-one-out split holds out a fresh draw from the same preferences.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .data import Interactions

DEFAULTS = dict(n_users=1000, n_items=500, mean_interactions=50, n_factors=8, temperature=0.4, popularity_exponent=0.8)


def generate(
    seed: int = 42,
    n_users: int = DEFAULTS["n_users"],
    n_items: int = DEFAULTS["n_items"],
    mean_interactions: int = DEFAULTS["mean_interactions"],
    n_factors: int = DEFAULTS["n_factors"],
    temperature: float = DEFAULTS["temperature"],
    popularity_exponent: float = DEFAULTS["popularity_exponent"],
) -> Interactions:
    """Generate about ``n_users * mean_interactions`` interactions, identically for a given seed."""
    if n_users < 2 or n_items < 20:
        raise ValueError("synthetic data needs at least 2 users and 20 items")
    rng = np.random.default_rng(seed)
    uf = rng.normal(size=(n_users, n_factors)) / np.sqrt(n_factors)
    itf = rng.normal(size=(n_items, n_factors))
    # Zipf-like popularity: rank r gets weight r^-exponent, assigned to items in random order.
    ranks = rng.permutation(n_items) + 1
    bias = -popularity_exponent * np.log(ranks)
    logits = (uf @ itf.T) / temperature + bias  # (n_users, n_items)
    # Users differ in activity (log-normal), at least 5 and at most half the catalogue.
    sizes = rng.lognormal(mean=np.log(mean_interactions) - 0.125, sigma=0.5, size=n_users)
    sizes = np.clip(np.rint(sizes), 5, n_items // 2).astype(np.int64)

    users, items, stamps = [], [], []
    t0 = 1_600_000_000
    for u in range(n_users):
        # Sampling without replacement, proportional to exp(logits): Gumbel top-k.
        g = logits[u] - np.log(-np.log(rng.random(n_items)))
        picked = np.argpartition(-g, sizes[u] - 1)[: sizes[u]]
        rng.shuffle(picked)  # consumption order is random, not by preference
        ts = t0 + np.cumsum(rng.integers(60, 86_400, size=sizes[u]))
        users.append(np.full(sizes[u], u + 1, dtype=np.int64))
        items.append(picked.astype(np.int64) + 1)
        stamps.append(ts.astype(np.int64))

    df = pd.DataFrame(
        {
            "user_id": np.concatenate(users),
            "item_id": np.concatenate(items),
            "timestamp": np.concatenate(stamps),
        }
    )
    params = dict(
        seed=seed,
        n_users=n_users,
        n_items=n_items,
        mean_interactions=mean_interactions,
        n_factors=n_factors,
        temperature=temperature,
        popularity_exponent=popularity_exponent,
    )
    src = "synthetic:" + ",".join(f"{k}={v}" for k, v in params.items())
    return Interactions(df=df, name="synthetic", source=src, fmt="synthetic", extra={"generator": params})

"""Top-k recommendation pyfunc for the two-tower model ("models from code").

This file is logged as the model's code (``mlflow.pyfunc.log_model(python_model=<this file>)``),
so a logged model carries its own serving logic and needs only numpy, pandas and mlflow at
serving time: no TensorFlow import, no Keras ``predict``. It must therefore stay standalone
(no imports from the rest of the package).

Input: a table (pandas DataFrame / ``dataframe_split`` / ``dataframe_records`` / ``inputs``)
with

* ``user_id`` (integer, required): the raw user id, as in the training data;
* ``k`` (integer, optional, default 10, 1..1000): how many items to return for that row; a
  row without ``k`` (null) gets the default.

Other columns are ignored (MLflow's schema enforcement drops them). The signature types both
columns as ``Any`` so that the payload reaches this model uncast and is validated here.

Output: a table with one row per (request row, rank), in request order then rank order:

* ``user_id`` (int64): the user id of the request row;
* ``rank`` (int64): 1 for the best item;
* ``item_id`` (int64): the raw item id;
* ``score`` (float64): for ``source == "model"`` the model's score (logit) ``u . v_i + b_i``;
  for ``source == "popularity"`` the item's share of all interactions;
* ``source`` (string): ``"model"`` or ``"popularity"``.

Policies:

* Seen items are excluded: an item the user interacted with anywhere in the training data
  (including the held-out latest interaction) is never recommended to that user. If fewer than
  ``k`` unseen items remain, fewer rows are returned for that user.
* Unknown users (ids absent from the training data) get the ``k`` most popular items, marked
  ``source = "popularity"``; this is a defined cold-start answer, not an error.
* Malformed input (missing ``user_id``, null or non-integer ids, ``k`` out of range or not an
  integer, unsupported payload type) raises ``MlflowException`` with ``INVALID_PARAMETER_VALUE``,
  which the MLflow scoring server returns as HTTP 400 with the message.

Scoring: the artifact ``towers`` (an ``.npz``) holds the user tower's output for every known
user, the item embedding table and the item bias, exported from the Keras model after training.
The model's score factorises (``u . v_i + b_i``), so one small matrix product per request
reproduces the Keras model's output exactly (up to float32 rounding); ``argpartition`` picks
the top k.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

DEFAULT_K = 10
MAX_K = 1000
OUTPUT_COLUMNS = ["user_id", "rank", "item_id", "score", "source"]


def _bad(msg: str) -> MlflowException:
    return MlflowException(msg, error_code=INVALID_PARAMETER_VALUE)


def _int_column(s: pd.Series, name: str) -> np.ndarray:
    """Validate that a column holds integers (ints, or floats/strings with integral values)."""
    if s.isna().any():
        raise _bad(f"column '{name}' has a null value at row {int(np.flatnonzero(s.isna().to_numpy())[0])}")
    if pd.api.types.is_bool_dtype(s):
        raise _bad(f"column '{name}' must hold integers, got booleans")
    if pd.api.types.is_integer_dtype(s):
        return s.to_numpy(dtype=np.int64)
    num = pd.to_numeric(s, errors="coerce")
    bad = num.isna().to_numpy()
    if not bad.any():
        bad = (num != np.floor(num)).to_numpy() | ~np.isfinite(num.to_numpy(dtype=float))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        v = s.iloc[i]
        v = v.item() if isinstance(v, np.generic) else v
        raise _bad(f"column '{name}' must hold integers, got {v!r} at row {i}")
    return num.to_numpy(dtype=np.int64)


class RecsysTopK(mlflow.pyfunc.PythonModel):
    """Top-k items per user from exported two-tower embeddings, excluding seen items."""

    def load_context(self, context):
        self._load(context.artifacts["towers"])

    def _load(self, path: str) -> None:
        with np.load(path, allow_pickle=False) as z:
            self.user_ids = z["user_ids"]  # sorted
            self.item_ids = z["item_ids"]
            self.user_vectors = np.ascontiguousarray(z["user_vectors"], dtype=np.float32)
            self.item_vectors_t = np.ascontiguousarray(z["item_vectors"].T, dtype=np.float32)
            self.item_bias = z["item_bias"].astype(np.float32)
            self.seen_indptr = z["seen_indptr"]
            self.seen_indices = z["seen_indices"]
            pop = z["popularity"].astype(np.float64)
        self.n_items = len(self.item_ids)
        self.pop_order = np.argsort(-pop, kind="stable")
        self.pop_share = pop / max(pop.sum(), 1.0)
        self.user_row = {int(u): r for r, u in enumerate(self.user_ids)}

    # -- helpers -------------------------------------------------------------------------
    def _parse(self, model_input) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        elif isinstance(model_input, list):
            model_input = pd.DataFrame(model_input)
        if not isinstance(model_input, pd.DataFrame):
            raise _bad(f"expected a table with a 'user_id' column, got {type(model_input).__name__}")
        if "user_id" not in model_input.columns:
            raise _bad(f"missing required column 'user_id' (got columns {list(model_input.columns)})")
        users = _int_column(model_input["user_id"], "user_id")
        if "k" in model_input.columns:
            kcol = model_input["k"]
            ks = (
                _int_column(kcol.fillna(DEFAULT_K), "k")
                if kcol.notna().any()
                else np.full(len(users), DEFAULT_K, dtype=np.int64)
            )
            bad = (ks < 1) | (ks > MAX_K)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise _bad(f"'k' must be between 1 and {MAX_K}, got {int(ks[i])} at row {i}")
        else:
            ks = np.full(len(users), DEFAULT_K, dtype=np.int64)
        return users, ks

    def recommend(self, users: np.ndarray, ks: np.ndarray) -> pd.DataFrame:
        rows = np.fromiter((self.user_row.get(int(u), -1) for u in users), dtype=np.int64, count=len(users))
        known = np.flatnonzero(rows >= 0)
        if len(known):
            scores = self.user_vectors[rows[known]] @ self.item_vectors_t
            scores += self.item_bias
        out_u, out_r, out_i, out_s, out_src = [], [], [], [], []
        kpos = 0
        for n, (u, k, row) in enumerate(zip(users, ks, rows)):
            k = int(min(k, self.n_items))
            if row >= 0:
                s = scores[kpos]
                kpos += 1
                seen = self.seen_indices[self.seen_indptr[row] : self.seen_indptr[row + 1]]
                s[seen] = -np.inf
                kk = min(k, self.n_items - len(seen))
                if kk <= 0:
                    continue
                top = np.argpartition(-s, kk - 1)[:kk] if kk < self.n_items else np.arange(self.n_items)
                top = top[np.argsort(-s[top], kind="stable")]
                vals, src = s[top].astype(np.float64), "model"
            else:
                top = self.pop_order[:k]
                vals, src = self.pop_share[top], "popularity"
            out_u.append(np.full(len(top), u, dtype=np.int64))
            out_r.append(np.arange(1, len(top) + 1, dtype=np.int64))
            out_i.append(self.item_ids[top])
            out_s.append(vals)
            out_src.extend([src] * len(top))
        if not out_u:
            return pd.DataFrame(
                {
                    "user_id": pd.Series([], dtype=np.int64),
                    "rank": pd.Series([], dtype=np.int64),
                    "item_id": pd.Series([], dtype=np.int64),
                    "score": pd.Series([], dtype=np.float64),
                    "source": pd.Series([], dtype=object),
                }
            )
        return pd.DataFrame(
            {
                "user_id": np.concatenate(out_u),
                "rank": np.concatenate(out_r),
                "item_id": np.concatenate(out_i).astype(np.int64),
                "score": np.concatenate(out_s),
                "source": out_src,
            }
        )

    def predict(self, context, model_input, params=None):
        users, ks = self._parse(model_input)
        return self.recommend(users, ks)


# When MLflow loads this file as model code it runs it under a generated module name; the
# package import (xregion.recsys_model.pyfunc) only wants the class.
if __name__ != "xregion.recsys_model.pyfunc":
    mlflow.models.set_model(RecsysTopK())

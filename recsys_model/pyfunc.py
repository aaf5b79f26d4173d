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
* A request with no rows (``dataframe_split`` with no data, ``dataframe_records: []``,
  ``inputs: {"user_id": []}``) gets HTTP 400 "request has no rows with a 'user_id'...", one
  answer for every shape. (MLflow's schema enforcement hands the model the same empty table for
  ``[]`` and for rows whose only columns are unknown, e.g. ``[{"user": 1}]``, so an empty
  request cannot be a 200 without also accepting a misspelt column.)
* Malformed input (missing ``user_id``, null or non-integer ids, booleans, ids outside the
  signed 64-bit range such as ``1e30`` or ``2**70``, ``k`` out of range or not an integer,
  unsupported payload type) and requests of more than ``max_rows`` rows (default 1000; the
  model config key ``max_rows``, overridable when loading: ``load_model(uri,
  model_config={"max_rows": 5000})``, or for ``mlflow models serve`` the environment variable
  ``MLFLOW_PYFUNC_INFERENCE_CONFIG='{"max_rows": 5000}'``) raise ``MlflowException`` with ``INVALID_PARAMETER_VALUE``, which the MLflow scoring server
  returns as HTTP 400 with the message.

Scoring: the artifact ``towers`` (an ``.npz``) holds the user tower's output for every known
user, the item embedding table and the item bias, exported from the Keras model after training.
The model's score factorises (``u . v_i + b_i``). Small catalogues are scored exactly: one
matrix product per request and ``argpartition``. When the artifact also holds an
approximate-nearest-neighbour index (``towers.npz`` key ``index_kind`` = ``ivf`` and the
``index`` artifact, a faiss IVF-Flat index built at training time above a measured catalogue
size), the top candidates come from the index over ``[v_i, b_i]`` queried with ``[u, 1]``, seen
items are dropped from a widened candidate list; the index compares full vectors, so the
reported scores are exact and only the candidate set is approximate. An indexed artifact keeps
the item table only inside the index; the model config key ``index`` = ``exact`` forces exact
scoring (the table is then read back from the index).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

DEFAULT_K = 10
MAX_K = 1000
DEFAULT_MAX_ROWS = 1000
EXACT_BLOCK = 64  # rows scored together on the exact path: one matrix product, bounded memory
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
OUTPUT_COLUMNS = ["user_id", "rank", "item_id", "score", "source"]


def _bad(msg: str) -> MlflowException:
    return MlflowException(msg, error_code=INVALID_PARAMETER_VALUE)


def _scalar_int(v, name: str, row: int) -> int:
    """One value of an object column: an integer (or integral float / numeric string) in int64."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool):
        raise _bad(f"column '{name}' must hold integers, got boolean {v!r} at row {row}")
    if isinstance(v, str):
        try:
            v = int(v.strip())
        except ValueError:
            try:
                v = float(v.strip())
            except ValueError:
                raise _bad(f"column '{name}' must hold integers, got {v!r} at row {row}") from None
    if isinstance(v, float):
        if not np.isfinite(v) or v != np.floor(v):
            raise _bad(f"column '{name}' must hold integers, got {v!r} at row {row}")
        if not INT64_MIN <= v < 2.0**63:
            raise _bad(f"column '{name}' value {v!r} at row {row} is outside the signed 64-bit integer range")
        return int(v)
    if not isinstance(v, int):
        raise _bad(f"column '{name}' must hold integers, got {v!r} at row {row}")
    if not INT64_MIN <= v <= INT64_MAX:
        raise _bad(f"column '{name}' value {v} at row {row} is outside the signed 64-bit integer range")
    return v


def _int_column(s: pd.Series, name: str) -> np.ndarray:
    """The column as int64, or a 400 naming the first bad row (null, boolean, non-integral,
    out of the int64 range: never a silent wrap-around or a bool read as 0/1)."""
    isna = s.isna().to_numpy()
    if isna.any():
        raise _bad(f"column '{name}' has a null value at row {int(np.flatnonzero(isna)[0])}")
    if pd.api.types.is_bool_dtype(s):
        raise _bad(f"column '{name}' must hold integers, got booleans")
    if pd.api.types.is_signed_integer_dtype(s):
        return s.to_numpy(dtype=np.int64)
    if pd.api.types.is_unsigned_integer_dtype(s) or pd.api.types.is_float_dtype(s) or s.dtype == object:
        # The fast path above is the common one; here each value is checked (at most max_rows).
        return np.fromiter((_scalar_int(v, name, r) for r, v in enumerate(s.tolist())), dtype=np.int64, count=len(s))
    raise _bad(f"column '{name}' must hold integers, got values of type {s.dtype}")


def _as_frame(model_input) -> pd.DataFrame:
    if isinstance(model_input, dict):
        lengths = {len(v) if isinstance(v, (list, tuple, np.ndarray, pd.Series)) else 1 for v in model_input.values()}
        if len(lengths) > 1:
            raise _bad("columns of the request have different lengths")
        if lengths == {0}:
            return pd.DataFrame({c: pd.Series([], dtype=object) for c in model_input})
        return pd.DataFrame(model_input)
    if isinstance(model_input, list):
        return pd.DataFrame(model_input)
    if isinstance(model_input, pd.DataFrame):
        object_columns = all(pd.api.types.is_object_dtype(t) for t in model_input.dtypes)
        if len(model_input) == 1 and object_columns and all(map(_is_empty_sequence, model_input.iloc[0].tolist())):
            # MLflow's schema enforcement turns {"inputs": {"user_id": []}} into one row
            # holding an empty list: that is a request without rows
            return model_input.iloc[:0]
        return model_input
    raise _bad(f"expected a table with a 'user_id' column, got {type(model_input).__name__}")


def _is_empty_sequence(v) -> bool:
    return isinstance(v, (list, tuple, np.ndarray)) and len(v) == 0


def _empty_output() -> pd.DataFrame:
    types = [np.int64, np.int64, np.int64, np.float64, object]
    return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in zip(OUTPUT_COLUMNS, types, strict=True)})


class IvfIndex:
    """Candidate items by inner product with ``[u, 1]`` over ``[v_i, b_i]`` (faiss IVF-Flat,
    ``nprobe`` calibrated at training time; see the package's ``ann.py``)."""

    def __init__(self, path: str, nprobe: int):
        import faiss

        faiss.omp_set_num_threads(1)  # one request at a time per worker; threads only add overhead
        self.index = faiss.read_index(path)
        self.nprobe = nprobe

    def candidates(self, query: np.ndarray, n: int, widen: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` item rows and their scores. IVF-Flat compares full vectors, so the inner
        products it returns are the model's exact scores; only the candidate set is approximate."""
        self.index.nprobe = min(self.nprobe * widen, self.index.nlist)
        q = np.append(query, np.float32(1.0)).astype(np.float32)[None, :]
        scores, ids = self.index.search(q, n)
        found = ids[0] >= 0
        return ids[0][found], scores[0][found]

    def items(self) -> np.ndarray:
        """``[v_i, b_i]`` of every item, read back from the index (for forced exact scoring)."""
        self.index.make_direct_map()
        return self.index.reconstruct_n(0, self.index.ntotal)


class RecsysTopK(mlflow.pyfunc.PythonModel):
    """Top-k items per user from exported two-tower embeddings, excluding seen items."""

    def load_context(self, context):
        config = dict(getattr(context, "model_config", None) or {})
        self.max_rows = int(config.get("max_rows") or DEFAULT_MAX_ROWS)
        self._load(context.artifacts["towers"], context.artifacts.get("index"), config.get("index", "auto"))

    def _load(self, path: str, index_path: str | None = None, index_policy: str = "auto") -> None:
        with np.load(path, allow_pickle=False) as z:
            self.user_ids = z["user_ids"]  # sorted
            self.item_ids = z["item_ids"]
            self.user_vectors = np.ascontiguousarray(z["user_vectors"], dtype=np.float32)
            self.item_vectors = np.ascontiguousarray(z["item_vectors"], dtype=np.float32)  # (0, d) if indexed
            self.item_bias = z["item_bias"].astype(np.float32)
            self.seen_indptr = z["seen_indptr"]
            self.seen_indices = z["seen_indices"]
            pop = z["popularity"].astype(np.float64)
            index_kind = str(z["index_kind"]) if "index_kind" in z.files else "exact"
            nprobe = int(z["index_nprobe"]) if "index_nprobe" in z.files else 1
        if not hasattr(self, "max_rows"):
            self.max_rows = DEFAULT_MAX_ROWS
        self.n_items = len(self.item_ids)
        self.pop_order = np.argsort(-pop, kind="stable")
        self.pop_share = pop / max(pop.sum(), 1.0)
        self.user_row = {int(u): r for r, u in enumerate(self.user_ids)}
        index = IvfIndex(index_path, nprobe) if index_kind == "ivf" and index_path else None
        if index is not None and len(self.item_vectors) == 0:
            # an indexed artifact keeps the item table once, inside the index
            self.item_vectors = np.ascontiguousarray(index.items()[:, :-1]) if index_policy == "exact" else None
        self.index = index if index_policy != "exact" else None
        # the exact path multiplies by the transposed table; only built when it is used
        self.item_vectors_t = None if self.index else np.ascontiguousarray(self.item_vectors.T)

    # -- input ---------------------------------------------------------------------------
    def _parse(self, model_input) -> tuple[np.ndarray, np.ndarray]:
        df = _as_frame(model_input)
        if len(df) > self.max_rows:
            raise _bad(
                f"request has {len(df)} rows; at most {self.max_rows} rows per request are accepted: "
                "split it into smaller requests"
            )
        if len(df) == 0:
            raise _bad(
                "request has no rows with a 'user_id': send at least one row with an integer 'user_id' "
                '(and optionally \'k\'), e.g. {"dataframe_records": [{"user_id": 1, "k": 10}]}'
            )
        if "user_id" not in df.columns:
            raise _bad(f"missing required column 'user_id' (got columns {list(df.columns)})")
        users = _int_column(df["user_id"], "user_id")
        ks = np.full(len(users), DEFAULT_K, dtype=np.int64)
        if "k" in df.columns:
            kcol = df["k"]
            if pd.api.types.is_float_dtype(kcol) or pd.api.types.is_object_dtype(kcol):  # these can hold nulls
                kcol = kcol.astype(object).where(kcol.notna(), DEFAULT_K)  # a row without k gets 10
            ks = _int_column(kcol, "k")
            bad = (ks < 1) | (ks > MAX_K)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise _bad(f"'k' must be between 1 and {MAX_K}, got {int(ks[i])} at row {i}")
        return users, ks

    # -- scoring -------------------------------------------------------------------------
    def _exact_top(self, scores: np.ndarray, seen: np.ndarray, k: int) -> np.ndarray:
        scores[seen] = -np.inf
        kk = min(k, self.n_items - len(seen))
        if kk <= 0:
            return np.zeros(0, np.int64)
        top = np.argpartition(-scores, kk - 1)[:kk] if kk < self.n_items else np.arange(self.n_items)
        return top[np.argsort(-scores[top], kind="stable")]

    def _index_top(self, row: int, seen: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        u = self.user_vectors[row]
        want = min(k, self.n_items - len(seen))
        n, widen = min(self.n_items, k + len(seen)), 1
        while True:
            cand, scores = self.index.candidates(u, n, widen)
            unseen = ~np.isin(cand, seen)
            cand, scores = cand[unseen], scores[unseen]
            if len(cand) >= want or widen * self.index.nprobe >= self.index.index.nlist and n >= self.n_items:
                break
            # too few unseen candidates: ask for more, and scan more lists if those ran out
            n, widen = min(self.n_items, 2 * n), widen * 2
        order = np.argsort(-scores, kind="stable")[:want]
        return cand[order], scores[order]

    def _exact_scores(self, rows: np.ndarray) -> np.ndarray:
        return self.user_vectors[rows] @ self.item_vectors_t + self.item_bias

    def _user_top(self, row: int, k: int, scores: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        seen = self.seen_indices[self.seen_indptr[row] : self.seen_indptr[row + 1]]
        if self.index is not None:
            return self._index_top(row, seen, k)
        top = self._exact_top(scores, seen, k)
        return top, scores[top]

    def recommend(self, users: np.ndarray, ks: np.ndarray) -> pd.DataFrame:
        rows = np.fromiter((self.user_row.get(int(u), -1) for u in users), dtype=np.int64, count=len(users))
        parts = []
        block, block_id = None, -1  # exact scores of EXACT_BLOCK request rows at a time (bounded memory)
        for n, (u, k, row) in enumerate(zip(users, ks, rows, strict=True)):
            k = int(min(k, self.n_items))
            if row < 0:
                top = self.pop_order[:k]
                parts.append((u, top, self.pop_share[top], "popularity"))
                continue
            if self.index is None and n // EXACT_BLOCK != block_id:
                block_id = n // EXACT_BLOCK
                chunk = rows[block_id * EXACT_BLOCK : (block_id + 1) * EXACT_BLOCK]
                block = self._exact_scores(np.maximum(chunk, 0))  # unknown rows: scored, unused
            top, vals = self._user_top(row, k, None if block is None else block[n % EXACT_BLOCK])
            parts.append((u, top, np.asarray(vals, dtype=np.float64), "model"))
        parts = [p for p in parts if len(p[1])]
        if not parts:
            return _empty_output()
        return pd.DataFrame(
            {
                "user_id": np.concatenate([np.full(len(t), u, dtype=np.int64) for u, t, _, _ in parts]),
                "rank": np.concatenate([np.arange(1, len(t) + 1, dtype=np.int64) for _, t, _, _ in parts]),
                "item_id": np.concatenate([self.item_ids[t] for _, t, _, _ in parts]).astype(np.int64),
                "score": np.concatenate([np.asarray(v, dtype=np.float64) for _, _, v, _ in parts]),
                "source": np.concatenate([np.full(len(t), src, dtype=object) for _, t, _, src in parts]),
            }
        )

    def predict(self, context, model_input, params=None):
        users, ks = self._parse(model_input)
        return self.recommend(users, ks)


# When MLflow loads this file as model code it runs it under a generated module name; the
# package import (xregion.recsys_model.pyfunc) only wants the class.
if __name__ != "xregion.recsys_model.pyfunc":
    mlflow.models.set_model(RecsysTopK())

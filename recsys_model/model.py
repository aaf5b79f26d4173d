"""Sequence-aware two-tower retrieval model in Keras 3 (TensorFlow backend).

* User tower: the user's ``history_length`` most recent items (input ``history``: dense item
  index + 1, most recent first, 0 pads) -> item embeddings -> a learned recency-weighted mean
  (:class:`RecencyPooling`), plus (``user_embedding``) a per-user id embedding looked up from
  the raw ``user_id`` (``IntegerLookup``, unknown ids to an OOV slot) -> user vector ``u``.
* Item tower: an item table ``V`` (``n_items x dim``) and a bias ``b``, the kernel and bias of
  the final ``Dense(n_items)`` layer. Score of item ``i``: ``u . V[i] + b[i]``.
* Objective: from a random cut of a user's sequence, predict the next ``target_window`` items
  (weighted ``exp(-target_decay * j)``), with a full softmax over the catalogue or a sampled
  softmax with a log-q correction (``softmax="sampled"``, ``negatives`` shared per batch,
  drawn from unigram^0.75).

The score factorises, so serving never needs Keras: :func:`export_towers` runs the user tower
once over every known user (a compiled call, never ``Model.predict``) and returns the user
vectors, item table and bias for the numpy pyfunc.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from .sequences import Sequences, history_matrix  # noqa: E402


@dataclass
class ModelConfig:
    """Every model and training hyperparameter (each is an ``xregion train`` option and an
    MLflow param). Defaults: the configuration tuned on ML-100k's validation split."""

    embedding_dim: int = 64
    history_length: int = 50
    user_embedding: bool = True
    history_dropout: float = 0.2
    target_window: int = 10
    target_decay: float = 0.3
    samples_per_user: int = 16
    softmax: str = "sampled"  # "full" or "sampled"
    negatives: int = 256  # sampled softmax only
    l2: float = 1e-7
    learning_rate: float = 3e-3
    lr_schedule: str = "constant"  # "constant" or "cosine"
    batch_size: int = 256
    epochs: int = 17
    early_stopping_patience: int = 0  # 0 = train exactly `epochs`
    seed: int = 42

    def as_params(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if self.softmax not in ("full", "sampled"):
            raise ValueError(f"softmax must be 'full' or 'sampled', got {self.softmax!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        for name in ("embedding_dim", "history_length", "target_window", "samples_per_user", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.history_dropout < 1.0:
            raise ValueError(f"history_dropout must be in [0, 1), got {self.history_dropout}")


@keras.saving.register_keras_serializable(package="xregion_recsys")
class RecencyPooling(keras.layers.Layer):
    """Weighted mean of history embeddings, weight ``exp(p_k)`` for the k-th most recent item.

    ``p`` is learned (initialised to ``-init_decay * k``); padding (item 0) gets no weight; in
    training each history item is dropped with probability ``dropout`` (denoising).
    """

    def __init__(self, length: int, init_decay: float = 0.05, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.length, self.init_decay, self.dropout = length, init_decay, dropout

    def build(self, input_shape):
        init = keras.initializers.Constant(-self.init_decay * np.arange(self.length, dtype=np.float32))
        self.log_weights = self.add_weight(shape=(self.length,), initializer=init, name="log_weights")

    def call(self, inputs, training=None):
        emb, hist = inputs
        mask = keras.ops.cast(keras.ops.greater(hist, 0), emb.dtype)
        if training and self.dropout:
            keep = keras.random.uniform(keras.ops.shape(mask), seed=None) >= self.dropout
            mask = mask * keras.ops.cast(keep, emb.dtype)
        w = keras.ops.exp(self.log_weights)[None, :] * mask
        num = keras.ops.sum(emb * w[:, :, None], axis=1)
        return num / keras.ops.maximum(keras.ops.sum(w, axis=1, keepdims=True), 1e-6)

    def get_config(self):
        return {**super().get_config(), "length": self.length, "init_decay": self.init_decay, "dropout": self.dropout}


def set_seed(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover - only if TF was already configured otherwise
        pass


def build_model(user_ids: np.ndarray, n_items: int, cfg: ModelConfig) -> keras.Model:
    """Inputs ``user_id`` (raw id) and ``history``; output the logits of the whole catalogue."""
    reg = keras.regularizers.L2(cfg.l2) if cfg.l2 else None
    user_in = keras.Input(shape=(), dtype="int64", name="user_id")
    hist_in = keras.Input(shape=(cfg.history_length,), dtype="int64", name="history")
    h = keras.layers.Embedding(n_items + 1, cfg.embedding_dim, embeddings_regularizer=reg, name="history_embedding")(
        hist_in
    )
    u = RecencyPooling(cfg.history_length, dropout=cfg.history_dropout, name="history_pooling")([h, hist_in])
    if cfg.user_embedding:
        idx = keras.layers.IntegerLookup(
            vocabulary=np.asarray(user_ids, dtype=np.int64), num_oov_indices=1, mask_token=None, name="user_lookup"
        )(user_in)
        e = keras.layers.Embedding(
            len(user_ids) + 1, cfg.embedding_dim, embeddings_regularizer=reg, name="user_id_embedding"
        )(idx)
        u = keras.layers.Add(name="user_vector")([u, e])
    else:
        u = keras.layers.Identity(name="user_vector")(u)
    logits = keras.layers.Dense(n_items, kernel_regularizer=reg, name="item_tower")(u)
    return keras.Model({"user_id": user_in, "history": hist_in}, logits, name="two_tower")


def user_tower(model: keras.Model) -> keras.Model:
    return keras.Model(model.input, model.get_layer("user_vector").output, name="user_tower")


@dataclass
class Towers:
    """Everything needed to score: ``scores = user_vectors[u] @ item_vectors.T + item_bias``."""

    user_ids: np.ndarray  # raw ids, row order of user_vectors
    item_ids: np.ndarray  # raw ids, row order of item_vectors
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    item_bias: np.ndarray

    def scores(self, user_rows: np.ndarray) -> np.ndarray:
        return self.user_vectors[user_rows] @ self.item_vectors.T + self.item_bias


def export_towers(model: keras.Model, user_ids, item_ids, seq: Sequences, chunk: int = 16384) -> Towers:
    """User vectors of every user from its whole sequence in ``seq``, plus the item tower."""
    fn = getattr(model, "_xregion_user_fn", None)
    if fn is None:  # one compiled function per model, so per-epoch exports do not retrace
        tower = user_tower(model)
        length = model.get_layer("history_pooling").length
        spec = {"user_id": tf.TensorSpec([None], tf.int64), "history": tf.TensorSpec([None, length], tf.int64)}
        fn = tf.function(lambda x: tower(x, training=False), input_signature=[spec])
        model._xregion_user_fn = fn
    length = model.get_layer("history_pooling").length
    rows = np.arange(len(user_ids))
    vecs = []
    for s in range(0, len(rows), chunk):
        r = rows[s : s + chunk]
        inputs = {
            "user_id": tf.constant(user_ids[r], tf.int64),
            "history": tf.constant(history_matrix(seq, r, None, length)),
        }
        vecs.append(fn(inputs).numpy())
    kernel, bias = (np.asarray(w) for w in model.get_layer("item_tower").get_weights())
    return Towers(
        user_ids=np.asarray(user_ids, dtype=np.int64),
        item_ids=np.asarray(item_ids, dtype=np.int64),
        user_vectors=np.concatenate(vecs).astype(np.float32) if vecs else np.zeros((0, kernel.shape[0]), np.float32),
        item_vectors=np.ascontiguousarray(kernel.T, dtype=np.float32),
        item_bias=np.asarray(bias, dtype=np.float32),
    )

"""Two-tower retrieval model in Keras 3 (TensorFlow backend).

* User tower: raw ``user_id`` -> ``IntegerLookup`` (unknown ids map to an OOV slot) ->
  embedding -> small MLP -> user vector ``u`` (``dim`` floats).
* Item tower: an item embedding table ``V`` (``n_items x dim``) and a per-item bias ``b``,
  stored as the kernel and bias of the final ``Dense(n_items)`` layer.
* Score of item ``i`` for user ``u``: ``u . V[i] + b[i]``; the model outputs the scores of the
  whole catalogue and is trained with a full softmax (cross-entropy against the item the user
  actually interacted with). For catalogues of MovieLens size (up to ~60k items) this is
  cheap and gives a better retrieval objective than sampled negatives.

Because the score factorises, serving never needs Keras: :func:`export_towers` runs the user
tower once over every known user (a direct, compiled call, not ``Model.predict``) and returns
the user vectors, item table and bias; the pyfunc then scores with one matrix product.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from .data import Split  # noqa: E402


@dataclass
class ModelConfig:
    embedding_dim: int = 64
    hidden_units: tuple[int, ...] = (64,)
    output_dim: int = 32
    dropout: float = 0.2
    l2: float = 1e-5
    learning_rate: float = 3e-3
    batch_size: int = 256
    epochs: int = 12
    seed: int = 42

    def as_params(self) -> dict:
        d = asdict(self)
        d["hidden_units"] = ",".join(str(h) for h in self.hidden_units) or "none"
        return d


def set_seed(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover - only if TF was already configured otherwise
        pass


def build_model(user_ids: np.ndarray, n_items: int, cfg: ModelConfig) -> keras.Model:
    reg = keras.regularizers.L2(cfg.l2) if cfg.l2 else None
    user_in = keras.Input(shape=(), dtype="int64", name="user_id")
    idx = keras.layers.IntegerLookup(
        vocabulary=np.asarray(user_ids, dtype=np.int64), num_oov_indices=1, mask_token=None, name="user_lookup"
    )(user_in)
    x = keras.layers.Embedding(len(user_ids) + 1, cfg.embedding_dim, embeddings_regularizer=reg, name="user_embedding")(
        idx
    )
    for n, h in enumerate(cfg.hidden_units):
        if cfg.dropout:
            x = keras.layers.Dropout(cfg.dropout, name=f"user_dropout_{n}")(x)
        x = keras.layers.Dense(h, activation="relu", kernel_regularizer=reg, name=f"user_hidden_{n}")(x)
    u = keras.layers.Dense(cfg.output_dim, kernel_regularizer=reg, name="user_vector")(x)
    logits = keras.layers.Dense(n_items, kernel_regularizer=reg, name="item_tower")(u)
    model = keras.Model(user_in, logits, name="two_tower")
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


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


def export_towers(model: keras.Model, user_ids: np.ndarray, item_ids: np.ndarray, chunk: int = 65536) -> Towers:
    fn = getattr(model, "_xregion_user_fn", None)
    if fn is None:  # one compiled function per model, so per-epoch exports do not retrace
        tower = user_tower(model)
        fn = tf.function(lambda x: tower(x, training=False), input_signature=[tf.TensorSpec([None], tf.int64)])
        model._xregion_user_fn = fn
    vecs = [fn(tf.constant(user_ids[s : s + chunk], dtype=tf.int64)).numpy() for s in range(0, len(user_ids), chunk)]
    item_layer = model.get_layer("item_tower")
    kernel, bias = (w.numpy() if hasattr(w, "numpy") else np.asarray(w) for w in item_layer.weights)
    return Towers(
        user_ids=np.asarray(user_ids, dtype=np.int64),
        item_ids=np.asarray(item_ids, dtype=np.int64),
        user_vectors=np.concatenate(vecs).astype(np.float32),
        item_vectors=np.ascontiguousarray(np.asarray(kernel).T, dtype=np.float32),
        item_bias=np.asarray(bias, dtype=np.float32),
    )


class EpochHook(keras.callbacks.Callback):
    """Calls ``on_epoch(epoch, logs, model)`` and drives an optional rich progress bar."""

    def __init__(self, steps_per_epoch: int, epochs: int, on_epoch=None, progress=None):
        super().__init__()
        self.steps, self.epochs, self.on_epoch, self.progress = steps_per_epoch, epochs, on_epoch, progress
        self.task = None

    def on_train_begin(self, logs=None):
        if self.progress is not None:
            self.task = self.progress.add_task("training", total=self.steps * self.epochs, info="")

    def on_train_batch_end(self, batch, logs=None):
        if self.task is not None and batch % 10 == 0:
            self.progress.update(self.task, completed=self.epoch_base + batch + 1)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_base = epoch * self.steps
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs["epoch_seconds"] = time.perf_counter() - self.t0
        extra = self.on_epoch(epoch, logs, self.model) if self.on_epoch else {}
        logs.update(extra or {})
        if self.task is not None:
            info = " ".join(f"{k}={v:.4f}" for k, v in logs.items() if k != "epoch_seconds")
            self.progress.update(
                self.task, completed=(epoch + 1) * self.steps, description=f"epoch {epoch + 1}/{self.epochs}", info=info
            )


def train(split: Split, cfg: ModelConfig, on_epoch=None, progress=None) -> keras.Model:
    """Fit the two-tower model on the training part of a leave-one-out split."""
    set_seed(cfg.seed)
    model = build_model(split.user_ids, split.n_items, cfg)
    x = split.user_ids[split.train_users]
    y = split.train_items
    steps = int(np.ceil(len(x) / cfg.batch_size))
    hook = EpochHook(steps, cfg.epochs, on_epoch=on_epoch, progress=progress)
    model.fit(x, y, batch_size=cfg.batch_size, epochs=cfg.epochs, shuffle=True, verbose=0, callbacks=[hook])
    return model

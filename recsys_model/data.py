"""Interaction data: MovieLens loaders, the common in-memory form, and the leave-one-out split.

Every loader returns an :class:`Interactions` object: a pandas DataFrame with the columns
``user_id`` (int64), ``item_id`` (int64) and ``timestamp`` (int64), one row per interaction.
Feedback is implicit: any rating, whatever its value, counts as one interaction; the rating
value itself is parsed (so a malformed one is reported) and then dropped.

Supported formats (``load_movielens`` detects them from a directory or a file):

* ml-100k ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``, no header;
* ml-1m / ml-10m ``ratings.dat``: ``user::item::rating::timestamp``, no header;
* ml-latest(-small) / ml-20m / ml-25m ``ratings.csv``: header ``userId,movieId,rating,timestamp``;
* RecBole atomic ``.inter`` files (``load_inter``): a typed header ``name:type`` (tab separated),
  of which ``user_id`` and ``item_id`` (integer tokens) are required and ``timestamp`` is used
  when present; other columns are ignored.

Loading is all-or-nothing: a missing, unreadable, empty or malformed file raises
:class:`DataFormatError` naming the file and, where it applies, the first bad line. A file is
never partially loaded.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from xregion.errors import XRegionError

COLUMNS = ["user_id", "item_id", "timestamp"]

# File name -> format name, in the order we look for them inside a directory.
KNOWN_FILES = {"u.data": "ml-100k", "ratings.dat": "ml-1m", "ratings.csv": "ml-latest"}
INTER_SUFFIX = ".inter"
CSV_HEADER = ["userId", "movieId", "rating", "timestamp"]


class DataFormatError(XRegionError, ValueError):
    """A data file is missing, unreadable, empty or not in the expected format."""


@dataclass
class Interactions:
    """Implicit-feedback interactions plus a description of where they came from."""

    df: pd.DataFrame
    name: str
    source: str
    fmt: str
    extra: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return int(self.df["user_id"].nunique())

    @property
    def n_items(self) -> int:
        return int(self.df["item_id"].nunique())

    def __len__(self) -> int:
        return len(self.df)

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(pd.util.hash_pandas_object(self.df[COLUMNS], index=False).values.tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        """A JSON-able description, logged to MLflow with every training run."""
        n_u, n_i, n = self.n_users, self.n_items, len(self)
        per_user = self.df.groupby("user_id").size()
        per_item = self.df.groupby("item_id").size().sort_values(ascending=False)
        top10 = int(per_item.iloc[: max(1, n_i // 10)].sum())
        return {
            "name": self.name,
            "source": self.source,
            "format": self.fmt,
            "feedback": "implicit (every rating counts as one interaction)",
            "n_interactions": n,
            "n_users": n_u,
            "n_items": n_i,
            "density": round(n / float(n_u * n_i), 6) if n_u and n_i else 0.0,
            "interactions_per_user_min": int(per_user.min()),
            "interactions_per_user_median": float(per_user.median()),
            "interactions_per_user_max": int(per_user.max()),
            "share_of_interactions_on_top_10pct_items": round(top10 / n, 4) if n else 0.0,
            "timestamp_min": int(self.df["timestamp"].min()),
            "timestamp_max": int(self.df["timestamp"].max()),
            "digest": self.digest(),
            **self.extra,
        }


# --------------------------------------------------------------------------- loaders


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DataFormatError(f"{path}: file does not exist")
    if not path.is_file():
        raise DataFormatError(f"{path}: not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read file: {e.strerror or e}") from e
    if b"\x00" in raw[:65536]:
        raise DataFormatError(f"{path}: looks like a binary file, expected text ratings")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    if not text.strip():
        raise DataFormatError(f"{path}: file is empty")
    return text


def _fail_line(path: Path, lines: list[str], lineno: int, why: str) -> DataFormatError:
    shown = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return DataFormatError(f"{path}: line {lineno}: {why}: {shown!r}")


def _parse_delimited(path: Path, text: str, sep: str, header: list[str] | None, fmt: str) -> pd.DataFrame:
    """Strictly parse ``user sep item sep rating sep timestamp`` lines."""
    lines = text.splitlines()
    first = 0
    if header is not None:
        got = [c.strip() for c in lines[0].split(sep)]
        if got != header:
            raise DataFormatError(
                f"{path}: expected header {sep.join(header)!r} for {fmt} ratings, got {lines[0][:80]!r}"
            )
        first = 1
    body = lines[first:]
    # Blank lines (typically a trailing newline) are tolerated; anything else must parse.
    keep = [i for i, ln in enumerate(body) if ln.strip()]
    if not keep:
        raise DataFormatError(f"{path}: no ratings in file (header only)")
    rows = [body[i] for i in keep]
    if sep == "::":
        # The C parser cannot take a multi-char separator; "::" -> "\t" is safe because
        # MovieLens ratings.dat fields are integers/decimals only (a stray tab is caught below).
        if any("\t" in r for r in rows):
            i = next(i for i, r in zip(keep, rows, strict=True) if "\t" in r)
            raise _fail_line(path, lines, first + i + 1, f"unexpected tab in {fmt} ratings")
        rows = [r.replace("::", "\t") for r in rows]
        csep = "\t"
    else:
        csep = sep
    nfields = np.fromiter((r.count(csep) + 1 for r in rows), dtype=np.int64, count=len(rows))
    bad = np.flatnonzero(nfields != 4)
    if bad.size:
        i = int(bad[0])
        raise _fail_line(
            path,
            lines,
            first + keep[i] + 1,
            f"expected 4 fields separated by {sep!r} ({fmt}), found {int(nfields[i])}",
        )
    df = pd.read_csv(
        io.StringIO("\n".join(rows)),
        sep=csep,
        header=None,
        names=["u", "i", "r", "t"],
        dtype=str,
        keep_default_na=False,
        engine="c",
    )
    line_of = np.asarray(keep, dtype=np.int64) + first + 1
    cols = _numeric_columns(
        path,
        lines,
        line_of,
        [
            (df["u"], "user id", "int"),
            (df["i"], "item id", "int"),
            (df["r"], "rating", "float"),
            (df["t"], "timestamp", "int"),
        ],
    )
    return pd.DataFrame({"user_id": cols[0], "item_id": cols[1], "timestamp": cols[3]})


def _numeric_columns(path: Path, lines: list[str], line_of: np.ndarray, specs) -> list[np.ndarray]:
    """Parse string columns strictly: ``int`` = non-negative integer, ``float`` = any number.

    ``line_of[row]`` is the 1-based file line of a row, so the first bad value is reported
    with its line; nothing is returned unless every value of every column parses.
    """
    out = []
    for raw, name, kind in specs:
        s = raw.str.strip()
        num = pd.to_numeric(s, errors="coerce")
        bad_mask = num.isna().to_numpy().copy()
        if kind == "int":
            ok = ~bad_mask
            bad_mask[ok] = (num[ok] != np.floor(num[ok])).to_numpy() | (num[ok] < 0).to_numpy()
        if bad_mask.any():
            i = int(np.flatnonzero(bad_mask)[0])
            want = "a non-negative integer" if kind == "int" else "a number"
            raise _fail_line(path, lines, int(line_of[i]), f"{name} {s.iloc[i]!r} is not {want}")
        out.append(num.to_numpy(dtype=np.int64) if kind == "int" else num.to_numpy(dtype=np.float64))
    return out


INTER_TYPES = ("token", "token_seq", "float", "float_seq")


def _inter_header(path: Path, first_line: str) -> list[str]:
    """Names of a RecBole ``.inter`` header (``name:type`` fields); checks types and required names."""
    names = []
    for fld in first_line.split("\t"):
        name, colon, typ = fld.strip().rpartition(":")
        if not colon or not name or typ not in INTER_TYPES:
            raise DataFormatError(
                f"{path}: line 1: RecBole header fields must be 'name:type' with type one of "
                f"{', '.join(INTER_TYPES)}; got {fld.strip()!r}"
            )
        names.append(name)
    missing = [n for n in ("user_id", "item_id") if n not in names]
    if missing:
        raise DataFormatError(
            f"{path}: line 1: RecBole header lacks {' and '.join(missing)} (got {', '.join(names)}); "
            "rename the user and item columns to user_id:token and item_id:token"
        )
    return names


def _parse_inter(path: Path, text: str) -> pd.DataFrame:
    """Strictly parse a RecBole atomic ``.inter`` file with integer user and item tokens.

    Without a ``timestamp`` column the file order is the time order. Float timestamps are
    truncated to whole units (ties then fall back to file order, as in the split).
    """
    lines = text.splitlines()
    names = _inter_header(path, lines[0])
    keep = [i for i in range(1, len(lines)) if lines[i].strip()]
    if not keep:
        raise DataFormatError(f"{path}: no interactions in file (header only)")
    rows = [lines[i] for i in keep]
    nfields = np.fromiter((r.count("\t") + 1 for r in rows), dtype=np.int64, count=len(rows))
    bad = np.flatnonzero(nfields != len(names))
    if bad.size:
        i = int(bad[0])
        raise _fail_line(
            path, lines, keep[i] + 1, f"expected {len(names)} tab-separated fields, found {int(nfields[i])}"
        )
    df = pd.read_csv(
        io.StringIO("\n".join(rows)), sep="\t", header=None, names=names, dtype=str, keep_default_na=False, engine="c"
    )
    specs = [(df["user_id"], "user_id token", "int"), (df["item_id"], "item_id token", "int")]
    if "timestamp" in names:
        specs.append((df["timestamp"], "timestamp", "float"))
    if "rating" in names:
        specs.append((df["rating"], "rating", "float"))
    cols = _numeric_columns(path, lines, np.asarray(keep, dtype=np.int64) + 1, specs)
    ts = np.floor(cols[2]).astype(np.int64) if "timestamp" in names else np.arange(len(rows), dtype=np.int64)
    return pd.DataFrame({"user_id": cols[0], "item_id": cols[1], "timestamp": ts})


def detect_format(path: Path) -> str:
    """Return the format name for a ratings file, from its name or else from its first line."""
    if path.name in KNOWN_FILES:
        return KNOWN_FILES[path.name]
    if path.suffix == INTER_SUFFIX:
        return "recbole"
    text_head = _read_text(path).lstrip().splitlines()[0]
    if text_head.replace(" ", "").lower().startswith("userid,movieid"):
        return "ml-latest"
    if "::" in text_head:
        return "ml-1m"
    if ":token" in text_head:
        return "recbole"
    if "\t" in text_head:
        return "ml-100k"
    raise DataFormatError(
        f"{path}: unrecognised ratings format; expected ml-100k u.data (tab separated), "
        f"ml-1m/ml-10m ratings.dat ('::' separated), ml-latest ratings.csv or a RecBole .inter file"
    )


def _load_file(path: Path, fmt: str) -> pd.DataFrame:
    text = _read_text(path)
    if fmt == "ml-100k":
        return _parse_delimited(path, text, "\t", None, fmt)
    if fmt == "ml-1m":
        return _parse_delimited(path, text, "::", None, fmt)
    if fmt == "ml-latest":
        return _parse_delimited(path, text, ",", CSV_HEADER, fmt)
    if fmt == "recbole":
        return _parse_inter(path, text)
    raise DataFormatError(f"{path}: unknown format {fmt!r}")


def load_movielens(path: str | os.PathLike, fmt: str | None = None) -> Interactions:
    """Load MovieLens ratings as implicit feedback from a dataset directory or a ratings file.

    A directory is searched for ``u.data``, ``ratings.dat``, ``ratings.csv`` then one ``*.inter``.
    ``fmt`` (``ml-100k``, ``ml-1m``, ``ml-latest``, ``recbole``) overrides detection for a file
    with another name. Duplicate (user, item) pairs are kept once, at their earliest timestamp.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataFormatError(f"{p}: no such file or directory")
    if p.is_dir():
        found = [p / n for n in KNOWN_FILES if (p / n).is_file()] + sorted(p.glob("*" + INTER_SUFFIX))
        if not found:
            raise DataFormatError(
                f"{p}: directory contains none of {', '.join(KNOWN_FILES)} (MovieLens ratings files) "
                f"nor a RecBole *{INTER_SUFFIX} file"
            )
        p = found[0]
    fmt = fmt or detect_format(p)
    df = _load_file(p, fmt)
    df = (
        df.sort_values(["user_id", "timestamp"], kind="stable")
        .drop_duplicates(["user_id", "item_id"], keep="first")
        .reset_index(drop=True)
    )
    name = p.stem if fmt == "recbole" else (p.parent.name or p.name)
    return Interactions(df=df, name=name, source=str(p.resolve()), fmt=fmt)


def load_inter(path: str | os.PathLike) -> Interactions:
    """Load a RecBole atomic ``.inter`` file (any name) as implicit feedback."""
    return load_movielens(path, fmt="recbole")


# --------------------------------------------------------------------------- split


@dataclass
class Split:
    """Leave-one-out split with dense indices.

    ``user_ids[u]``/``item_ids[i]`` map dense indices back to raw ids. ``train_*`` hold every
    interaction except each evaluated user's latest one, which is ``test_items[k]`` for user
    ``test_users[k]``. Users with a single interaction stay in training and are not evaluated.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    train_users: np.ndarray
    train_items: np.ndarray
    test_users: np.ndarray
    test_items: np.ndarray
    all_users: np.ndarray  # every interaction (train + held out), dense indices
    all_items: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def leave_one_out(data: Interactions) -> Split:
    """Hold out each user's latest interaction (ties broken by file order, last row wins)."""
    df = data.df
    if df.empty:
        raise DataFormatError(f"{data.source}: no interactions")
    user_ids, u = np.unique(df["user_id"].to_numpy(), return_inverse=True)
    item_ids, i = np.unique(df["item_id"].to_numpy(), return_inverse=True)
    ts = df["timestamp"].to_numpy()
    order = np.lexsort((np.arange(len(df)), ts, u))  # by user, then time, then row order
    u, i = u[order], i[order]
    last = np.ones(len(u), dtype=bool)
    last[:-1] = u[1:] != u[:-1]
    counts = np.bincount(u, minlength=len(user_ids))
    held = last & (counts[u] >= 2)
    return Split(
        user_ids=user_ids.astype(np.int64),
        item_ids=item_ids.astype(np.int64),
        train_users=u[~held].astype(np.int64),
        train_items=i[~held].astype(np.int64),
        test_users=u[held].astype(np.int64),
        test_items=i[held].astype(np.int64),
        all_users=u.astype(np.int64),
        all_items=i.astype(np.int64),
    )

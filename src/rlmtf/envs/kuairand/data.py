"""KuaiRand-Pure: read, validate and encode the log, the user features and the video features.

Two directory layouts are accepted, checked in this order:

- **shared** (``shared/data/kuairand_pure``): ``log_standard_20220425_to_20220508_pure.parquet`` plus the
  optional ``derived_user_last50_sequences_until_20220424.parquet`` (pre-period history);
- **official** (the release archive's ``KuaiRand-Pure/data``): ``log_standard_4_22_to_5_08_pure.csv``
  (rows of 2022-04-22..24 are pre-period history) and the optional ``log_standard_4_08_to_4_21_pure.csv``;
  the pre-period history is then derived from those rows the same way (last <= 50 watched, long-viewed
  and liked videos of each user before 2022-04-25).

Both need ``user_features_pure.csv`` and ``video_features_basic_pure.csv``. Every problem is a
:class:`KuaiRandDataError` that names the file and the column: a missing file or column, a wrong
dtype, null/NaN in a required column, a non-binary flag, a negative time, a date that is not a
calendar day of the file's range, an id of the log missing from a feature table, an unreadable file.

Split: train = the first 10 days 2022-04-25..05-04, test = 2022-05-05..05-08.

Encoding (float32, one row per user / video, ``names`` list every column):

- categorical (``user_active_degree``, ``onehot_feat0..17``, ``video_type``, ``upload_type``,
  ``music_type``): one-hot over the ``onehot_top_k`` most frequent values, plus ``=other`` when there
  are more values and ``=missing`` when the column has nulls;
- ``*_range`` columns: ordinal position in the documented order, scaled to [0, 1];
- counts (follow / fans / friend numbers, register_days): log1p; ``is_*`` flags: 0/1;
- video: log duration in seconds (median-imputed, with a missing flag), log aspect ratio and log
  pixel count, upload age in days before 2022-04-25, multi-hot over every tag plus the tag count.

The official per-video statistics (``video_features_statistic_pure.csv``, or the ``*_plus_statistic``
parquet) are **not** read: they are aggregated over the whole period, test days included, so any model
fed with them would leak the test labels. ``features.py`` recomputes such statistics from the
training days only.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from rlmtf.envs.kuairand.paths import (
    LOG_FILE,
    OFFICIAL_LOG_FILE,
    OFFICIAL_PRE_LOG_FILE,
    PRE_HISTORY_FILE,
    USER_FILE,
    VIDEO_FILE,
    KuaiRandDataError,
    default_kuairand_dir,
)

FIRST_DAY = dt.date(2022, 4, 25)
N_TRAIN_DAYS = 10
N_TEST_DAYS = 4
PRE_HISTORY_LEN = 50
#: Inclusive date range each log file may hold.
DATE_RANGES: dict[str, tuple[dt.date, dt.date]] = {
    LOG_FILE: (dt.date(2022, 4, 25), dt.date(2022, 5, 8)),
    OFFICIAL_LOG_FILE: (dt.date(2022, 4, 22), dt.date(2022, 5, 8)),
    OFFICIAL_PRE_LOG_FILE: (dt.date(2022, 4, 8), dt.date(2022, 4, 21)),
}

LOG_COLUMNS = ("user_id", "video_id", "date", "time_ms", "is_click", "is_like", "is_follow", "is_comment",
               "is_forward", "long_view", "play_time_ms", "duration_ms")
BINARY_LOG_COLUMNS = ("is_click", "is_like", "is_follow", "is_comment", "is_forward", "long_view")
ONEHOT_FEATS = tuple(f"onehot_feat{k}" for k in range(18))
#: Documented order of the range columns (KuaiRand README); values outside are an error.
RANGE_ORDERS: dict[str, tuple[str, ...]] = {
    "follow_user_num_range": ("0", "(0,10]", "(10,50]", "(50,100]", "(100,150]", "(150,250]", "(250,500]", "500+"),
    "fans_user_num_range": ("0", "[1,10)", "[10,100)", "[100,1k)", "[1k,5k)", "[5k,1w)", "[1w,10w)", "[10w,100w)",
                            "[100w,1000w)"),
    "friend_user_num_range": ("0", "[1,5)", "[5,30)", "[30,60)", "[60,120)", "[120,250)", "250+"),
    "register_days_range": ("0-7", "8-14", "15-30", "31-60", "61-90", "91-180", "181-365", "366-730", "730+"),
}
USER_COUNTS = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")
USER_FLAGS = ("is_lowactive_period", "is_live_streamer", "is_video_author")
# column -> kind ("int", "num", "str"); the second set lists the columns that may hold nulls.
USER_SPEC: dict[str, str] = {"user_id": "int", "user_active_degree": "str", **dict.fromkeys(USER_FLAGS, "int"),
                             **dict.fromkeys(USER_COUNTS, "num"), **dict.fromkeys(RANGE_ORDERS, "str"),
                             **dict.fromkeys(ONEHOT_FEATS, "num")}
USER_NULLABLE = frozenset(ONEHOT_FEATS)
VIDEO_SPEC: dict[str, str] = {"video_id": "int", "video_type": "str", "upload_dt": "str", "upload_type": "str",
                              "video_duration": "num", "server_width": "num", "server_height": "num",
                              "music_type": "num", "tag": "str"}
VIDEO_NULLABLE = frozenset({"upload_dt", "video_duration", "server_width", "server_height", "music_type", "tag"})
PRE_SEQ_COLUMNS = ("watch_seq", "long_watch_seq", "like_seq")


# --- containers ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureTable:
    """Encoded entity features: row r describes the entity with id ``ids[r]``."""

    ids: np.ndarray  # (N,) int64
    x: np.ndarray  # (N, D) float32
    names: tuple[str, ...]  # (D,)

    def rows(self, ids: np.ndarray, what: str = "id") -> np.ndarray:
        """Row index of each id; an unknown id is an error."""
        lookup = np.full(int(self.ids.max()) + 1 if len(self.ids) else 1, -1, np.int64)
        lookup[self.ids] = np.arange(len(self.ids))
        ids = np.asarray(ids, np.int64)
        bad = (ids < 0) | (ids >= len(lookup))
        rows = np.where(bad, -1, lookup[np.clip(ids, 0, len(lookup) - 1)])
        if (rows < 0).any():
            first = ids[rows < 0][0]
            raise KuaiRandDataError(f"{what} {first} is not in the feature table ({int((rows < 0).sum())} unknown)")
        return rows


@dataclass(frozen=True)
class Interactions:
    """Logged impressions of one split; ``user``/``item`` are rows of the feature tables."""

    user: np.ndarray  # (n,) int64
    item: np.ndarray  # (n,) int64
    day: np.ndarray  # (n,) int64, days since 2022-04-25
    time_ms: np.ndarray  # (n,) int64
    click: np.ndarray  # (n,) int8, the remaining arrays likewise
    long_view: np.ndarray
    like: np.ndarray
    follow: np.ndarray
    comment: np.ndarray
    forward: np.ndarray
    play_time_ms: np.ndarray  # (n,) int64
    duration_ms: np.ndarray  # (n,) int64; 0 where the log does not know the duration

    def __len__(self) -> int:
        return len(self.user)

    def take(self, idx: np.ndarray) -> Interactions:
        return Interactions(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @property
    def ratio_known(self) -> np.ndarray:
        return self.duration_ms > 0

    @property
    def watch_ratio(self) -> np.ndarray:
        """play_time / duration, float32; NaN where the duration is unknown."""
        d = np.where(self.ratio_known, self.duration_ms, 1).astype(np.float64)
        return np.where(self.ratio_known, self.play_time_ms / d, np.nan).astype(np.float32)

    @property
    def finish(self) -> np.ndarray:
        """1 where play_time >= duration; NaN where the duration is unknown."""
        return np.where(self.ratio_known, (self.play_time_ms >= self.duration_ms).astype(np.float32), np.nan)

    @property
    def play_s(self) -> np.ndarray:
        return (self.play_time_ms / 1000.0).astype(np.float32)


@dataclass(frozen=True)
class PreHistory:
    """Each user's last <= 50 watched / long-viewed / liked videos before 2022-04-25, summed by tag."""

    history_len: np.ndarray  # (U,) float32 number of logged views before the window
    tag_counts: np.ndarray  # (U, 3, T) float32: watch, long_watch, like counts per tag
    list_len: np.ndarray  # (U, 3) float32 length of each list (videos of known rows)


@dataclass(frozen=True)
class KuaiRandData:
    """KuaiRand-Pure, validated and encoded."""

    root: Path
    layout: str  # "shared" or "official"
    users: FeatureTable
    items: FeatureTable
    item_tags: np.ndarray  # (I, T) float32 multi-hot (also inside items.x)
    tag_names: tuple[str, ...]
    item_duration_s: np.ndarray  # (I,) float32, median-imputed where unknown
    item_duration_known: np.ndarray  # (I,) bool
    train: Interactions  # 2022-04-25 .. 05-04
    test: Interactions  # 2022-05-05 .. 05-08
    pre_history: PreHistory | None

    def sample(self, max_train: int | None, max_test: int | None, seed: int = 0) -> KuaiRandData:
        """The same tables with at most ``max_train`` / ``max_test`` log rows, drawn at random in time order."""
        rng = np.random.default_rng(seed)

        def pick(x: Interactions, n: int | None) -> Interactions:
            if n is None or n >= len(x):
                return x
            return x.take(np.sort(rng.choice(len(x), n, replace=False)))

        return replace(self, train=pick(self.train, max_train), test=pick(self.test, max_test))

    def summary(self) -> dict:
        return {"root": str(self.root), "layout": self.layout, "users": len(self.users.ids),
                "items": len(self.items.ids), "user_features": len(self.users.names),
                "item_features": len(self.items.names), "tags": len(self.tag_names),
                "train_rows": len(self.train), "test_rows": len(self.test),
                "pre_history_users": 0 if self.pre_history is None else int((self.pre_history.history_len > 0).sum())}


# --- reading and validation ---------------------------------------------------------------------------

def _read(path: Path, columns: tuple[str, ...] | None = None, str_columns: tuple[str, ...] = ()) -> pl.DataFrame:
    if not path.is_file():
        raise KuaiRandDataError(f"{path.name}: file not found in {path.parent}")
    try:
        if path.suffix == ".parquet":
            df = pl.read_parquet(path)
        else:
            df = pl.read_csv(path, infer_schema_length=None,
                             schema_overrides={c: pl.String for c in str_columns})
    except Exception as e:  # pyarrow / polars raise many types for truncated or corrupt files
        raise KuaiRandDataError(f"{path.name}: cannot read file ({type(e).__name__}: {e})") from e
    if columns is not None:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise KuaiRandDataError(f"{path.name}: missing column(s) {missing}")
    return df


def _check_columns(df: pl.DataFrame, name: str, spec: dict[str, str], nullable: frozenset[str]) -> None:
    missing = [c for c in spec if c not in df.columns]
    if missing:
        raise KuaiRandDataError(f"{name}: missing column(s) {missing}")
    for col, kind in spec.items():
        t = df.schema[col]
        ok = {"int": t.is_integer(), "num": t.is_numeric(), "str": t == pl.String}[kind]
        if not ok:
            want = {"int": "an integer", "num": "a numeric", "str": "a string"}[kind]
            raise KuaiRandDataError(f"{name}: column {col!r} has dtype {t}, expected {want} column")
        if col in nullable:
            continue
        s = df[col]
        bad = s.is_null()
        if t.is_float():
            bad = bad | s.is_nan()
        n_bad = int(bad.sum())
        if n_bad:
            first = int(bad.arg_true()[0])
            raise KuaiRandDataError(f"{name}: column {col!r} has {n_bad} null/NaN value(s) (first at row {first})")


def _check_log(df: pl.DataFrame, name: str, dates: tuple[dt.date, dt.date]) -> None:
    _check_columns(df, name, dict.fromkeys(LOG_COLUMNS, "int"), frozenset())
    for col in BINARY_LOG_COLUMNS:
        bad = ~df[col].is_in([0, 1])
        if bad.any():
            raise KuaiRandDataError(f"{name}: column {col!r} must be 0/1, found {df[col].filter(bad)[0]} "
                                    f"({int(bad.sum())} row(s))")
    for col in ("play_time_ms", "duration_ms"):
        bad = df[col] < 0
        if bad.any():
            raise KuaiRandDataError(f"{name}: column {col!r} has {int(bad.sum())} negative value(s)")
    lo, hi = dates
    allowed = [int((lo + dt.timedelta(days=k)).strftime("%Y%m%d")) for k in range((hi - lo).days + 1)]
    bad = ~df["date"].is_in(allowed)
    if bad.any():
        raise KuaiRandDataError(f"{name}: column 'date' has {int(bad.sum())} value(s) outside {allowed[0]}.."
                                f"{allowed[-1]} or not a calendar day (first: {df['date'].filter(bad)[0]})")


def _check_unique(df: pl.DataFrame, name: str, col: str) -> None:
    if df[col].n_unique() != df.height:
        raise KuaiRandDataError(f"{name}: column {col!r} has duplicate ids")


def find_layout(root: Path) -> str:
    """'shared' or 'official', by which log file ``root`` holds."""
    if (root / LOG_FILE).is_file():
        return "shared"
    if (root / OFFICIAL_LOG_FILE).is_file():
        return "official"
    raise KuaiRandDataError(f"{root}: no KuaiRand-Pure log found (expected {LOG_FILE} or {OFFICIAL_LOG_FILE})")


# --- encoding -------------------------------------------------------------------------------------------

def _value_name(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _onehot(s: pl.Series, top_k: int) -> tuple[np.ndarray, list[str]]:
    """One-hot over the top_k most frequent values (+ other, + missing); (N, k') float32 and names."""
    nonnull = s.drop_nulls()
    if nonnull.dtype.is_float():
        nonnull = nonnull.filter(~nonnull.is_nan())
    vc = nonnull.value_counts(sort=False)
    counts = sorted(zip(vc[s.name].to_list(), vc["count"].to_list(), strict=True),
                    key=lambda t: (-t[1], _value_name(t[0])))
    keep = sorted((v for v, _ in counts[:top_k]), key=lambda v: (isinstance(v, str), v))
    vals = s.to_list()
    missing = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in vals])
    index = {v: k for k, v in enumerate(keep)}
    slot = np.array([index.get(v, -1) for v in vals], np.int64)
    cols = [f"{s.name}={_value_name(v)}" for v in keep]
    other = len(counts) > top_k
    if other:
        cols.append(f"{s.name}=other")
    if missing.any():
        cols.append(f"{s.name}=missing")
    x = np.zeros((len(vals), len(cols)), np.float32)
    has = slot >= 0
    x[np.nonzero(has)[0], slot[has]] = 1.0
    if other:
        x[(~has) & (~missing), len(keep)] = 1.0
    if missing.any():
        x[missing, -1] = 1.0
    return x, cols


def _ordinal(s: pl.Series, order: tuple[str, ...], name: str) -> np.ndarray:
    pos = {v: k for k, v in enumerate(order)}
    bad = [v for v in s.unique().to_list() if v not in pos]
    if bad:
        raise KuaiRandDataError(f"{name}: column {s.name!r} has unknown value(s) {bad[:5]} (expected one of {order})")
    return np.array([pos[v] for v in s.to_list()], np.float32) / (len(order) - 1)


def _num(df: pl.DataFrame, col: str) -> np.ndarray:
    return df[col].cast(pl.Float64).fill_nan(None).to_numpy().astype(np.float64)


def _impute(x: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(x) if valid is None else valid & np.isfinite(x)
    fill = float(np.median(x[ok])) if ok.any() else 0.0
    return np.where(ok, x, fill), ~ok


def encode_users(df: pl.DataFrame, top_k: int = 12) -> FeatureTable:
    """Encode ``user_features_pure.csv`` (see the module docstring)."""
    blocks: list[np.ndarray] = []
    names: list[str] = []
    x, n = _onehot(df["user_active_degree"], top_k=16)
    blocks.append(x)
    names += n
    for c in USER_FLAGS:
        blocks.append((df[c].to_numpy() == 1).astype(np.float32)[:, None])
        names.append(c)
    for c in USER_COUNTS:
        blocks.append(np.log1p(np.clip(_num(df, c), 0, None)).astype(np.float32)[:, None])
        names.append(f"log1p_{c}")
    for c, order in RANGE_ORDERS.items():
        blocks.append(_ordinal(df[c], order, USER_FILE)[:, None])
        names.append(f"{c}_ordinal")
    for c in ONEHOT_FEATS:
        x, n = _onehot(df[c], top_k)
        blocks.append(x)
        names += n
    return FeatureTable(df["user_id"].to_numpy().astype(np.int64), np.concatenate(blocks, 1), tuple(names))


def _tags(df: pl.DataFrame) -> tuple[np.ndarray, tuple[str, ...]]:
    lists = [[] if v is None else [t.strip() for t in v.split(",") if t.strip()] for v in df["tag"].to_list()]
    vocab = sorted({t for ts in lists for t in ts}, key=lambda t: (not t.isdigit(), int(t) if t.isdigit() else 0, t))
    index = {t: k for k, t in enumerate(vocab)}
    mh = np.zeros((len(lists), len(vocab)), np.float32)
    for r, ts in enumerate(lists):
        for t in ts:
            mh[r, index[t]] = 1.0
    return mh, tuple(vocab)


def encode_videos(df: pl.DataFrame, top_k: int = 12) -> tuple[FeatureTable, np.ndarray, tuple[str, ...], np.ndarray,
                                                                np.ndarray]:
    """Encode ``video_features_basic_pure.csv``: (table, tag multi-hot, tag names, duration s, duration known)."""
    blocks: list[np.ndarray] = []
    names: list[str] = []
    for c in ("video_type", "upload_type", "music_type"):
        x, n = _onehot(df[c], top_k)
        blocks.append(x)
        names += n
    dur_ms = _num(df, "video_duration")
    dur_ms, dur_missing = _impute(dur_ms, np.nan_to_num(dur_ms) > 0)
    dur_s = (dur_ms / 1000.0).astype(np.float32)
    w, _ = _impute(_num(df, "server_width"), np.nan_to_num(_num(df, "server_width")) > 0)
    h, _ = _impute(_num(df, "server_height"), np.nan_to_num(_num(df, "server_height")) > 0)
    age = df.select((pl.lit(FIRST_DAY) - pl.col("upload_dt").str.strptime(pl.Date, "%Y-%m-%d", strict=False))
                    .dt.total_days().cast(pl.Float64)).to_series().fill_null(np.nan).to_numpy()
    age, _ = _impute(age)
    mh, tag_names = _tags(df)
    cols = [np.log(dur_s), dur_missing, np.log(h / w), np.log(h * w), age]
    blocks += [np.stack(cols, 1).astype(np.float32), mh, (mh.sum(1) == 0).astype(np.float32)[:, None],
               mh.sum(1, keepdims=True)]
    names += ["log_duration_s", "duration_missing", "log_aspect_h_over_w", "log_pixels", "upload_age_days",
              *(f"tag={t}" for t in tag_names), "tag=missing", "n_tags"]
    table = FeatureTable(df["video_id"].to_numpy().astype(np.int64), np.concatenate(blocks, 1).astype(np.float32),
                         tuple(names))
    return table, mh, tag_names, dur_s, ~dur_missing


def _interactions(df: pl.DataFrame, users: FeatureTable, items: FeatureTable, name: str) -> Interactions:
    day = df.select((pl.col("date").cast(pl.String).str.strptime(pl.Date, "%Y%m%d") - pl.lit(FIRST_DAY))
                    .dt.total_days()).to_series()
    try:
        u = users.rows(df["user_id"].to_numpy(), "user_id")
        i = items.rows(df["video_id"].to_numpy(), "video_id")
    except KuaiRandDataError as e:
        raise KuaiRandDataError(f"{name}: {e} ({USER_FILE} / {VIDEO_FILE})") from None

    def col(c: str, t) -> np.ndarray:
        return df[c].to_numpy().astype(t)

    return Interactions(user=u, item=i, day=day.to_numpy().astype(np.int64), time_ms=col("time_ms", np.int64),
                        click=col("is_click", np.int8), long_view=col("long_view", np.int8),
                        like=col("is_like", np.int8), follow=col("is_follow", np.int8),
                        comment=col("is_comment", np.int8), forward=col("is_forward", np.int8),
                        play_time_ms=col("play_time_ms", np.int64), duration_ms=col("duration_ms", np.int64))


def _pre_history(seqs: pl.DataFrame, users: FeatureTable, items: FeatureTable, item_tags: np.ndarray) -> PreHistory:
    """Tag counts of each user's pre-period lists; videos unknown to the catalogue are dropped."""
    n_u, n_i = len(users.ids), len(items.ids)
    known_users = seqs.filter(pl.col("user_id").is_in(users.ids.tolist()))
    urow = users.rows(known_users["user_id"].to_numpy())
    hist = np.zeros(n_u, np.float32)
    hist[urow] = known_users["history_len"].to_numpy().astype(np.float32)
    lookup = np.full(int(max(items.ids.max(), 0)) + 1, -1, np.int64)
    lookup[items.ids] = np.arange(n_i)
    counts = np.zeros((n_u, len(PRE_SEQ_COLUMNS), item_tags.shape[1]), np.float32)
    lens = np.zeros((n_u, len(PRE_SEQ_COLUMNS)), np.float32)
    for k, col in enumerate(PRE_SEQ_COLUMNS):
        ex = known_users.select(pl.Series("urow", urow), pl.col(col)).explode(col).drop_nulls()
        vid = ex[col].to_numpy().astype(np.int64)
        ok = (vid >= 0) & (vid < len(lookup))
        irow = np.where(ok, lookup[np.clip(vid, 0, len(lookup) - 1)], -1)
        ok &= irow >= 0
        m = sp.coo_matrix((np.ones(int(ok.sum()), np.float32), (ex["urow"].to_numpy()[ok], irow[ok])),
                          shape=(n_u, n_i)).tocsr()
        counts[:, k] = np.asarray(m @ item_tags, np.float32)
        lens[:, k] = np.asarray(m.sum(1), np.float32).ravel()
    return PreHistory(hist, counts, lens)


def derive_pre_sequences(log: pl.DataFrame, before: int = 20220425, n: int = PRE_HISTORY_LEN) -> pl.DataFrame:
    """The shared ``derived_user_last50_sequences_until_20220424`` table, from official log rows before ``before``."""
    pre = log.filter(pl.col("date") < before).sort(["user_id", "time_ms"])
    return pre.group_by("user_id").agg(
        pl.len().alias("history_len"),
        pl.col("video_id").tail(n).alias("watch_seq"),
        pl.col("video_id").filter(pl.col("long_view") == 1).tail(n).alias("long_watch_seq"),
        pl.col("video_id").filter(pl.col("is_like") == 1).tail(n).alias("like_seq"),
    )


def load_kuairand(data_dir: str | os.PathLike[str] | None = None, *, onehot_top_k: int = 12,
                  with_pre_history: bool = True) -> KuaiRandData:
    """Read, validate and encode KuaiRand-Pure from ``data_dir`` (default: ``default_kuairand_dir()``)."""
    if data_dir is None:
        data_dir = default_kuairand_dir()
        if data_dir is None:
            raise KuaiRandDataError("KuaiRand-Pure not found: pass a directory or set RLMTF_KUAIRAND_DIR")
    root = Path(data_dir)
    if not root.is_dir():
        raise KuaiRandDataError(f"{root}: not a directory")
    layout = find_layout(root)

    udf = _read(root / USER_FILE, str_columns=("user_active_degree", *RANGE_ORDERS))
    _check_columns(udf, USER_FILE, USER_SPEC, USER_NULLABLE)
    _check_unique(udf, USER_FILE, "user_id")
    vdf = _read(root / VIDEO_FILE, str_columns=("video_type", "upload_dt", "upload_type", "tag"))
    _check_columns(vdf, VIDEO_FILE, VIDEO_SPEC, VIDEO_NULLABLE)
    _check_unique(vdf, VIDEO_FILE, "video_id")
    users = encode_users(udf, onehot_top_k)
    items, tags, tag_names, dur_s, dur_known = encode_videos(vdf, onehot_top_k)

    seqs: pl.DataFrame | None = None
    if layout == "shared":
        log = _read(root / LOG_FILE)
        _check_log(log, LOG_FILE, DATE_RANGES[LOG_FILE])
        if with_pre_history and (root / PRE_HISTORY_FILE).is_file():
            seqs = _read(root / PRE_HISTORY_FILE, columns=("user_id", "history_len", *PRE_SEQ_COLUMNS))
            _check_columns(seqs, PRE_HISTORY_FILE, {"user_id": "int", "history_len": "int"}, frozenset())
        log_name = LOG_FILE
    else:
        log = _read(root / OFFICIAL_LOG_FILE)
        _check_log(log, OFFICIAL_LOG_FILE, DATE_RANGES[OFFICIAL_LOG_FILE])
        if with_pre_history:
            parts = [log.select(LOG_COLUMNS)]
            if (root / OFFICIAL_PRE_LOG_FILE).is_file():
                pre = _read(root / OFFICIAL_PRE_LOG_FILE)
                _check_log(pre, OFFICIAL_PRE_LOG_FILE, DATE_RANGES[OFFICIAL_PRE_LOG_FILE])
                parts.insert(0, pre.select(LOG_COLUMNS))
            seqs = derive_pre_sequences(pl.concat(parts))
        log = log.filter(pl.col("date") >= int(FIRST_DAY.strftime("%Y%m%d")))
        log_name = OFFICIAL_LOG_FILE

    log = log.select(LOG_COLUMNS).sort(["time_ms", "user_id"], maintain_order=True)
    inter = _interactions(log, users, items, log_name)
    is_train = inter.day < N_TRAIN_DAYS
    pre_history = _pre_history(seqs, users, items, tags) if seqs is not None and seqs.height else None
    return KuaiRandData(root=root, layout=layout, users=users, items=items, item_tags=tags, tag_names=tag_names,
                        item_duration_s=dur_s, item_duration_known=dur_known,
                        train=inter.take(np.nonzero(is_train)[0]), test=inter.take(np.nonzero(~is_train)[0]),
                        pre_history=pre_history)

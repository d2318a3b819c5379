"""KuaiRand-Pure grounding: loader validation on malformed fixtures, feature encoding, leave-one-day-out
statistics by hand, metrics by hand, archive unpacking, and a fast fit on a sample of the real log (AUC,
score ranges, save/load round trip, sampling against the analytic marginals, tampered files refused)."""

from __future__ import annotations

import dataclasses
import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from rlmtf.core.fusion import MTL_TASKS
from rlmtf.envs.kuairand.data import load_kuairand
from rlmtf.envs.kuairand.download import download, unpack_and_validate
from rlmtf.envs.kuairand.features import GROUPS, STAT_NAMES, FeatureBuilder
from rlmtf.envs.kuairand.fit import FitConfig, ModelFileError, fit_all, load_fitted
from rlmtf.envs.kuairand.metrics import auc, ece
from rlmtf.envs.kuairand.mtl import MTLConfig
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
from rlmtf.envs.kuairand.response import ResponseConfig

# --- a small synthetic KuaiRand-Pure with the official schema -------------------------------------------

N_USERS, N_VIDEOS, N_ROWS = 40, 25, 1200


def _users(rng: np.random.Generator) -> pl.DataFrame:
    n = N_USERS
    cols = {"user_id": np.arange(n) * 3 + 5,  # ids need not be contiguous
            "user_active_degree": rng.choice(["full_active", "high_active", "middle_active", "UNKNOWN"], n),
            "is_lowactive_period": np.zeros(n, np.int64), "is_live_streamer": rng.choice([-124, 1], n),
            "is_video_author": rng.integers(0, 2, n), "follow_user_num": rng.integers(0, 600, n),
            "follow_user_num_range": rng.choice(["0", "(0,10]", "500+"], n), "fans_user_num": rng.integers(0, 99, n),
            "fans_user_num_range": rng.choice(["0", "[1,10)", "[10,100)"], n),
            "friend_user_num": rng.integers(0, 9, n), "friend_user_num_range": rng.choice(["0", "[1,5)", "[5,30)"], n),
            "register_days": rng.integers(10, 3000, n), "register_days_range": rng.choice(["15-30", "730+"], n)}
    df = pl.DataFrame(cols)
    for k in range(18):
        v = rng.integers(0, 4 if k != 3 else 40, n).astype(np.float64)
        if k in (4, 12):
            v[:3] = np.nan
        df = df.with_columns(pl.Series(f"onehot_feat{k}", v).fill_nan(None))
    return df


def _videos(rng: np.random.Generator) -> pl.DataFrame:
    n = N_VIDEOS
    dur = rng.integers(5_000, 300_000, n).astype(np.float64)
    dur[0] = np.nan  # an unknown duration, as in the real table
    tags = [None if k == 1 else ",".join(map(str, rng.choice([3, 9, 39, 68], rng.integers(1, 3), replace=False)))
            for k in range(n)]
    df = pl.DataFrame({"video_id": np.arange(n) * 2, "author_id": rng.integers(0, 10, n),
                       "video_type": rng.choice(["NORMAL", "AD"], n), "upload_dt": ["2022-04-10"] * n,
                       "upload_type": rng.choice(["Web", "LongImport", "Kmovie"], n),
                       "visible_status": np.zeros(n), "video_duration": dur, "server_width": np.full(n, 720.0),
                       "server_height": np.full(n, 1280.0), "music_id": rng.integers(0, 99, n),
                       "music_type": np.full(n, 9.0), "tag": tags})
    return df.with_columns(pl.col("video_duration").fill_nan(None))


def _log(rng: np.random.Generator, users: pl.DataFrame, videos: pl.DataFrame, dates: list[int], n: int) -> pl.DataFrame:
    vid = rng.integers(0, N_VIDEOS, n)
    dur = np.nan_to_num(videos["video_duration"].to_numpy()[vid]).astype(np.int64)  # 0 where unknown
    play = np.where(rng.random(n) < 0.1, 0, (rng.lognormal(-1.5, 1.2, n) * np.maximum(dur, 1)).astype(np.int64))
    date = np.sort(rng.choice(dates, n))
    day0 = np.array([np.datetime64(f"{d // 10000}-{d // 100 % 100:02d}-{d % 100:02d}") for d in date])
    time_ms = day0.astype("datetime64[ms]").astype(np.int64) + rng.integers(0, 86_400_000, n)
    flag = lambda p: (rng.random(n) < p).astype(np.int64)  # noqa: E731
    return pl.DataFrame({"user_id": users["user_id"].to_numpy()[rng.integers(0, N_USERS, n)],
                         "video_id": videos["video_id"].to_numpy()[vid], "date": date, "hourmin": np.zeros(n, np.int64),
                         "time_ms": time_ms, "is_click": flag(0.4), "is_like": flag(0.05), "is_follow": flag(0.01),
                         "is_comment": flag(0.01), "is_forward": flag(0.01), "is_hate": np.zeros(n, np.int64),
                         "long_view": ((play >= 18_000) | ((play >= dur) & (dur > 0))).astype(np.int64),
                         "play_time_ms": play, "duration_ms": dur, "profile_stay_time": np.zeros(n, np.int64),
                         "comment_stay_time": np.zeros(n, np.int64), "is_profile_enter": np.zeros(n, np.int64),
                         "is_rand": np.zeros(n, np.int64), "tab": np.ones(n, np.int64)})


def _dates(first: str, last: str) -> list[int]:
    d = np.arange(np.datetime64(first), np.datetime64(last) + 1)
    return [int(str(x).replace("-", "")) for x in d]


def write_fixture(root: Path, layout: str = "shared", seed: int = 0) -> Path:
    """A valid KuaiRand-Pure directory of the given layout with synthetic values."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    users, videos = _users(rng), _videos(rng)
    users.write_csv(root / USER_FILE)
    videos.write_csv(root / VIDEO_FILE)
    if layout == "shared":
        _log(rng, users, videos, _dates("2022-04-25", "2022-05-08"), N_ROWS).write_parquet(root / LOG_FILE)
        pl.DataFrame({"user_id": users["user_id"][:30], "history_len": np.full(30, 7),
                      "last_time_ms": np.zeros(30, np.int64),
                      "watch_seq": [[0, 2, 4, 999]] * 30, "like_seq": [[2]] * 30, "long_watch_seq": [[4]] * 30},
                     ).write_parquet(root / PRE_HISTORY_FILE)
    else:
        _log(rng, users, videos, _dates("2022-04-22", "2022-05-08"), N_ROWS).write_csv(root / OFFICIAL_LOG_FILE)
        _log(rng, users, videos, _dates("2022-04-08", "2022-04-21"), 300).write_csv(root / OFFICIAL_PRE_LOG_FILE)
    return root


# --- metrics by hand --------------------------------------------------------------------------------------

def test_auc_and_ece_by_hand():
    # positives 0.4, 0.35; negatives 0.1, 0.8, 0.35: wins 0.4>0.1, 0.4>0.35, 0.35>0.1, tie 0.35=0.35 -> 3.5 / 6
    assert auc([0, 1, 1, 0, 0], [0.1, 0.4, 0.35, 0.8, 0.35]) == pytest.approx(3.5 / 6)
    assert np.isnan(auc([1, 1], [0.2, 0.3]))
    # two equal-count bins: (0.1, 0.3 -> observed 0) and (0.6, 0.8 -> observed 1): ECE = 0.5*0.2 + 0.5*0.3
    assert ece([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8], n_bins=2) == pytest.approx(0.25)


# --- loading, validation, encoding ----------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["shared", "official"])
def test_fixture_loads_and_encodes(tmp_path, layout):
    d = load_kuairand(write_fixture(tmp_path / layout, layout))
    assert d.layout == layout
    assert d.users.x.shape == (N_USERS, len(d.users.names)) and d.users.x.dtype == np.float32
    assert d.items.x.shape == (N_VIDEOS, len(d.items.names)) and d.items.x.dtype == np.float32
    assert np.isfinite(d.users.x).all() and np.isfinite(d.items.x).all()
    assert len(set(d.users.names)) == len(d.users.names)
    # each categorical one-hot block has exactly one 1 per row, nulls included (onehot_feat4 has nulls)
    for col in ("user_active_degree", "onehot_feat4", "onehot_feat3"):
        block = [k for k, n in enumerate(d.users.names) if n.startswith(col + "=")]
        assert np.array_equal(d.users.x[:, block].sum(1), np.ones(N_USERS))
    assert "onehot_feat4=missing" in d.users.names and "onehot_feat3=other" in d.users.names
    assert d.item_tags[1].sum() == 0 and d.items.x[1, d.items.names.index("tag=missing")] == 1
    assert d.items.x[0, d.items.names.index("duration_missing")] == 1 and np.isfinite(d.item_duration_s).all()
    assert set(d.train.day) <= set(range(10)) and set(d.test.day) <= set(range(10, 14))
    if layout == "shared":
        assert len(d.train) + len(d.test) == N_ROWS
    else:  # the official log's rows of 2022-04-22..24 are pre-period history, not training rows
        dates = pl.read_csv(tmp_path / layout / OFFICIAL_LOG_FILE)["date"]
        assert len(d.train) + len(d.test) == int((dates >= 20220425).sum()) < N_ROWS
    assert d.pre_history is not None and d.pre_history.tag_counts.shape == (N_USERS, 3, len(d.tag_names))
    if layout == "shared":  # video 999 is not in the catalogue and is dropped from the lists
        assert d.pre_history.list_len[0].tolist() == [3, 1, 1]


def _broken(tmp_path: Path, what: str) -> Path:
    root = write_fixture(tmp_path / "d")
    log = pl.read_parquet(root / LOG_FILE)
    if what == "missing column":
        log.drop("long_view").write_parquet(root / LOG_FILE)
    elif what == "nan":
        u = pl.read_csv(root / USER_FILE)
        u.with_columns(pl.when(pl.col("user_id") == 8).then(None).otherwise(pl.col("register_days"))
                       .alias("register_days")).write_csv(root / USER_FILE)
    elif what == "dtype":
        v = pl.read_csv(root / VIDEO_FILE)
        v.with_columns(pl.col("video_duration").cast(pl.String).fill_null("n/a")).write_csv(root / VIDEO_FILE)
    elif what == "date":
        log.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(20220520).otherwise(pl.col("date"))
                         .alias("date")).write_parquet(root / LOG_FILE)
    elif what == "not a day":
        log.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(20220432).otherwise(pl.col("date"))
                         .alias("date")).write_parquet(root / LOG_FILE)
    elif what == "binary":
        log.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(2).otherwise(pl.col("is_like"))
                         .alias("is_like")).write_parquet(root / LOG_FILE)
    elif what == "unknown user":
        log.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(99999).otherwise(pl.col("user_id"))
                         .alias("user_id")).write_parquet(root / LOG_FILE)
    elif what == "truncated":
        raw = (root / LOG_FILE).read_bytes()
        (root / LOG_FILE).write_bytes(raw[: len(raw) // 2])
    elif what == "missing file":
        (root / VIDEO_FILE).unlink()
    return root


@pytest.mark.parametrize(("what", "expected"), [
    ("missing column", [LOG_FILE, "missing column", "long_view"]),
    ("nan", [USER_FILE, "register_days", "null/NaN"]),
    ("dtype", [VIDEO_FILE, "video_duration", "dtype"]),
    ("date", [LOG_FILE, "'date'", "20220520"]),
    ("not a day", [LOG_FILE, "'date'", "20220432"]),
    ("binary", [LOG_FILE, "is_like", "0/1"]),
    ("unknown user", [LOG_FILE, "user_id 99999"]),
    ("truncated", [LOG_FILE, "cannot read"]),
    ("missing file", [VIDEO_FILE, "not found"]),
])
def test_malformed_fixture_is_refused_with_a_clear_error(tmp_path, what, expected):
    with pytest.raises(KuaiRandDataError) as e:
        load_kuairand(_broken(tmp_path, what))
    for part in expected:
        assert part in str(e.value), str(e.value)


def test_leave_one_day_out_statistics_by_hand(tmp_path):
    d = load_kuairand(write_fixture(tmp_path / "d"))
    fb = FeatureBuilder.fit(d)
    x = d.train
    j = 17
    u, day = x.user[j], x.day[j]
    other = (x.user == u) & (x.day != day)
    g = fb.groups(x.user[[j]], x.item[[j]], ("user_stats",), day=x.day[[j]])["user_stats"][0]
    a = fb.cfg.smoothing
    assert g[0] == pytest.approx(np.log1p(other.sum() / (fb.n_days - 1)), rel=1e-6)
    lv = (x.long_view[other].sum() + a * fb.prior["long_view"]) / (other.sum() + a)
    assert g[STAT_NAMES.index("logit_long_view")] == pytest.approx(np.log(lv / (1 - lv)), rel=1e-5)
    # serving (test rows) uses every training day
    s = fb.groups(x.user[[j]], x.item[[j]], ("user_stats",))["user_stats"][0]
    assert s[0] == pytest.approx(np.log1p((x.user == u).sum() / fb.n_days), rel=1e-6)
    m = fb.matrix(x.user, x.item, GROUPS, day=x.day)
    assert m.shape == (len(x), len(fb.feature_names(GROUPS))) and np.isfinite(m).all()


# --- the release archive -------------------------------------------------------------------------------

def _official_archive(tmp_path: Path, kind: str) -> Path:
    src = write_fixture(tmp_path / "src", "official")
    path = tmp_path / ("KuaiRand-Pure.tar.gz" if kind == "tar" else "KuaiRand-Pure.zip")
    if kind == "tar":
        with tarfile.open(path, "w:gz") as t:
            t.add(src, arcname="KuaiRand-Pure/data")
    else:
        with zipfile.ZipFile(path, "w") as z:
            for f in src.iterdir():
                z.write(f, f"KuaiRand-Pure/data/{f.name}")
    return path


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_unpack_and_validate_the_official_layout(tmp_path, kind):
    archive = _official_archive(tmp_path, kind)
    data_dir = unpack_and_validate(archive, tmp_path / "out")
    assert data_dir == tmp_path / "out" / "KuaiRand-Pure" / "data"
    assert load_kuairand(data_dir).layout == "official"


def test_download_fetches_then_validates(tmp_path):
    archive = _official_archive(tmp_path, "tar")
    seen = []

    def fetch(url: str, path: Path) -> Path:
        seen.append(url)
        shutil.copy(archive, path)
        return path

    data_dir = download(tmp_path / "dl", fetch=fetch, log=lambda s: None)
    assert seen and seen[0].endswith("KuaiRand-Pure.tar.gz")
    assert (data_dir / OFFICIAL_LOG_FILE).is_file() and not (tmp_path / "dl" / "KuaiRand-Pure.tar.gz").exists()


def test_archive_escaping_dest_or_malformed_is_refused(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as t:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 3
        t.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(KuaiRandDataError, match="outside"):
        unpack_and_validate(evil, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists()
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(_official_archive(tmp_path, "tar").read_bytes()[:500])
    with pytest.raises(KuaiRandDataError, match="broken.tar.gz"):
        unpack_and_validate(broken, tmp_path / "out2")


# --- the real data ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kuairand_dir() -> Path:
    d = default_kuairand_dir()
    if d is None or not (Path(d) / LOG_FILE).is_file():
        pytest.skip("KuaiRand-Pure not found (shared/data/kuairand_pure or $RLMTF_KUAIRAND_DIR)")
    return Path(d)


def test_loader_on_the_shared_copy(kuairand_dir):
    d = load_kuairand(kuairand_dir)
    assert (len(d.train), len(d.test)) == (171_671, 56_658)  # 2022-04-25..05-04 / 05-05..05-08
    assert d.users.x.shape[0] == 27_285 and d.items.x.shape[0] == 7_583
    assert np.isfinite(d.users.x).all() and np.isfinite(d.items.x).all()
    assert d.train.day.min() == 0 and d.train.day.max() == 9 and d.test.day.min() == 10 and d.test.day.max() == 13
    assert d.pre_history is not None and int((d.pre_history.history_len > 0).sum()) == 26_469
    assert abs(float(np.nanmean(np.concatenate([d.train.watch_ratio, d.test.watch_ratio]))) - 0.344) < 0.01
    # the official whole-period statistics are not among the features
    assert not any("play_cnt" in n or "show_cnt" in n for n in d.items.names)


FAST = FitConfig(response=ResponseConfig(hidden=(64, 32), epochs=3, batch_size=512),
                 mtl=MTLConfig(hidden=(16,), epochs=2, batch_size=512), max_train_rows=20_000, max_test_rows=8_000)


@pytest.fixture(scope="module")
def fitted(kuairand_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("kuairand_fit")
    report = fit_all(kuairand_dir, out, FAST, log=lambda s: None)
    return out, report


def test_fast_fit_beats_chance_on_held_out_days(fitted):
    _, report = fitted
    assert report["data"]["train_rows"] == 20_000 and report["data"]["test_rows"] == 8_000
    assert report["response"]["long_view"]["auc"] > 0.6
    assert report["response"]["long_view_from_watch"]["auc"] > 0.6
    assert report["response"]["like"]["auc"] > 0.6
    assert report["mtl"]["valid"]["auc"] > 0.6
    assert set(report["mtl_vs_response_spearman"]) == set(MTL_TASKS)
    assert torch.get_num_threads() >= 1 and report["environment"]["torch_threads"] == 1


def test_mtl_scores_and_round_trip(fitted):
    out, _ = fitted
    a, b = load_fitted(out), load_fitted(out)
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, a.features.n_users, 300), rng.integers(0, a.features.n_items, 300)
    s = a.mtl.scores(u, i)
    assert s.shape == (300, len(MTL_TASKS)) and a.mtl.tasks == MTL_TASKS
    assert np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()
    # the platform's model is a different one: no user-tag affinity, no pre-period history
    assert not {"cross", "pre"} & set(a.mtl.cfg.groups) and {"cross", "pre"} <= set(a.response.cfg.groups)
    assert np.array_equal(s, b.mtl.scores(u, i))
    ra, rb = a.response.predict(u, i), b.response.predict(u, i)
    for f in dataclasses.fields(ra):
        x, y = getattr(ra, f.name), getattr(rb, f.name)
        if isinstance(x, dict):
            assert all(np.array_equal(x[k], y[k]) for k in x)
        else:
            assert np.array_equal(x, y)
    for p in (ra.p_long_view, ra.p_finish, ra.p_zero, *ra.behaviours.values()):
        assert ((p >= 0) & (p <= 1)).all()
    assert np.allclose(ra.mix_weight.sum(1), 1, atol=1e-5)
    sa = a.response.sample(u, i, np.random.default_rng(3))
    assert all(np.array_equal(v, b.response.sample(u, i, np.random.default_rng(3))[k]) for k, v in sa.items())


def test_samples_match_the_analytic_marginals(fitted):
    out, _ = fitted
    m = load_fitted(out).response
    u, i, n = np.array([3, 500, 9000]), np.array([10, 2000, 4000]), 4000
    p = m.predict(u, i)
    s = m.sample(np.repeat(u, n), np.repeat(i, n), np.random.default_rng(0))
    for key, pred in (("long_view", p.p_long_view_watch), ("finish", p.p_finish), ("like", p.behaviours["like"])):
        emp = s[key].reshape(3, n).mean(1)
        tol = 5 * np.sqrt(pred * (1 - pred) / n) + 0.005
        assert (np.abs(emp - pred) < tol).all(), (key, emp, pred)
    zero = (s["watch_ratio"] == 0).reshape(3, n).mean(1)
    assert (np.abs(zero - p.p_zero) < 5 * np.sqrt(p.p_zero * (1 - p.p_zero) / n) + 0.005).all()
    # long_view and finish are the official rules applied to the sampled watch ratio
    dur = m.builder.item_duration_s(np.repeat(i, n)).astype(np.float64)
    ratio = s["watch_ratio"].astype(np.float64)
    assert np.array_equal(s["long_view"] == 1, ratio >= np.minimum(1.0, 18.0 / dur))
    assert np.array_equal(s["finish"] == 1, ratio >= 1.0)


@pytest.mark.parametrize(("victim", "how"), [
    ("response.safetensors", "flip"), ("features.safetensors", "truncate"), ("mtl.json", "edit"),
    ("manifest.json", "delete"),
])
def test_tampered_model_files_are_refused(fitted, tmp_path, victim, how):
    out, _ = fitted
    copy = tmp_path / "m"
    shutil.copytree(out, copy)
    p = copy / victim
    raw = bytearray(p.read_bytes())
    if how == "flip":
        raw[len(raw) // 2] ^= 0xFF
        p.write_bytes(bytes(raw))
    elif how == "truncate":
        p.write_bytes(bytes(raw[: len(raw) - 100]))
    elif how == "edit":
        p.write_text(p.read_text().replace('"hidden": [', '"hidden": [8, '))
    else:
        p.unlink()
    with pytest.raises(ModelFileError) as e:
        load_fitted(copy)
    assert victim in str(e.value)

"""Fit the KuaiRand-Pure response model (the users' truth) and MTL model (the platform's estimate), save them.

``fit_all(data_dir, out_dir, cfg)`` loads and validates the data, builds the leakage-free features of
the training rows (leave-one-day-out) and of the test rows (all 10 training days), fits both models
on 2022-04-25..05-04, evaluates them on 2022-05-05..08 and writes to ``out_dir``:

==========================  =====================================================================
features.safetensors/.json  the serving tables (encoded user / item features, training-day sums,
                            user-tag sums, pre-period history) and their names
response.safetensors/.json  response network weights; config, feature names, normalisation, loss
mtl.safetensors/.json       MTL network weights; the same metadata
report.json                 held-out metrics, timings, data summary, resolved config
manifest.json               sha256 and size of every file above
==========================  =====================================================================

:func:`load_fitted` checks every file against the manifest before reading it (a truncated or edited
file is refused with an error naming it) and never unpickles anything. The saved tables derive from
KuaiRand-Pure and carry its CC BY-SA 4.0 license. Run as ``python -m rlmtf.envs.kuairand.fit --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch
from scipy.stats import spearmanr

from rlmtf.envs.kuairand.data import load_kuairand
from rlmtf.envs.kuairand.features import GROUPS, FeatureBuilder, FeatureConfig
from rlmtf.envs.kuairand.mtl import KuaiRandMTL, MTLConfig
from rlmtf.envs.kuairand.response import ResponseConfig, ResponseModel

FILES = ("features.safetensors", "features.json", "response.safetensors", "response.json", "mtl.safetensors",
         "mtl.json", "report.json")
LICENSE_NOTE = ("Derived from KuaiRand-Pure (Gao et al., CIKM 2022), licensed CC BY-SA 4.0; "
                "these files carry the same license.")


class ModelFileError(ValueError):
    """A saved KuaiRand model file is missing, truncated, modified or inconsistent; the message names it."""


@dataclass(frozen=True)
class FitConfig:
    """Everything ``fit_all`` does, resolved into report.json."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    response: ResponseConfig = field(default_factory=ResponseConfig)
    mtl: MTLConfig = field(default_factory=MTLConfig)
    onehot_top_k: int = 12
    """Categorical columns are one-hot over their most frequent values (see ``data.py``)."""
    max_train_rows: int | None = None
    """Fit on a random sample of at most this many training rows (tests, quick checks); None = all."""
    max_test_rows: int | None = None
    """Evaluate on at most this many test rows; None = all."""
    sample_seed: int = 0
    """Seed of those row samples."""
    threads: int = 1
    """torch.set_num_threads while fitting (the time budget is measured with 1)."""


@dataclass
class FittedKuaiRand:
    """Both models over one set of feature tables, as loaded from ``out_dir``."""

    features: FeatureBuilder
    response: ResponseModel
    mtl: KuaiRandMTL
    report: dict


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, doc: dict) -> None:
    _atomic(path, lambda p: p.write_text(json.dumps(doc, indent=1, allow_nan=True)))


def _save_models(out: Path, features: FeatureBuilder, response: ResponseModel, mtl: KuaiRandMTL,
                 metrics: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ft, fm = features.state()
    _atomic(out / "features.safetensors", lambda p: save_numpy(ft, str(p)))
    _write_json(out / "features.json", {**fm, "license": LICENSE_NOTE})
    for name, model in (("response", response), ("mtl", mtl)):
        t, meta = model.state()
        _atomic(out / f"{name}.safetensors", lambda p, t=t: save_torch(t, str(p)))
        _write_json(out / f"{name}.json", {**meta, "metrics": metrics.get(name, {}), "license": LICENSE_NOTE})


def _save_report(out: Path, report: dict) -> None:
    _write_json(out / "report.json", report)
    manifest = {"files": {f: {"sha256": _sha256(out / f), "bytes": (out / f).stat().st_size} for f in FILES},
                "license": LICENSE_NOTE}
    _write_json(out / "manifest.json", manifest)


def save_fitted(out_dir: str | os.PathLike[str], features: FeatureBuilder, response: ResponseModel,
                mtl: KuaiRandMTL, report: dict) -> Path:
    """Write the model files, then report.json and manifest.json (each file atomically)."""
    out = Path(out_dir)
    _save_models(out, features, response, mtl, report)
    _save_report(out, report)
    return out


def _verified(out: Path) -> dict[str, Path]:
    man = out / "manifest.json"
    if not man.is_file():
        raise ModelFileError(f"{man}: missing (not a fitted KuaiRand model directory?)")
    try:
        files = json.loads(man.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ModelFileError(f"{man}: unreadable manifest ({e})") from e
    paths = {}
    for f in FILES:
        p = out / f
        if f not in files:
            raise ModelFileError(f"{man}: does not list {f}")
        if not p.is_file():
            raise ModelFileError(f"{p}: missing model file")
        size = p.stat().st_size
        if size != files[f]["bytes"]:
            raise ModelFileError(f"{p}: {size} bytes, the manifest says {files[f]['bytes']} (truncated or replaced)")
        if _sha256(p) != files[f]["sha256"]:
            raise ModelFileError(f"{p}: sha256 differs from the manifest (the file was modified)")
        paths[f] = p
    return paths


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{p}: invalid JSON ({e})") from e


def load_fitted(out_dir: str | os.PathLike[str]) -> FittedKuaiRand:
    """Load what :func:`fit_all` saved, refusing truncated, modified or mismatched files."""
    out = Path(out_dir)
    p = _verified(out)
    try:
        ft = load_numpy(str(p["features.safetensors"]))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ModelFileError(f"{p['features.safetensors']}: cannot read tensors ({e})") from e
    try:
        features = FeatureBuilder.from_state(ft, _read_json(p["features.json"]))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ModelFileError(f"{p['features.json']}: feature tables inconsistent with their metadata ({e})") from e
    models = {}
    for name, cls in (("response", ResponseModel), ("mtl", KuaiRandMTL)):
        w = p[f"{name}.safetensors"]
        try:
            tensors = load_torch(str(w))
        except Exception as e:
            raise ModelFileError(f"{w}: cannot read tensors ({e})") from e
        meta = _read_json(p[f"{name}.json"])
        if meta.get("kind") != cls.kind:
            raise ModelFileError(f"{p[f'{name}.json']}: kind {meta.get('kind')!r}, expected {cls.kind!r}")
        try:
            models[name] = cls.from_state(features, tensors, meta)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ModelFileError(f"{w}: weights do not match {name}.json ({e})") from e
    return FittedKuaiRand(features, models["response"], models["mtl"], _read_json(p["report.json"]))


def _agreement(response: ResponseModel, mtl: KuaiRandMTL, x_resp: np.ndarray, x_mtl: np.ndarray,
               items: np.ndarray) -> dict[str, float]:
    """Spearman correlation of each MTL score with the response model's value of the same task."""
    r = response.predict_features(x_resp, response.builder.item_duration_s(items))
    s = mtl.scores_features(x_mtl)
    cap = mtl.cfg.watch_time_cap_s
    truth = {"valid": r.p_long_view, "watch_time": np.minimum(r.expected_ratio * response.builder.item_duration_s(items)
                                                              / cap, 1.0),
             "finish": r.p_finish, "like": r.behaviours["like"], "share": r.behaviours["forward"]}
    return {k: float(spearmanr(s[:, j], truth[k]).statistic) for j, k in enumerate(mtl.tasks)}


def fit_all(data_dir: str | os.PathLike[str] | None, out_dir: str | os.PathLike[str], cfg: FitConfig = FitConfig(),
            log: Callable[[str], None] = print) -> dict:
    """Fit, evaluate and save both models; returns the report (also in ``out_dir/report.json``)."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)

    def lap(name: str, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 2)
        log(f"[{time.perf_counter() - t_start:6.1f}s] {name} done ({timings[name]:.1f}s)")
        return time.perf_counter()

    try:
        t = time.perf_counter()
        data = load_kuairand(data_dir, onehot_top_k=cfg.onehot_top_k)
        data = data.sample(cfg.max_train_rows, cfg.max_test_rows, cfg.sample_seed)
        log(f"data: {data.summary()}")
        t = lap("load", t)
        builder = FeatureBuilder.fit(data, cfg.features)
        x_tr = builder.matrix(data.train.user, data.train.item, GROUPS, day=data.train.day)
        x_te = builder.matrix(data.test.user, data.test.item, GROUPS)
        t = lap("features", t)
        rc, mc = builder.columns(cfg.response.groups), builder.columns(cfg.mtl.groups)
        response = ResponseModel.fit(builder, x_tr[:, rc], data.train, cfg.response, log=log)
        t = lap("response_fit", t)
        resp_metrics = response.evaluate(x_te[:, rc], data.test)
        t = lap("response_eval", t)
        mtl = KuaiRandMTL.fit(builder, x_tr[:, mc], data.train, cfg.mtl, log=log)
        t = lap("mtl_fit", t)
        mtl_metrics = mtl.evaluate(x_te[:, mc], data.test)
        agreement = _agreement(response, mtl, x_te[:, rc], x_te[:, mc], data.test.item)
        t = lap("mtl_eval", t)
        split = {"train": "2022-04-25..2022-05-04", "test": "2022-05-05..2022-05-08"}
        report = {"data": data.summary(), "split": split,
                  "response": resp_metrics, "mtl": mtl_metrics, "mtl_vs_response_spearman": agreement,
                  "config": dataclasses.asdict(cfg), "timings_s": timings,
                  "environment": {"torch_threads": cfg.threads, "torch": torch.__version__,
                                  "python": platform.python_version(), "cpu_count": os.cpu_count()},
                  "license": LICENSE_NOTE}
        _save_models(Path(out_dir), builder, response, mtl, report)
        lap("save", t)
        timings["total"] = round(time.perf_counter() - t_start, 2)
        _save_report(Path(out_dir), report)
        log(f"fitted in {timings['total']:.1f}s -> {out_dir}")
        return report
    finally:
        torch.set_num_threads(threads_before)


def summary_lines(report: dict) -> list[str]:
    """One line per held-out metric, for the console."""
    lines = []
    for head, r in report["response"].items():
        if isinstance(r, dict) and "auc" in r:
            lines.append(f"response {head:22s} AUC {r['auc']:.4f}  ECE {r['ece']:.4f}  "
                         f"rate {r['rate']:.4f} pred {r['mean_predicted']:.4f}")
    w = report["response"]["watch_ratio"]
    lines.append(f"response watch_ratio NLL {w['nll_nats']:.3f} nats  PIT max dev {w['pit']['max_abs_deviation']:.3f}"
                 f"  KS {w['pit']['ks']:.3f}")
    for task in report["mtl_vs_response_spearman"]:
        r = report["mtl"][task]
        lines.append(f"mtl      {task:22s} AUC {r['auc']:.4f}  ECE {r['ece']:.4f}  "
                     f"spearman vs response {report['mtl_vs_response_spearman'][task]:.3f}")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Fit the KuaiRand-Pure response and MTL models.")
    ap.add_argument("--data-dir", type=Path, default=None, help="KuaiRand-Pure directory (default: shared copy)")
    ap.add_argument("--out", type=Path, required=True, help="output directory for the model files")
    ap.add_argument("--max-train-rows", type=int, default=None)
    ap.add_argument("--max-test-rows", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    report = fit_all(a.data_dir, a.out, FitConfig(max_train_rows=a.max_train_rows, max_test_rows=a.max_test_rows,
                                                  threads=a.threads))
    print("\n".join(summary_lines(report)))


if __name__ == "__main__":
    main()

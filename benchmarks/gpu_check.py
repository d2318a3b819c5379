"""One prepared check of the GPU path: CPU and GPU agree on the same batches, and how fast each algorithm steps.

    python benchmarks/gpu_check.py                      # cpu vs cuda, paper sizes, eager and compiled
    python benchmarks/gpu_check.py --devices cpu,cpu --quick   # the same logic anywhere (the tests run this)

1. Agreement: for every offline algorithm, a model built on the first device is copied to the second; both
   take the same updates on the same batches with the same noise (drawn on the CPU from one seeded generator
   and moved to the device, for the stochastic methods), TF32 off. Every metric of every step and every
   weight afterwards must agree to ``--rtol``.
2. Throughput: every algorithm at its default (paper) size on the second device, data resident there
   (``DeviceSampler``), metrics kept on the device (``lazy_metrics``), per ``--compile`` mode; steps/s
   after a warm-up that includes compilation, and the time 300,000 steps of Enhanced-State RL would take.

Prints Markdown tables; ``--json PATH`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rlmtf.algos import ALGORITHMS, algorithm_class  # noqa: E402
from rlmtf.data.io import read_logs  # noqa: E402
from rlmtf.data.samplers import DeviceSampler  # noqa: E402
from rlmtf.data.transitions import build_transitions  # noqa: E402
from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet  # noqa: E402
from rlmtf.envs.sim.config import SimConfig  # noqa: E402
from rlmtf.envs.sim.simulator import Simulator  # noqa: E402
from rlmtf.policy.fixed import FixedPolicy  # noqa: E402
from rlmtf.train.loop import compile_networks  # noqa: E402

OFFLINE = [a for a in ALGORITHMS if not getattr(algorithm_class(a), "online", False)]
PAPER_STEPS = 300_000


@contextlib.contextmanager
def cpu_noise(seed: int) -> Iterator[None]:
    """Route torch.randn / torch.rand through one CPU generator, then to the asked device: both sides of the
    agreement check draw the same noise whatever their device's generator would give."""
    gen = torch.Generator().manual_seed(seed)
    randn, rand = torch.randn, torch.rand

    def wrap(fn):  # noqa: ANN001, ANN202
        def draw(*size, generator=None, device=None, dtype=None, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            return fn(*size, generator=gen, dtype=dtype, **kw).to(device if device is not None else "cpu")
        return draw

    torch.randn, torch.rand = wrap(randn), wrap(rand)
    try:
        yield
    finally:
        torch.randn, torch.rand = randn, rand


def small(name: str) -> object:
    cls = algorithm_class(name).config_cls
    names = {f.name for f in dataclasses.fields(cls)}
    want = {"hidden": (32, 32), "ensemble_size": 3, "batch_size": 32, "warmup_steps": 0, "n_action_samples": 4}
    return cls(**{k: v for k, v in want.items() if k in names})


def rel(a: float, b: float) -> float:
    return abs(a - b) / (1.0 + abs(a))


def agreement(name: str, spec, t, dev_a: str, dev_b: str, steps: int, rtol: float) -> dict:  # noqa: ANN001
    cls = algorithm_class(name)
    a = cls(spec, small(name), device=dev_a, seed=0)
    a.set_normalisation(t)
    b = cls(spec, small(name), device=dev_b, seed=0)
    tensors, meta = a.state_tensors()
    tensors.pop("rng.state")
    b.load_state_tensors({k: v.to(dev_b) for k, v in tensors.items()}, meta)
    rng = np.random.default_rng(0)
    worst_metric = 0.0
    for i in range(steps):
        batch = t.sample(32, rng)
        with cpu_noise(i):
            ma = a.update(batch)
        with cpu_noise(i):
            mb = b.update(batch)
        worst_metric = max(worst_metric, *(rel(ma[k], mb[k]) for k in ma))
    wa, _ = a.state_tensors()
    wb, _ = b.state_tensors()
    worst_weight = max(float((wa[k] - wb[k]).abs().max()) / (float(wa[k].abs().max()) + 1e-12)
                       for k in wa if k != "rng.state" and wa[k].is_floating_point() and wa[k].numel())
    return {"algo": name, "devices": f"{dev_a} vs {dev_b}", "steps": steps, "max_metric_rel_diff": worst_metric,
            "max_weight_rel_diff": worst_weight, "ok": worst_metric <= rtol and worst_weight <= rtol}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def throughput(name: str, spec, t, device: str, mode: str, warmup: int, steps: int, quick: bool) -> dict:  # noqa: ANN001
    cls = algorithm_class(name)
    cfg = small(name) if quick else cls.config_cls()
    algo = cls(spec, cfg, device=device, seed=0)
    algo.set_normalisation(t)
    algo.lazy_metrics = True
    compile_networks(algo, mode)
    src = DeviceSampler(t, device)
    rng = np.random.default_rng(0)
    bsz = cfg.batch_size
    t0 = time.perf_counter()
    for _ in range(warmup):
        m = algo.update(src.sample(bsz, rng))
    sync(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        m = algo.update(src.sample(bsz, rng))
    sync(device)
    t2 = time.perf_counter()
    finite = all(np.isfinite(float(v)) for v in m.values())
    sps = steps / (t2 - t1)
    return {"algo": name, "device": device, "compile": mode, "batch": bsz, "warmup_s": t1 - t0, "steps_per_s": sps,
            "ms_per_step": 1000.0 / sps, "paper_steps_min": PAPER_STEPS / sps / 60.0, "finite": finite}


def data(quick: bool):  # noqa: ANN201
    import tempfile

    sim = Simulator(dataclasses.replace(SimConfig(), n_users=200, n_items=2000))
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "logs"
        simulate_to_parquet(sim, behaviour_policy(FixedPolicy(np.zeros(10, np.float32)), "uniform", "item", seed=1),
                            out, seed=1, sessions=150 if quick else 600)
        logs = read_logs(out)
    return logs.meta.feature_spec, build_transitions(logs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", default="cpu,cuda", help="reference,device under test")
    ap.add_argument("--quick", action="store_true", help="tiny networks and few steps (checks the logic only)")
    ap.add_argument("--compile", default=None, help="comma-separated modes (default: none,default,reduce-overhead "
                                                     "on cuda; none on cpu)")
    ap.add_argument("--algos", default=",".join(OFFLINE))
    ap.add_argument("--steps", type=int, default=None, help="timed steps per algorithm and mode")
    ap.add_argument("--rtol", type=float, default=2e-3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the CPU side and the data work)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev_a, dev_b = args.devices.split(",")
    if dev_b.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --devices cpu,cpu to check the logic")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    algos = [a.strip() for a in args.algos.split(",")]
    modes = (args.compile.split(",") if args.compile else
             ["none", "default", "reduce-overhead"] if dev_b.startswith("cuda") else ["none"])
    steps = args.steps or (5 if args.quick else 300)
    env = {"python": platform.python_version(), "torch": torch.__version__, "devices": args.devices,
           "threads": args.threads,
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(json.dumps(env))
    spec, t = data(args.quick)
    print(f"data: {len(t)} requests of {t.enhanced_state.shape[1]} items")

    rows = [agreement(a, spec, t, dev_a, dev_b, 3, args.rtol) for a in algos]
    print("\n| algorithm | devices | steps | max metric rel. diff | max weight rel. diff | agree |\n"
          "|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['algo']} | {r['devices']} | {r['steps']} | {r['max_metric_rel_diff']:.2e} | "
              f"{r['max_weight_rel_diff']:.2e} | {'yes' if r['ok'] else 'NO'} |")

    torch.backends.cuda.matmul.allow_tf32 = True  # the speed run uses what training uses
    tp = []
    for a in algos:
        for mode in modes:
            try:
                r = throughput(a, spec, t, dev_b, mode, 3 if args.quick else 30, steps, args.quick)
            except Exception as e:  # noqa: BLE001 - a mode that fails to compile is reported, not fatal
                r = {"algo": a, "device": dev_b, "compile": mode, "error": f"{type(e).__name__}: {e}"[:300]}
            tp.append(r)
            print(json.dumps(r), flush=True)
    print("\n| algorithm | device | compile | batch | steps/s | ms/step | 300k steps (min) | "
          "warm-up incl. compile (s) |\n"
          "|---|---|---|---:|---:|---:|---:|---:|")
    for r in tp:
        if "error" in r:
            print(f"| {r['algo']} | {r['device']} | {r['compile']} | | failed: {r['error'][:80]} | | | |")
        else:
            print(f"| {r['algo']} | {r['device']} | {r['compile']} | {r['batch']} | {r['steps_per_s']:.1f} | "
                  f"{r['ms_per_step']:.2f} | {r['paper_steps_min']:.1f} | {r['warmup_s']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"env": env, "agreement": rows, "throughput": tp}, indent=2))
    if not all(r["ok"] for r in rows):
        sys.exit("CPU and device disagree (see the table)")


if __name__ == "__main__":
    main()

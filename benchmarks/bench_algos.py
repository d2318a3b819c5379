"""Training throughput per method, ours beside d3rlpy's implementation at the same network size.

Gradient steps per second of ``update`` on one fixed batch, for DDPG, CQL (SAC-based in both), BCQ and
IQL, ours next to d3rlpy's; IntegratedRL-MTF, Enhanced-State RL and ES (one CMA-ES generation in the
simulator per ``update``) are timed for the record, with no d3rlpy counterpart.

Matched sizes: the default simulator's user state (46 dims) and action (10 dims); hidden layers (256, 256) for
every network (``--hidden``, the same on both sides); batch 256; as many critics as ours uses (1 for DDPG, 2
for CQL, BCQ and IQL); 10 sampled actions for CQL and BCQ (BCQ's VAE latent is 2 x 10 in both). d3rlpy
standardises its observations with the dataset's mean and std as ours does (``StandardObservationScaler``), so
both pay for it. CQL's weight is fixed at 5 in both (d3rlpy: ``alpha_learning_rate=0``, ``initial_alpha=1``,
``conservative_weight=5``); the SAC temperature is learned in both. Both sides see the same 256 requests
(drawn from a small simulated dataset): ours as a ``RequestBatch``, d3rlpy's as a ``TransitionMiniBatch`` of
the user states, actions, rewards, done flags and next user states, and each side's timing includes its own
numpy -> torch conversion.

Our networks embed each feature group of the state (profile 19, history 23, context 4 dims) into 32
dims before the MLP trunk, so at the same hidden sizes ours has more parameters and more matmul work
than d3rlpy's (whose trunk reads the 46 raw dims): parameter counts (learnable, targets excluded) and
matmul GFLOP per update (torch's ``FlopCounterMode``) are reported for both. ``--matched-embed 15``
(the default) also times ours with 15-dim embeddings, whose trunk input (3 x 15 + 10) matches
d3rlpy's (46 + 10): about the same parameters and FLOPs as d3rlpy's, an equal-size comparison.

The sides run one at a time, finely interleaved: in every repetition each side (ours, ours with matched
embeddings, d3rlpy's) runs ``--block`` steps in turn until each has run ``--steps``, so that the load
of other jobs on a shared machine falls on all alike; a side's rate in a repetition is its steps over
its summed time. Two clocks: wall-clock time, and the CPU time of the side's own process (which leaves
out the time other jobs hold the cores: on a loaded machine the steadier of the two; with one torch
thread per side it is the update's own work). The median over repetitions is reported with the ratio
ours / d3rlpy, and the median of the per-repetition ratios.

d3rlpy need not be importable here: ``--d3rlpy-python PY`` runs its side in a subprocess of another
interpreter (a venv with d3rlpy and the same torch), driven over stdin/stdout by this same file in
``--worker`` mode (which imports nothing of ``rlmtf``). Without it and without d3rlpy in this
interpreter, the d3rlpy side is skipped with a message.

    python benchmarks/bench_algos.py [--steps 30] [--reps 3] [--es-steps 2] [--methods ddpg,cql,...]
                                     [--matched-embed 15] [--d3rlpy-python /tmp/d3venv/bin/python] [--json OUT]
                                     [--cpu N] [--steady-malloc]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

#: method -> (our algorithm, d3rlpy's counterpart or None)
METHODS: dict[str, tuple[str, str | None]] = {
    "ddpg": ("ddpg", "ddpg"),
    "cql": ("cql_sac", "cql"),
    "bcq": ("bcq", "bcq"),
    "iql": ("iql", "iql"),
    "integrated": ("integrated", None),
    "esrl": ("esrl", None),
    "es": ("es", None),
}
HIDDEN = (256, 256)
BATCH = 256
N_ACTION_SAMPLES = 10


def one_thread() -> None:
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (or parallel work has started): harmless here
        pass


def steady_malloc() -> bool:
    """Keep freed memory in the process (glibc): no trimming of the heap's top, no mmap for large blocks.

    By default glibc gives the top of the heap back to the system when enough of it is free and serves large
    blocks with fresh mmaps, so a process whose big activations are freed and allocated again every update
    can page-fault thousands of times per update, or not at all, depending on what else happens to sit on
    its heap (d3rlpy's BCQ update: ~4,900 minor faults and 10.7-11.8 steps/s when it is the only algorithm
    built in its process, none and 13.4-15.3 steps/s when others were built first). With this, both sides
    reuse their memory after the warm-up and time their arithmetic. Returns whether it took effect."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    ok = libc.mallopt(m_trim_threshold, 1 << 30) == 1
    ok &= libc.mallopt(m_top_pad, 64 << 20) == 1
    ok &= libc.mallopt(m_mmap_threshold, 32 << 20) == 1  # glibc's largest allowed value on 64-bit systems
    return bool(ok)


def n_params(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def matmul_flops(update) -> int:
    """Matrix-multiply FLOPs of one call of ``update()`` (forward and backward), as torch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        update()
    return counter.get_total_flops()


def time_updates(update, steps: int) -> dict[str, float]:
    """Seconds taken by ``steps`` calls of ``update()``: wall-clock, and CPU time of this process (which
    leaves out the time other jobs hold the cores; with one torch thread it is the work itself)."""
    w, c = time.perf_counter(), time.process_time()
    for _ in range(steps):
        update()
    return {"wall": time.perf_counter() - w, "cpu": time.process_time() - c}


# --- d3rlpy's side (no rlmtf import: runs in d3rlpy's interpreter) -----------------------------------


class D3Side:
    """d3rlpy's algorithms, built at our sizes on the batch stored in an ``.npz`` file."""

    def __init__(self, batch_file: str):
        import d3rlpy
        from d3rlpy.dataset import TransitionMiniBatch

        self.d3rlpy = d3rlpy
        z = np.load(batch_file)
        b = len(z["reward"])
        self.obs_mean, self.obs_std = z["obs_mean"], z["obs_std"]
        self.batch = TransitionMiniBatch(
            observations=z["s"], actions=z["a"], rewards=z["reward"].reshape(b, 1),
            next_observations=z["s2"], next_actions=z["a"],  # next_actions: SARSA methods only; unused here
            terminals=z["done"].reshape(b, 1), intervals=np.ones((b, 1), np.float32), transitions=[])
        self.algos: dict = {}

    def build(self, name: str, hidden: tuple[int, ...] = HIDDEN) -> dict:
        d3 = self.d3rlpy
        enc = d3.models.VectorEncoderFactory(hidden_units=list(hidden))
        common = {"batch_size": BATCH, "gamma": 0.9,
                  "observation_scaler": d3.preprocessing.StandardObservationScaler(mean=self.obs_mean,
                                                                                    std=self.obs_std)}
        if name == "ddpg":
            cfg = d3.algos.DDPGConfig(actor_encoder_factory=enc, critic_encoder_factory=enc, n_critics=1, **common)
        elif name == "cql":
            cfg = d3.algos.CQLConfig(actor_encoder_factory=enc, critic_encoder_factory=enc, n_critics=2,
                                     n_action_samples=N_ACTION_SAMPLES, conservative_weight=5.0, initial_alpha=1.0,
                                     alpha_learning_rate=0.0, alpha_threshold=0.0, actor_learning_rate=3e-4,
                                     temp_learning_rate=3e-4, **common)
        elif name == "bcq":
            cfg = d3.algos.BCQConfig(actor_encoder_factory=enc, critic_encoder_factory=enc,
                                     imitator_encoder_factory=enc, n_critics=2, n_action_samples=N_ACTION_SAMPLES,
                                     action_flexibility=0.15, **common)
        elif name == "iql":
            cfg = d3.algos.IQLConfig(actor_encoder_factory=enc, critic_encoder_factory=enc,
                                     value_encoder_factory=enc, n_critics=2, **common)
        else:
            raise ValueError(f"d3rlpy has no counterpart {name!r} here")
        algo = cfg.create(device="cpu:0")
        algo.create_impl((self.batch.observations.shape[1],), self.batch.actions.shape[1])
        self.algos[name] = algo
        mods = algo.impl.modules
        learn = [getattr(mods, f) for f in mods.__dataclass_fields__
                 if not f.startswith("targ_") and isinstance(getattr(mods, f), torch.nn.Module)]
        return {"params": n_params(learn), "flops": matmul_flops(lambda: algo.update(self.batch))}

    def run(self, name: str, steps: int, warmup: int = 0) -> dict:
        algo = self.algos[name]
        for _ in range(warmup):
            algo.update(self.batch)
        return time_updates(lambda: algo.update(self.batch), steps)


def worker(malloc: bool = False) -> None:
    """Serve D3Side calls, one JSON object per line: {"op": "init"|"build"|"run", ...}."""
    one_thread()
    if malloc:
        steady_malloc()
    answers, sys.stdout = sys.stdout, sys.stderr  # whatever d3rlpy or gym print must not mix with the answers
    side: D3Side | None = None
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "init":
                side = D3Side(req["batch_file"])
                import d3rlpy

                out = {"d3rlpy": d3rlpy.__version__, "torch": torch.__version__, "threads": torch.get_num_threads()}
            elif req["op"] == "build":
                out = side.build(req["name"], tuple(req.get("hidden", HIDDEN)))
            else:
                out = side.run(req["name"], req["steps"], req.get("warmup", 0))
        except Exception as e:  # report and carry on: the parent decides
            out = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), file=answers, flush=True)


class D3Subprocess:
    """The same calls as ``D3Side``, answered by a ``--worker`` process of another interpreter."""

    def __init__(self, python: str, batch_file: str, malloc: bool = False):
        flags = ["--worker"] + (["--steady-malloc"] if malloc else [])
        self.proc = subprocess.Popen([python, os.path.abspath(__file__), *flags], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        self.info = self._call({"op": "init", "batch_file": batch_file})

    def _call(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"d3rlpy worker exited (code {self.proc.wait()})")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"d3rlpy worker: {out['error']}")
        return out

    def build(self, name: str, hidden: tuple[int, ...] = HIDDEN) -> dict:
        return self._call({"op": "build", "name": name, "hidden": list(hidden)})

    def run(self, name: str, steps: int, warmup: int = 0) -> dict:
        return self._call({"op": "run", "name": name, "steps": steps, "warmup": warmup})

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# --- our side -------------------------------------------------------------------------------------------


def our_world(sessions: int, seed: int = 1):
    """A small simulated dataset of the default simulator (uniform exploration per request) and that
    simulator (ES plays in it)."""
    from rlmtf.data import build_transitions, read_logs
    from rlmtf.envs.collect import behaviour_policy, simulate_to_parquet
    from rlmtf.envs.sim.simulator import Simulator
    from rlmtf.policy.fixed import baseline_policy

    sim = Simulator()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "explore"
        simulate_to_parquet(sim, behaviour_policy(baseline_policy(), "uniform", "request", seed=seed), out,
                            seed=seed, sessions=sessions)
        logs = read_logs(out)
        trans = build_transitions(logs)
    return sim, logs.meta.feature_spec, trans


def our_algo(name: str, spec, sim, trans, embed_dim: int | None = None, hidden: tuple[int, ...] = HIDDEN):
    """Our algorithm ``name`` at the benchmark's sizes (``embed_dim``: the per-group embedding, if not the
    default 32; ``hidden``: every network's hidden layers), ready to update, and its learnable parameter
    count (targets excluded)."""
    from rlmtf.algos import algorithm_class

    cls = algorithm_class(name)
    names = {f for f in cls.config_cls.__dataclass_fields__}
    want = {"hidden": tuple(hidden), "batch_size": BATCH, "n_action_samples": N_ACTION_SAMPLES, "embed_dim": embed_dim}
    kw = {k: v for k, v in want.items() if k in names and v is not None}
    algo = cls(spec, cls.config_cls(**kw), seed=0)
    if getattr(cls, "online", False):
        algo.attach(sim)
    algo.set_normalisation(trans)
    learn = [m for k, m in algo.modules().items() if "target" not in k]
    return algo, n_params(learn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="timed updates per repetition (gradient methods)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions (each side once per repetition)")
    ap.add_argument("--block", type=int, default=5,
                    help="steps a side runs before the next side's turn, within a repetition")
    ap.add_argument("--warmup", type=int, default=5, help="untimed updates before the first repetition")
    ap.add_argument("--es-steps", type=int, default=2, help="timed ES generations per repetition")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--sessions", type=int, default=300, help="simulated sessions of the dataset batches come from")
    ap.add_argument("--d3rlpy-python", default=None,
                    help="interpreter with d3rlpy installed, run as a subprocess (default: this one, if it has d3rlpy)")
    ap.add_argument("--matched-embed", type=int, default=15,
                    help="also time ours with this per-group embedding, whose trunk input (3 x it + 10) matches "
                         "d3rlpy's (46 + 10), so that both do about the same matmul work (0: skip)")
    ap.add_argument("--plain", action="store_true",
                    help="also time ours with embed_dim 0 (no group embeddings): the same plain architecture as "
                         "d3rlpy's networks, the same parameter count")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--steady-malloc", action="store_true",
                    help="in both processes, keep freed memory instead of giving it back to the system (glibc "
                         "mallopt), so that page faults of re-grown heaps do not decide the timings "
                         "(see steady_malloc)")
    ap.add_argument("--cpu", type=int, default=None,
                    help="pin this process and the d3rlpy worker (which inherits it) to this core, so that both "
                         "sides take turns on the same core and its caches (default: let the OS place them)")
    ap.add_argument("--hidden", type=int, nargs="+", default=list(HIDDEN),
                    help="hidden layer sizes of every network on both sides (default: 256 256)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    hidden = tuple(args.hidden)
    if args.worker:
        worker(args.steady_malloc)
        return
    one_thread()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.steady_malloc and not steady_malloc():
        print("--steady-malloc: glibc's mallopt is not available here; ignored", flush=True)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")

    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average at the start: "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    t0 = time.perf_counter()
    sim, spec, trans = our_world(args.sessions)
    batch = trans.sample(BATCH, np.random.default_rng(0))
    print(f"dataset: {len(trans)} requests, user state {spec.user_state_dim}, action {spec.action_dim}, "
          f"{batch.enhanced_state.shape[1]} items per request ({time.perf_counter() - t0:.1f} s)", flush=True)

    tmpdir = tempfile.TemporaryDirectory()
    batch_file = str(Path(tmpdir.name) / "batch.npz")
    ust = trans.user_state.astype(np.float64)
    np.savez(batch_file, s=batch.user_state, a=np.ascontiguousarray(batch.action[:, 0]), reward=batch.reward,
             done=batch.done, s2=batch.next_user_state, obs_mean=ust.mean(0).astype(np.float32),
             obs_std=np.maximum(ust.std(0), 1e-2).astype(np.float32))
    d3 = None
    d3_info: dict = {}
    if any(METHODS[m][1] for m in methods):
        if args.d3rlpy_python:
            d3 = D3Subprocess(args.d3rlpy_python, batch_file, malloc=args.steady_malloc)
            d3_info = d3.info
        else:
            try:
                import d3rlpy
            except ImportError:
                print("d3rlpy is not importable here and --d3rlpy-python was not given: timing our side only",
                      flush=True)
            else:
                d3 = D3Side(batch_file)
                d3_info = {"d3rlpy": d3rlpy.__version__, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if d3_info:
        print(f"d3rlpy {d3_info['d3rlpy']} (torch {d3_info['torch']}, {d3_info['threads']} thread(s)); "
              f"ours: torch {torch.__version__}, {torch.get_num_threads()} thread(s)", flush=True)
        if d3_info["torch"] != torch.__version__:
            print("WARNING: the two sides run different torch versions", flush=True)

    rows = []
    for m in methods:
        ours_name, d3_name = METHODS[m]
        use_d3 = d3 is not None and d3_name is not None
        variants = {"ours": None}  # side -> embed_dim (None: the default, 32)
        if use_d3 and args.matched_embed:
            variants[f"ours_embed{args.matched_embed}"] = args.matched_embed
        if use_d3 and args.plain:
            variants["ours_plain"] = 0
        sides: dict[str, dict] = {}
        updates = {}
        online = False
        for side, embed in variants.items():
            algo, params = our_algo(ours_name, spec, sim, trans, embed, hidden)
            online = getattr(algo, "online", False)

            def ours_update(algo=algo, online=online):
                algo.update(None if online else batch)

            flops = None if online else matmul_flops(ours_update)
            for _ in range(1 if online else args.warmup):
                ours_update()
            updates[side] = ours_update
            sides[side] = {"params": params, "gflop_per_step": flops / 1e9 if flops is not None else None}
        steps = args.es_steps if online else args.steps
        if use_d3:
            built = d3.build(d3_name, hidden)
            d3.run(d3_name, 0, warmup=args.warmup)
            sides["d3rlpy"] = {"params": built["params"], "gflop_per_step": built["flops"] / 1e9}
        timers = dict(updates)
        if use_d3:
            timers["d3rlpy"] = None
        for s in sides.values():
            s["reps"] = {"wall": [], "cpu": []}
        for _ in range(args.reps):
            # interleaved in blocks: each side runs `block` steps in turn (the order reversed every other
            # block) until each has run `steps`; its rate is its steps over its summed time
            seconds = {side: {"wall": 0.0, "cpu": 0.0} for side in timers}
            done, flip = 0, False
            while done < steps:
                k = min(args.block, steps - done)
                for side in (reversed(timers) if flip else timers):
                    took = d3.run(d3_name, k) if side == "d3rlpy" else time_updates(timers[side], k)
                    for clock in ("wall", "cpu"):
                        seconds[side][clock] += took[clock]
                done, flip = done + k, not flip
            for side, sec in seconds.items():
                for clock in ("wall", "cpu"):
                    sides[side]["reps"][clock].append(steps / sec[clock])
        for s in sides.values():
            for clock in ("wall", "cpu"):
                s[f"{clock}_steps_per_s"] = statistics.median(s["reps"][clock])
        row = {"method": m, "ours": ours_name, "d3rlpy": d3_name if use_d3 else None, "steps": steps,
               "unit": "generations/s" if online else "steps/s", "sides": sides}
        if use_d3:
            ref = sides["d3rlpy"]
            for side in variants:
                s = sides[side]
                for clock in ("wall", "cpu"):
                    s[f"{clock}_ratio"] = s[f"{clock}_steps_per_s"] / ref[f"{clock}_steps_per_s"]
                    s[f"{clock}_ratio_of_pairs"] = statistics.median(
                        o / d for o, d in zip(s["reps"][clock], ref["reps"][clock], strict=True))
        rows.append(row)
        for side, s in sides.items():
            fl = f", {s['gflop_per_step']:.2f} GFLOP/step" if s["gflop_per_step"] is not None else ""
            txt = (f"{m if side == 'ours' else '':<11} {side:<12} CPU {s['cpu_steps_per_s']:7.2f} "
                   f"wall {s['wall_steps_per_s']:7.2f} {row['unit']} ({s['params']:,} params{fl})")
            if "cpu_ratio" in s:
                txt += (f"  ours/d3rlpy CPU {s['cpu_ratio']:.2f} (pairs {s['cpu_ratio_of_pairs']:.2f}) "
                        f"wall {s['wall_ratio']:.2f} (pairs {s['wall_ratio_of_pairs']:.2f})")
            elif side == "ours" and not use_d3:
                txt += "  no d3rlpy counterpart" if d3_name is None else "  d3rlpy skipped"
            print(txt, flush=True)
            print(f"{'':<24} reps CPU {[round(x, 2) for x in s['reps']['cpu']]} "
                  f"wall {[round(x, 2) for x in s['reps']['wall']]}", flush=True)
        updates.clear()

    if isinstance(d3, D3Subprocess):
        d3.close()
    tmpdir.cleanup()
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "pinned_cpu": args.cpu, "steady_malloc": args.steady_malloc, "load_avg": os.getloadavg(),
           "hidden": list(hidden), "batch": BATCH, "state_dim": spec.user_state_dim, "action_dim": spec.action_dim,
           "d3rlpy": d3_info.get("d3rlpy"), "reps": args.reps, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

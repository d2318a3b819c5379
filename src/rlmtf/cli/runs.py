"""What ``rlmtf train`` does around the training loop: its argument checks (made before the library is
imported or a progress bar drawn), a resumed run's configuration (from its ``config.json``), the
warning about data whose exploration does not fit the algorithm, and the progress bar's text."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rlmtf.cli.common import ALGORITHM_NAMES, check, fail, warn

__all__ = ["COMPILE_NAMES", "RunArgs", "bar_updater", "check_train_args", "parse_hidden", "resumed_config",
           "warn_exploration"]

#: ``--compile`` modes (``rlmtf.train.loop.COMPILE_MODES``; a test keeps them equal).
COMPILE_NAMES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class RunArgs:
    """The flags of ``rlmtf train`` that define a run (on ``--resume``: filled in from its config.json)."""

    out: Path
    algo: str | None
    data: Path | None
    steps: int
    seed: int
    hidden: str
    critics: int
    batch_size: int
    embed_dim: int | None
    objective: str | None
    stream: bool
    buffer_shards: int
    reuse: float

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return parse_hidden(self.hidden)


def parse_hidden(text: str) -> tuple[int, ...]:
    """``--hidden 64,64`` as layer sizes (refused by name unless positive integers)."""
    try:
        sizes = tuple(int(h) for h in text.split(",") if h.strip())
    except ValueError:
        sizes = ()
    check(bool(sizes) and all(h > 0 for h in sizes),
          f"--hidden must be comma-separated positive integers, e.g. 64,64; got {text!r}")
    return sizes


def check_train_args(args: RunArgs, device: str, eval_every: int, checkpoint_every: int, compile: str) -> None:
    """Refuse a bad argument by name, before seconds of imports and before the progress bar."""
    check(args.algo is not None, "--algo is required (or --resume to continue the run in --out)")
    check(args.algo in ALGORITHM_NAMES, f"--algo must be one of {', '.join(ALGORITHM_NAMES)}, got {args.algo!r}")
    check(args.data is not None, "--data is required (or --resume to continue the run in --out)")
    check(args.steps >= 0, f"--steps must be >= 0, got {args.steps}")
    args.hidden_sizes  # noqa: B018 (checks --hidden)
    check(args.critics >= 1, f"--critics must be >= 1, got {args.critics}")
    check(args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}")
    check(args.embed_dim is None or args.embed_dim >= 0, f"--embed-dim must be >= 0, got {args.embed_dim}")
    check(eval_every >= 0, f"--eval-every must be >= 0, got {eval_every}")
    check(checkpoint_every >= 1, f"--checkpoint-every must be >= 1, got {checkpoint_every}")
    check(args.buffer_shards >= 1, f"--buffer-shards must be >= 1, got {args.buffer_shards}")
    check(args.reuse > 0, f"--reuse must be > 0, got {args.reuse}")
    check(device in ("cpu", "auto") or device.startswith("cuda"), f"--device must be cpu, cuda or auto, got {device!r}")
    check(compile in COMPILE_NAMES, f"--compile must be one of {', '.join(COMPILE_NAMES)}, got {compile!r}")


def resumed_config(args: RunArgs, given: set[str]) -> dict:
    """The saved configuration of the run in ``args.out``: ``args`` takes its algorithm, data and (unless
    ``--steps`` is given) its steps; a flag in ``given`` that contradicts it is refused by name."""
    path = args.out / "config.json"
    if not path.is_file():
        fail(f"no checkpoint to resume in {args.out / 'checkpoint'}: {args.out} holds no run (no config.json)")
    try:
        saved = json.loads(path.read_text())
        run_algo, ac, tc = saved["algo"], saved["algo_config"], saved["train_config"]
    except (ValueError, KeyError, TypeError) as e:
        fail(f"{path}: not the config.json of a run ({e})")
    conflicts: list[str] = []

    def differs(flag: str, mine, theirs) -> None:
        if mine != theirs:
            conflicts.append(f"--{flag} {_show(mine)} (the run: {_show(theirs)})")

    if "algo" in given:
        differs("algo", args.algo, run_algo)
    saved_data = saved.get("data")
    if "data" in given and saved_data not in (None, "<in memory>") and args.data is not None:
        if Path(args.data).resolve() != Path(saved_data).resolve():
            conflicts.append(f"--data {args.data} (the run: {saved_data})")
    for flag, key, value in (("hidden", "hidden", None), ("critics", "ensemble_size", args.critics),
                             ("batch-size", "batch_size", args.batch_size), ("embed-dim", "embed_dim", args.embed_dim)):
        if flag.replace("-", "_") in given and key in ac:
            mine = args.hidden_sizes if flag == "hidden" else value
            differs(flag, tuple(mine) if flag == "hidden" else mine, tuple(ac[key]) if flag == "hidden" else ac[key])
    for flag, key in (("seed", "seed"), ("stream", "stream"), ("buffer-shards", "buffer_shards"), ("reuse", "reuse")):
        if flag.replace("-", "_") in given and key in tc:
            differs(flag, getattr(args, key), tc[key])
    if "objective" in given and args.objective is not None:
        from rlmtf.core.objective import Objective

        try:
            obj = Objective.parse(args.objective)
        except ValueError as e:
            fail(str(e))
        mine = {"gamma": obj.gamma, "session_gamma": obj.session_gamma, "episode": obj.episode,
                "return_bonus": obj.return_bonus}
        theirs = {k: {**tc, **ac}.get(k) for k in mine}
        if any(theirs[k] is not None and mine[k] != theirs[k] for k in mine):
            conflicts.append(f"--objective {args.objective} (the run: "
                             + ", ".join(f"{k}={v}" for k, v in theirs.items() if v is not None) + ")")
    if conflicts:
        fail(f"--resume continues the run in {args.out} with its own configuration ({path}); these flags "
             f"contradict it: {'; '.join(conflicts)}. Leave them out, or train a new run in another --out")
    args.algo = run_algo
    if args.data is None:
        if saved_data in (None, "<in memory>"):
            fail(f"{path}: the run was trained on data in memory; give --data")
        args.data = Path(saved_data)
    if "steps" not in given:
        args.steps = int(tc.get("steps", args.steps))
    state = args.out / "checkpoint" / "state.json"
    if state.is_file():
        try:
            done = int(json.loads(state.read_text()).get("step", 0))
        except (ValueError, TypeError):
            done = 0
        check(args.steps >= done, f"--steps {args.steps} is below the checkpoint's step {done} ({state})")
    return saved


def _show(v) -> str:
    if isinstance(v, tuple | list):
        return ",".join(map(str, v))
    return str(v)


def warn_exploration(algo: str, data: Path) -> None:
    """Warn when Enhanced-State RL, which learns one action per user-item pair, is given data explored per
    request (or not at all): per-request noise carries no per-item signal (RESULTS.md measures the cost)."""
    if algo != "esrl":
        return
    from rlmtf.data.io import read_meta

    try:
        info = read_meta(data).info
    except Exception:  # noqa: BLE001 (a file, or a stream of shards: the loop reads and checks it)
        return
    explore, per = info.get("explore"), info.get("per")
    if explore == "none":
        warn(f"{data} was logged without exploration (explore=none): Enhanced-State RL learns from the "
             "spread of logged actions per user-item pair and has none here")
    elif explore is not None and per == "request":
        warn(f"{data} was explored per request (explore={explore}, per=request): Enhanced-State RL learns one "
             "action per user-item pair, and noise drawn once per request carries no per-item signal; log its "
             "data with `rlmtf simulate --per item` (RESULTS.md measures the cost)")


def bar_updater(bar, task, last: dict):
    """The training loop's step callback: the progress bar's position and text (losses, the critic
    ensemble's mean and spread of Q, the latest validation GAUC, steps/s); ``last['gauc']`` keeps the
    latest validation GAUC."""

    def on_step(step: int, m: dict) -> None:
        if not m:  # metrics come at logged steps only
            bar.update(task, completed=step)
            return
        if "eval/val_weighted_gauc" in m:
            last["gauc"] = m["eval/val_weighted_gauc"]
        shown = [f"{k.split('/', 1)[1]} {m[k]:.3g}" for k in m if k.startswith(("losses/", "es/fitness"))][:3]
        if "q/mean" in m:
            shown.append(f"Q mean {m['q/mean']:.3g}")
        if "q/std_critics" in m:
            shown.append(f"Q sd {m['q/std_critics']:.3g}")
        if "gauc" in last:
            shown.append(f"val GAUC {last['gauc']:.4f}")
        sps = m.get("charts/steps_per_s")
        if sps:
            shown.append(f"{sps:.1f} steps/s")
        bar.update(task, completed=step, extra=" ".join(shown))

    return on_step

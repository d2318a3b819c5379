"""Peak memory of streamed training on a dataset several times larger than a memory cap.

    python benchmarks/bench_stream_memory.py --sessions 170000 --shards 64 --cap-mb 1200 --out /tmp/streambench

1. simulates exploration data per item (``rlmtf simulate --workers 2``) and repartitions it
   (``rlmtf data shard``);
2. trains from it with ``rlmtf train --stream`` in a child process that a watchdog kills the moment its
   resident memory passes ``--cap-mb`` (so a pass means the cap held at every sample, every 20 ms);
3. with ``--in-memory``, trains the same way without ``--stream`` and no cap, for comparison.

Reports each run's peak resident set (the kernel's high-water mark of the child, ``ru_maxrss``), its wall
time, the dataset's rows and its in-memory size (the columns read plus the request-level arrays built
from them, measured on one shard and scaled by rows), as a Markdown table and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

PY = sys.executable


def rlmtf(*args: str) -> list[str]:
    return [PY, "-m", "rlmtf", *args]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_capped(cmd: list[str], cap_mb: float | None) -> dict:
    """Run ``cmd``; kill it if its RSS passes ``cap_mb``; return peak RSS (MB), wall time and outcome."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    state = {"killed": False, "sampled_peak": 0.0}

    def watch() -> None:
        while proc.poll() is None:
            now = rss_mb(proc.pid)
            state["sampled_peak"] = max(state["sampled_peak"], now)
            if cap_mb is not None and now > cap_mb:
                state["killed"] = True
                proc.kill()
                return
            time.sleep(0.02)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.communicate()
    w.join()
    return {"returncode": proc.returncode, "killed_at_cap": state["killed"], "peak_rss_mb": usage.ru_maxrss / 1024,
            "sampled_peak_rss_mb": state["sampled_peak"], "wall_s": time.perf_counter() - t0,
            "stderr_tail": err[-1500:], "stdout_tail": out[-800:]}


def in_memory_bytes_per_row(shard: Path) -> float:
    """Columns read + transitions built, per row, measured on one shard."""
    from rlmtf.data.io import read_logs
    from rlmtf.data.transitions import build_transitions

    logs = read_logs(shard)
    t = build_transitions(logs)
    cols = sum(v.nbytes for v in logs.columns.values())
    trans = sum(v.nbytes for v in vars(t).values())
    return (cols + trans) / len(logs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=170_000)
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--cap-mb", type=float, default=1200)
    ap.add_argument("--buffer-shards", type=int, default=2)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--reuse", type=float, default=0.1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/streambench"))
    ap.add_argument("--in-memory", action="store_true", help="also train without --stream (no cap) to compare")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    raw, sharded = args.out / "explore", args.out / "sharded"
    if not (sharded / "_meta.json").is_file():
        t0 = time.perf_counter()
        subprocess.run(rlmtf("simulate", "--policy", "baseline", "--explore", "uniform", "--per", "item", "--sessions",
                             str(args.sessions), "--seed", "1", "--out", str(raw), "--workers", "2", "--overwrite"),
                       check=True)
        t1 = time.perf_counter()
        subprocess.run(rlmtf("data", "shard", str(raw), str(sharded), "--shards", str(args.shards), "--overwrite"),
                       check=True)
        print(f"simulated in {t1 - t0:.0f} s, sharded in {time.perf_counter() - t1:.0f} s")
    meta = json.loads((sharded / "_meta.json").read_text())
    rows = int(meta["rows"])
    per_row = in_memory_bytes_per_row(sharded / "shard=00000")
    disk_mb = sum(f.stat().st_size for f in sharded.rglob("*.parquet")) / 2**20
    data_mb = rows * per_row / 2**20
    print(f"{rows:,} rows, {disk_mb:.0f} MB of Parquet, {data_mb:.0f} MB in memory ({per_row:.0f} B/row); "
          f"cap {args.cap_mb:.0f} MB = {data_mb / args.cap_mb:.1f}x smaller")
    common = ["--algo", "integrated", "--hidden", "64,64", "--critics", "2", "--steps", str(args.steps),
              "--eval-every", "0", "--checkpoint-every", str(args.steps), "--threads", "1", "--json"]
    runs = {}
    runs["stream"] = run_capped(rlmtf("train", "--data", str(sharded), "--out", str(args.out / "run_stream"),
                                      "--stream", "--buffer-shards", str(args.buffer_shards), "--reuse",
                                      str(args.reuse), *common), args.cap_mb)
    print(json.dumps({k: v for k, v in runs["stream"].items() if "tail" not in k}))
    if args.in_memory:
        runs["in_memory"] = run_capped(rlmtf("train", "--data", str(sharded), "--out", str(args.out / "run_mem"),
                                             *common), None)
        print(json.dumps({k: v for k, v in runs["in_memory"].items() if "tail" not in k}))
    loads = None
    cfg = args.out / "run_stream" / "config.json"
    if cfg.is_file():
        loads = json.loads(cfg.read_text()).get("stream")
    print("\n| run | cap (MB) | peak RSS (MB) | killed at cap | wall (s) | exit |\n|---|---:|---:|---|---:|---:|")
    for name, r in runs.items():
        cap = f"{args.cap_mb:.0f}" if name == "stream" else "none"
        print(f"| {name} | {cap} | {r['peak_rss_mb']:.0f} | {r['killed_at_cap']} | {r['wall_s']:.0f} | "
              f"{r['returncode']} |")
    doc = {"rows": rows, "parquet_mb": disk_mb, "in_memory_mb": data_mb, "bytes_per_row": per_row,
           "cap_mb": args.cap_mb, "buffer_shards": args.buffer_shards, "shards": args.shards, "steps": args.steps,
           "reuse": args.reuse, "stream": loads, "runs": runs}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))
    if runs["stream"]["returncode"] != 0:
        sys.exit("the streamed run failed:\n" + runs["stream"]["stderr_tail"])


if __name__ == "__main__":
    main()

"""``rlmtf data``: validate logged data, repartition it into shards, and the KuaiRand-Pure data (download,
check, fit the kuairand environment's models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from rlmtf.cli.common import (
    FlagGroup,
    JsonOpt,
    KuaiRandDirOpt,
    check,
    claim_dir,
    console,
    errors,
    print_json,
    progress,
)

data_app = typer.Typer(help="Logged data.", no_args_is_help=True, cls=FlagGroup)


@data_app.command("validate")
def data_validate(path: Annotated[Path, typer.Argument(help="Dataset directory or Parquet file.")],
                  json_out: JsonOpt = False) -> None:
    """Check a logged dataset against the schema; print a summary or the first problem."""
    from rlmtf.data.io import validate_logs

    with errors():
        summary = validate_logs(path)
    if json_out:
        print_json(summary)
    else:
        console.print("ok: " + ", ".join(f"{v:,} {k}" for k, v in summary.items()))


@data_app.command("shard")
def data_shard(
    src: Annotated[Path, typer.Argument(help="Dataset directory (or Parquet file) to repartition.")],
    dst: Annotated[Path, typer.Argument(help="Output: DST/shard=K/, each a dataset of whole sessions.")],
    shards: Annotated[int, typer.Option(help="Number of shards (at least the number of training processes; "
                                        "sized so that a few fit in memory at once).")] = 16,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the sharded dataset in DST (refused "
                                            "without it).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Repartition logged data by a hash of session_id, so that no session spans two shards: what
    `rlmtf train --stream` and torchrun training read. Reads one input file at a time."""
    check(shards >= 1, f"--shards must be >= 1, got {shards}")
    claim_dir(dst, "a sharded dataset", overwrite)
    from rlmtf.data.io import read_meta
    from rlmtf.data.shard import shard_dataset

    with errors():
        total = read_meta(src).info.get("rows") if src.is_dir() else None
        with progress() as bar:
            task = bar.add_task(f"shard into {shards}", total=total, extra="")
            info = shard_dataset(src, dst, shards, overwrite=overwrite,
                                 progress=lambda n: bar.update(task, advance=n))
    summary = {"out": str(dst), "shards": info.n_shards, "rows": sum(info.rows_per_shard), "files": info.files,
               "rows_per_shard_min": min(info.rows_per_shard), "rows_per_shard_max": max(info.rows_per_shard)}
    if json_out:
        print_json(summary)
    else:
        console.print(f"{summary['rows']:,} rows into {info.n_shards} shards ({summary['rows_per_shard_min']:,}-"
                      f"{summary['rows_per_shard_max']:,} rows each) in {dst}")


@data_app.command("kuairand")
def data_kuairand(
    download: Annotated[Path | None, typer.Option(help="Fetch the official KuaiRand-Pure release into DIR, unpack "
                                                  "and validate it.")] = None,
    check: Annotated[Path | None, typer.Option(help="Validate a KuaiRand-Pure directory and summarise it.")] = None,
    fit: Annotated[Path | None, typer.Option(help="Fit the response and MTL models (first 10 days) into DIR.")] = None,
    kuairand_dir: KuaiRandDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """KuaiRand-Pure: download, validate, fit the models of the kuairand environment."""
    from rlmtf.envs.kuairand.data import load_kuairand
    from rlmtf.envs.kuairand.download import download as fetch
    from rlmtf.envs.kuairand.paths import resolve_data_dir

    with errors():
        if not (download or check or fit):
            raise ValueError("give --download DIR, --check DIR or --fit DIR")
        out: dict = {}
        if download:
            out["downloaded"] = str(fetch(download, log=console.print))
        if check or download:
            d = load_kuairand(check or download)
            out["summary"] = d.summary()
        if fit:
            from rlmtf.envs.kuairand.fit import fit_all

            out["fit"] = fit_all(resolve_data_dir(kuairand_dir), fit, log=console.print)
    if json_out:
        print_json(out)
        return
    if "downloaded" in out:
        console.print(f"downloaded: {out['downloaded']}", highlight=False, soft_wrap=True)
    if "summary" in out:
        console.print("summary:", highlight=False)
        for k, v in out["summary"].items():
            console.print(f"  {k}: {json.dumps(v, default=str)}", highlight=False, soft_wrap=True)
    if "fit" in out:
        from rlmtf.envs.kuairand.fit import summary_lines

        console.print(f"fitted the models into {fit} (held-out metrics; the whole report: {fit / 'report.json'})",
                      highlight=False, soft_wrap=True)
        for line in summary_lines(out["fit"]):
            console.print(f"  {line}", highlight=False, soft_wrap=True)

"""The ``implicit-bias`` command line (SPEC §5).

Heavy modules (torch, xarray) are imported inside the verbs so that
``implicit-bias --help`` starts fast. Every user-input error ends with one
line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="A workbench for the implicit bias of gradient descent: batched sweeps, "
    "phases, curvature, margins, paper reproductions.",
)


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    typer.echo(f"warning: {' '.join(str(message).split())}", err=True)


def _guard(fn):
    """Turn user-input errors into one line and exit code 2 (failed chunks: exit 1)."""
    import warnings

    from ._errors import ChunksFailed, ChunkWarning, UserInputError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", ChunkWarning)
            warnings.showwarning = _one_line_warning
            return fn()
    except UserInputError as err:
        _fail(str(err))
    except FileNotFoundError as err:
        _fail(f"file not found: {err.filename or err}")
    except ChunksFailed as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo(
            "interrupted; finished chunks are kept, run the same command to resume", err=True
        )
        raise typer.Exit(130) from None


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML config file")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override key=value (repeatable)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="results folder (default results/<name>/)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda")] = None,
    workers: Annotated[
        int | None, typer.Option(help="run chunks on a local Dask cluster of N workers")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="address of a Dask scheduler (tcp://…)")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace results of another config")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Run a config (a sweep) and write a results folder."""
    if device is not None and device not in ("cpu", "cuda"):
        _fail(f"--device must be cpu or cuda (got {device!r})")
    if workers is not None and workers < 1:
        _fail(f"--workers must be >= 1 (got {workers})")

    def go():
        from .report import summary_table
        from .sweep import run_sweep

        tree = run_sweep(
            config,
            out,
            set_ or [],
            overwrite=overwrite,
            device=device,
            workers=workers,
            scheduler=scheduler,
            progress=not quiet,
        )
        typer.echo(summary_table(tree))
        typer.echo(f"results: {tree.attrs.get('path', out)}")

    _guard(go)


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="YAML config file")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override key=value")] = None,
) -> None:
    """Check a config (and its data) without running it."""

    def go():
        from .config import load_config
        from .sweep import make_plan

        cfg = load_config(config, set_ or [])
        plan = make_plan(cfg, config.resolve().parent)
        typer.echo(
            f"ok: {cfg.name}: {len(plan.runs)} runs in {len(plan.groups)} group(s), "
            f"{len(plan.chunks)} chunk(s); config hash {cfg.config_hash()}"
        )
        from .metrics import data_geometry

        # the data diagnostics of SPEC §3, before committing to a long run
        for ds in {r.data.fingerprint(): r.data for r in plan.runs}.values():
            g = data_geometry(ds)[1]
            typer.echo(
                f"data {ds.fingerprint()}: n={ds.X_train.shape[0]} d={ds.X_train.shape[1]} "
                f"test={ds.X_test.shape[0]} separable={g['separable']} "
                f"svm_margin={g['svm_margin']:.4g} rank={g['rank']} "
                f"near_orthogonality={g['near_orthogonality']:.3g} "
                f"class_overlap={g['class_overlap']:.3g}"
            )

    _guard(go)


@app.command()
def report(results: Annotated[Path, typer.Argument(help="results folder")]) -> None:
    """Figures and tables of a results folder."""

    def go():
        from .report import write_report

        paths = write_report(results)
        for p in paths:
            typer.echo(str(p))

    _guard(go)


@app.command()
def reproduce(
    paper: Annotated[str, typer.Argument(help="liu2023 | frei2023 | lewkowycz2020 | all")],
    quick: Annotated[
        bool, typer.Option(help="small, fast version (about a minute a paper)")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(help="results folder (default results/reproduce[-quick])"),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="replace experiment folders made with another config")
    ] = False,
) -> None:
    """Reproduce a paper's claims: runs, figures and a claims table."""

    def go():
        from .reproduce import claims_text, default_out
        from .reproduce import reproduce as _reproduce

        folder = out if out is not None else default_out(quick)
        claims, files = _reproduce(
            paper,
            quick=quick,
            out=folder,
            progress=sys.stderr.isatty(),
            overwrite=overwrite,
            echo=lambda m: typer.echo(m, err=True),
        )
        typer.echo(claims_text(claims))
        typer.echo(f"claims table: {folder / 'claims.md'} (and .csv, .json)")
        reports = sorted({str(p.parent) for p in files if p.suffix == ".png"})
        for r in reports:
            typer.echo(f"figures: {r}")

    _guard(go)


@app.command()
def bench(
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    quick: Annotated[bool, typer.Option(help="a smaller workload")] = False,
    json_: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    repeats: Annotated[
        int, typer.Option(help="best of N timings of each workload (noisy machines)")
    ] = 1,
) -> None:
    """Time the engine against a hand-written per-run baseline loop."""
    if repeats < 1:
        _fail(f"--repeats must be >= 1 (got {repeats})")

    def go():
        from .bench import main as bench_main

        bench_main(device=device, quick=quick, as_json=json_, repeats=repeats)

    _guard(go)


@app.command()
def info() -> None:
    """Versions, devices and threads."""
    import platform

    import torch

    from . import __version__

    typer.echo(f"implicit-bias {__version__}")
    typer.echo(
        f"python {platform.python_version()} on {platform.machine()} ({platform.processor() or 'cpu'})"
    )
    typer.echo(f"torch {torch.__version__}; threads {torch.get_num_threads()}")
    cuda = torch.cuda.is_available()
    typer.echo(f"cuda: {torch.cuda.get_device_name(0) if cuda else 'not available'}")
    for mod in ("numpy", "xarray", "pydantic", "scipy", "sklearn", "matplotlib"):
        try:
            m = __import__(mod)
            typer.echo(f"{mod} {m.__version__}")
        except ImportError:
            typer.echo(f"{mod} not installed")
    try:
        import dask

        typer.echo(f"dask {dask.__version__}")
    except ImportError:
        typer.echo("dask not installed (optional: --workers / --scheduler)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

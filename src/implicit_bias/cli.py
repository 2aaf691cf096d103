"""The ``implicit-bias`` command line (SPEC §5).

Heavy modules (torch, xarray) are imported inside the verbs so that
``implicit-bias --help`` starts fast. Every user-input error ends with one
line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup


def _plain_params(params: list[Any]) -> list[Any]:
    """Help without typer's type labels: ``CONFIG`` not ``{config} <path>``, no ``<bool>``."""
    for p in params:
        if getattr(p, "_plain", False):
            continue
        if p.param_type_name == "argument":
            name = (p.metavar or p.name or "arg").upper()
            p.metavar = name
            usage = name if p.required else f"[{name}]"
            p._usage_display_name = lambda u=usage: u  # type: ignore[attr-defined]
            p.display_type_rich = lambda ctx: None  # type: ignore[attr-defined]
        elif p.param_type_name == "option":
            label = None if p.is_flag else (p.metavar or (p.name or "value").upper())
            p.display_type_rich = lambda ctx, label=label: label  # type: ignore[attr-defined]
        p._plain = True  # type: ignore[attr-defined]
    return params


class _PlainCommand(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_params(super().get_params(ctx))


class _PlainGroup(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_params(super().get_params(ctx))


app = typer.Typer(
    cls=_PlainGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="A workbench for the implicit bias of gradient descent: batched sweeps, "
    "phases, curvature, margins, paper reproductions.",
)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"implicit-bias {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """A workbench for the implicit bias of gradient descent: batched sweeps, phases,
    curvature, margins, paper reproductions."""


def _out_dir(out: str | None) -> Path | None:
    """``--out`` as a folder; an empty one is refused (it would mean the current
    directory, which the user did not name)."""
    if out is None:
        return None
    if not out.strip():
        _fail("--out is empty: name a results folder (--out . for the current directory)")
    return Path(out)


def _fail(msg: str) -> None:
    from ._errors import one_line

    typer.echo(f"error: {_printable(one_line(msg))}", err=True)
    raise typer.Exit(2)


def _printable(text: str) -> str:
    """``text`` with undecodable file-name bytes shown as U+FFFD (never an encoding error)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    from ._errors import one_line

    typer.echo(f"warning: {_printable(one_line(message))}", err=True)


def _guard(fn):
    """Turn user-input errors into one line and exit code 2 (failed chunks: exit 1);
    config and chunk warnings into one line each."""
    import warnings

    from ._errors import ChunksFailed, ChunkWarning, UserInputError
    from .config import ConfigWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ConfigWarning | ChunkWarning):
            _one_line_warning(message, category, filename, lineno, file, line)
        else:
            previous(message, category, filename, lineno, file, line)

    previous = warnings.showwarning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", ConfigWarning)
            warnings.simplefilter("always", ChunkWarning)
            warnings.showwarning = show
            return fn()
    except UserInputError as err:
        _fail(str(err))
    except FileNotFoundError as err:
        _fail(f"file not found: {err.filename or err}")
    except OSError as err:  # a full disk, a read-only folder, another user's file
        from ._errors import disk_full, is_disk_full

        if is_disk_full(err):
            _fail(str(disk_full(err, err.filename or "the results folder")))
        where = f": {err.filename}" if err.filename else ""
        _fail(f"{err.strerror or type(err).__name__}{where}")
    except RecursionError:
        _fail("input nested too deep (a config or value with hundreds of levels)")
    except ChunksFailed as err:
        typer.echo(f"error: {_printable(str(err))}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo(
            "interrupted; finished chunks are kept, run the same command to resume", err=True
        )
        raise typer.Exit(130) from None


@app.command(cls=_PlainCommand)
def run(
    config: Annotated[Path, typer.Argument(help="YAML config file", metavar="CONFIG")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="override a key (repeatable); a swept key is changed with sweep.KEY=[v1,v2]",
        ),
    ] = None,
    out: Annotated[
        str | None,  # a string: an empty --out must not become Path("") == "."
        typer.Option(metavar="DIR", help="results folder (default results/NAME/)"),
    ] = None,
    device: Annotated[str | None, typer.Option(metavar="cpu|cuda", help="device")] = None,
    workers: Annotated[
        int | None,
        typer.Option(metavar="N", help="run chunks on a local Dask cluster of N workers"),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(metavar="ADDRESS", help="address of a Dask scheduler (tcp://HOST:PORT)"),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace results of another config")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Run a config (a sweep) and write a results folder."""
    out_dir = _out_dir(out)
    if device is not None and device not in ("cpu", "cuda"):
        _fail(f"--device must be cpu or cuda (got {device!r})")
    if workers is not None and workers < 1:
        _fail(f"--workers must be >= 1 (got {workers})")

    def go():
        from .report import summary_table
        from .sweep import run_sweep

        tree = run_sweep(
            config,
            out_dir,
            set_ or [],
            overwrite=overwrite,
            device=device,
            workers=workers,
            scheduler=scheduler,
            progress=not quiet,
            echo=typer.echo,
        )
        typer.echo(_printable(summary_table(tree)))
        typer.echo(_printable(f"results: {tree.attrs.get('path', out)}"))

    _guard(go)


@app.command(cls=_PlainCommand)
def validate(
    config: Annotated[Path, typer.Argument(help="YAML config file", metavar="CONFIG")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="override a key (repeatable)"),
    ] = None,
    plan_only: Annotated[
        bool,
        typer.Option(
            "--plan-only",
            help="skip the time estimate (it trains each group's first chunk for a few steps)",
        ),
    ] = False,
) -> None:
    """Check a config (and its data) without running it; print its plan and time estimate."""

    def go():
        from .config import load_config

        cfg = load_config(config, set_ or [])  # before torch is imported: a refusal is quick
        from .planning import make_plan
        from .sweep import config_base_dir

        plan = make_plan(cfg, config_base_dir(config))
        typer.echo(
            f"ok: {cfg.name}: {len(plan.runs)} runs in {len(plan.groups)} group(s), "
            f"{len(plan.chunks)} chunk(s); config hash {cfg.config_hash()}"
        )
        typer.echo(plan.summary(with_time=False))
        if not plan_only:
            from .estimate import estimate_seconds

            typer.echo(estimate_seconds(plan).text())
        from .metrics import data_geometry

        # the data diagnostics of SPEC §3, before committing to a long run (the
        # data sets planning built: one per shape-relevant data config)
        shown = {ds.fingerprint(): ds for ds in plan.datasets}
        for k, ds in enumerate(shown.values()):
            if k == 10:
                typer.echo(f"... and {len(shown) - 10} more data sets")
                break
            g = data_geometry(ds)[1]
            typer.echo(
                f"data {ds.fingerprint()}: n={ds.X_train.shape[0]} d={ds.X_train.shape[1]} "
                f"test={ds.X_test.shape[0]} separable={g['separable']} "
                f"svm_margin={g['svm_margin']:.4g} rank={g['rank']} "
                f"near_orthogonality={g['near_orthogonality']:.3g} "
                f"class_overlap={g['class_overlap']:.3g}"
            )

    _guard(go)


@app.command(cls=_PlainCommand)
def keys(
    json_schema: Annotated[
        Path | None,
        typer.Option(
            "--json-schema",
            metavar="FILE",
            help="also write the config's JSON Schema to FILE (for YAML completion in editors)",
        ),
    ] = None,
) -> None:
    """List every config key with its type, default and meaning."""

    def go():
        import json

        from ._errors import UserInputError
        from .config_keys import json_schema as schema
        from .config_keys import keys_text

        if json_schema is not None:
            text = json.dumps(schema(), indent=2) + "\n"
            try:
                json_schema.write_text(text)
            except OSError as err:
                raise UserInputError(
                    f"--json-schema: cannot write {json_schema}: {err.strerror}"
                ) from None
        typer.echo(keys_text())
        if json_schema is not None:
            typer.echo(f"JSON Schema: {json_schema}")

    _guard(go)


@app.command(cls=_PlainCommand)
def report(
    results: Annotated[Path, typer.Argument(help="results folder", metavar="DIR")],
    x: Annotated[
        str | None,
        typer.Option(
            "--x", metavar="KEY", help="swept key on the x axis (default: the learning rate)"
        ),
    ] = None,
    y: Annotated[
        str | None,
        typer.Option(
            "--y",
            metavar="KEY",
            help="swept key on the y axis of the phase diagram (default: model.init_scale, "
            "else another swept key, else the seed)",
        ),
    ] = None,
    facet: Annotated[
        list[str] | None,
        typer.Option(
            "--facet",
            metavar="KEY",
            help="one panel per value of this key (repeatable; default: the other swept keys)",
        ),
    ] = None,
) -> None:
    """Figures and tables of a results folder; per-run figures span all groups of runs."""

    def go():
        from .report import write_report

        paths = write_report(results, x=x, y=y, facet=facet)
        for p in paths:
            typer.echo(_printable(str(p)))

    _guard(go)


@app.command(cls=_PlainCommand)
def reproduce(
    paper: Annotated[
        str,
        typer.Argument(
            help="liu2023 | frei2023 | lewkowycz2020 | cohen2021 | cohen2022 | momentum | all "
            "(every module in implicit_bias/papers/)",
            metavar="PAPER",
        ),
    ],
    quick: Annotated[
        bool, typer.Option("--quick", help="small, fast version (about a minute a paper)")
    ] = False,
    out: Annotated[
        str | None,  # a string: an empty --out must not become Path("") == "."
        typer.Option(metavar="DIR", help="results folder (default results/reproduce[-quick])"),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="replace experiment folders made with another config"),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
    data_seed: Annotated[
        int,
        typer.Option(
            "--data-seed",
            metavar="N",
            help="draw every experiment's data (and data-set subsets) from seeds N, N+1, …",
        ),
    ] = 0,
    draws: Annotated[
        int | None,
        typer.Option(metavar="K", help="data draws per experiment (default 2 quick, 5 full)"),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(metavar="K", help="init seeds 0…K−1 per setting (default: the recipe's)"),
    ] = None,
    claim: Annotated[
        str | None,
        typer.Option(
            metavar="KEY", help="re-run one claim only: its experiments and its row (e.g. L3)"
        ),
    ] = None,
) -> None:
    """Reproduce a paper's claims: runs, figures and a claims table."""
    out_dir = _out_dir(out)

    def go():
        from .progress import ProgressBoard
        from .reproduce import claims_text, default_out
        from .reproduce import reproduce as _reproduce

        folder = out_dir if out_dir is not None else default_out(quick, data_seed, draws, seeds)
        # a bar over experiments (advanced at each "paper/experiment …" the
        # reproduction announces) and under it each experiment's bar over runs
        show = not quiet and sys.stderr.isatty()
        with ProgressBoard(None, f"reproduce {paper}", enabled=show) as board:
            claims, files = _reproduce(
                paper,
                quick=quick,
                out=folder,
                progress=board,
                overwrite=overwrite,
                echo=board.start if show else (lambda m: typer.echo(m, err=True)),
                data_seed=data_seed,
                draws=draws,
                seeds=seeds,
                claim=claim,
            )
        typer.echo(claims_text(claims))
        table = next(f for f in files if f.suffix == ".md")
        typer.echo(f"claims table: {table} (and .csv, .json)")
        reports = sorted({str(p.parent) for p in files if p.suffix == ".png"})
        for r in reports:
            typer.echo(f"figures: {r}")

    _guard(go)


@app.command(cls=_PlainCommand)
def bench(
    device: Annotated[str, typer.Option(metavar="cpu|cuda", help="device")] = "cpu",
    quick: Annotated[bool, typer.Option("--quick", help="a smaller workload")] = False,
    json_: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    repeats: Annotated[
        int,
        typer.Option(metavar="N", help="best of N timings of each workload (noisy machines)"),
    ] = 1,
) -> None:
    """Time the engine against a hand-written per-run baseline loop."""
    if repeats < 1:
        _fail(f"--repeats must be >= 1 (got {repeats})")

    def go():
        from .bench import main as bench_main

        res = bench_main(device=device, quick=quick, as_json=json_, repeats=repeats)
        _record_bench(device, res)

    _guard(go)


def _record_bench(device: str, res: dict) -> None:
    """Keep the achieved GFLOP/s so that ``validate``/``run`` can estimate times."""
    import json

    from .planning import bench_record_path

    try:
        gflops = float(res["reference"]["ours_gflops"])
        path = bench_record_path()
        rec = json.loads(path.read_text()) if path.exists() else {}
        rec[device] = {"gflops": gflops}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec, indent=2))
        typer.echo(f"bench figure kept for time estimates: {path}", err=True)
    except (KeyError, TypeError, ValueError, OSError):
        pass  # a partial bench (or a read-only home) only loses the estimate


@app.command(cls=_PlainCommand)
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
    import signal

    # past a file-size limit (ulimit -f) a write then fails with EFBIG, reported in
    # one line, instead of the signal killing the process mid-write
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    app()


if __name__ == "__main__":
    main()

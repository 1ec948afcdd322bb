"""The ``sgdlab`` command line (Typer).

Every command reads ``params.yaml`` (``--params`` to use another file) and accepts ``--set
section.key=value`` overrides. Heavy imports (torch, Prefect, MLflow) happen inside the commands so
``sgdlab --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=(
        "sgdlab: experiments on how optimizers shape training and generalization.\n\n"
        "Typical use: edit params.yaml (or pass --set section.key=value), then `sgdlab run`; compare runs "
        "with `sgdlab ui` (the MLflow UI); reproduce with `dvc repro`."
    ),
)

ParamsOpt = typer.Option(None, "--params", "-p", help="params file (default: ./params.yaml of the project)")
SetOpt = typer.Option(None, "--set", "-s", help="override a setting, e.g. --set data.probe_size=512 (repeatable)")


def _config(params: Optional[Path], overrides: Optional[list[str]]):
    from sgdlab.config import ConfigError, load_config

    try:
        return load_config(params, overrides or [])
    except ConfigError as exc:
        typer.secho(f"config error:\n{exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1) from None


@app.command()
def config(params: Optional[Path] = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Print the resolved configuration (params.yaml + overrides, defaults filled in)."""
    from sgdlab.config import dump_config

    typer.echo(dump_config(_config(params, set_)), nl=False)


@app.command()
def prepare(
    params: Optional[Path] = ParamsOpt,
    set_: Optional[list[str]] = SetOpt,
    dataset: Optional[list[str]] = typer.Option(None, "--dataset", "-d", help="only these datasets"),
) -> None:
    """Prepare datasets: read/generate them offline and write data/processed/<name>/{train,test}.parquet."""
    cfg = _config(params, set_)
    from flows.prepare import run_prepare
    from sgdlab.data import DataFileError, SourceError

    try:
        run_prepare(cfg, list(dataset) if dataset else None)
    except (SourceError, DataFileError, ValueError) as exc:
        _fail(exc)


@app.command()
def run(params: Optional[Path] = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Run the study pipeline on the embedded defaults (no server needed).

    Phases: prepare data. (Training, probing, GAN prediction and the report plug in as they land.)
    """
    cfg = _config(params, set_)
    from flows.prepare import run_prepare
    from sgdlab import tracking
    from sgdlab.data import DataFileError, SourceError

    typer.echo(f"sgdlab run: study {cfg.study.name!r}; phases: prepare")
    try:
        results = run_prepare(cfg)
    except (SourceError, DataFileError, ValueError) as exc:
        _fail(exc)
    typer.echo(f"done: {len(results)} datasets prepared under {cfg.data.root}/processed/")
    typer.echo(f"MLflow store: {tracking.tracking_uri()}  (browse it with `sgdlab ui`)")


@app.command()
def ui(
    host: str = typer.Option("127.0.0.1", help="interface to listen on (loopback by default)"),
    port: int = typer.Option(5000, help="port"),
) -> None:
    """Start the MLflow UI on this project's store (Ctrl-C to stop)."""
    from sgdlab import tracking

    cmd = tracking.ui_command(host, port)
    typer.echo(f"MLflow UI on http://{host}:{port}  (store: {tracking.tracking_uri()})")
    os.execv(cmd[0], cmd)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

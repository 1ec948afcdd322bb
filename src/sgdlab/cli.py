"""The ``sgdlab`` command line (Typer).

Every command reads ``params.yaml`` (``--params`` to use another file) and accepts ``--set
section.key=value`` overrides. Heavy imports (torch, Prefect, MLflow) happen inside the commands so
``sgdlab --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
import time
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


def _config(params: Optional[Path], overrides: Optional[list[str]], profile: Optional[str] = None):
    """Load and validate the config (everything knowable before compute; exit 2 with the key named).

    ``--params other/params.yaml`` makes that file's folder the project root (``SGDLAB_HOME``), so its
    study's data, checkpoints, results and MLflow store live beside it, not in the current directory."""
    from sgdlab.config import ConfigError, load_config

    if params is not None:
        os.environ["SGDLAB_HOME"] = str(Path(params).resolve().parent)
    try:
        cfg = load_config(params, overrides or [], profile)
        from sgdlab.validate import validate_config

        validate_config(cfg)
        return cfg
    except (ConfigError, ValueError) as exc:
        typer.secho(f"config error:\n{exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _phase(cfg, name: str, **options) -> dict:
    """Run one phase (with the configured task runner); known errors print without a traceback."""
    from sgdlab.data import DataFileError, SourceError
    from sgdlab.interrupt import Interrupted
    from sgdlab.phases import PhaseFailed, get_phase

    try:
        phase = get_phase(name)
        phase.plan(phase.study(cfg), **options)  # missing inputs fail here, before Prefect starts (~10-30 s)
        from flows.phases import run_phase

        return run_phase(cfg, name, **options)
    except (SourceError, DataFileError, FileNotFoundError, ValueError, PhaseFailed, Interrupted) as exc:
        _fail(exc)


def _fail(exc: Exception) -> None:
    from sgdlab.interrupt import Interrupted
    from sgdlab.phases import PhaseFailed

    if isinstance(exc, Interrupted):
        typer.secho(f"interrupted ({exc}); re-run the same command to resume", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    if isinstance(exc, PhaseFailed):  # one line per failed unit, the healthy units' outputs already written
        typer.secho(f"error: {exc.summary}", fg=typer.colors.RED, err=True)
        for line in exc.lines:
            typer.secho(f"  failed: {line}", fg=typer.colors.RED, err=True)
    else:
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
    _phase(cfg, "prepare", datasets=list(dataset) if dataset else None)


def _print_summary(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sweep: test accuracy over seeds (mean ± std)")
    for col in ("model", "optimizer", "lr", "batch", "steps", "data", "variant", "runs", "diverged", "test acc"):
        table.add_column(col)
    for s in out["summary"]:
        m, sd = s.get("test/acc mean"), s.get("test/acc std")
        acc = "-" if m is None else f"{100 * m:.2f} ± {100 * (sd or 0):.2f} %"
        frac = s.get("train_fraction")
        table.add_row(
            str(s["model"]),
            str(s["optimizer"]),
            f"{s['lr']:g}",
            str(s["batch_size"]),
            str(s.get("steps")),
            "-" if frac is None else f"{frac:g}",
            str(s["variant"]),
            str(s["runs"]),
            str(s["diverged"]),
            acc,
        )
    Console().print(table)


@app.command()
def sweep(params: Optional[Path] = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Train the sweep of params.yaml: optimizers x lrs x batch sizes x seeds x models, plus scaling-rule
    variants. Finished runs are skipped, interrupted ones resume; results go to results/<study>/runs.parquet
    and to one MLflow child run per training run."""
    cfg = _config(params, set_)
    out = _phase(cfg, "sweep")
    _print_summary(out)
    typer.echo(f"results: {out['runs_table']}")


@app.command()
def probe(params: Optional[Path] = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Probe the Hessian of every finished run of the sweep at its final checkpoint: top-k eigenvalues
    (lambda_max), trace, the stability threshold (2/lr for SGD), Adam's preconditioned sharpness, optionally
    the spectral density, into results/<study>/probe.parquet (joined onto runs.parquet by run key for
    analysis), and final/hessian/* metrics into each run's MLflow run."""
    cfg = _config(params, set_)
    from rich.console import Console
    from rich.table import Table

    out = _phase(cfg, "probe")
    table = Table(title=f"Hessian at the final checkpoints ({out['probed']} runs)")
    for col in ("run", "lambda_max", "threshold", "trace ± stderr"):
        table.add_column(col)
    for key, m in out["metrics"].items():
        tr = m.get("hessian/trace")
        table.add_row(
            key,
            f"{m['hessian/lambda_max']:.4g}",
            f"{m.get('hessian/threshold', float('nan')):.4g}",
            "-" if tr is None else f"{tr:.4g} ± {m['hessian/trace_stderr']:.2g}",
        )
    Console().print(table)
    typer.echo(f"results: {out['runs_table']}")


gan_app = typer.Typer(help="The class-conditional GAN of the test-error predictor (trained on the train split only).")
app.add_typer(gan_app, name="gan")


@gan_app.command("train")
def gan_train(params: Optional[Path] = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Train the GAN on the training part of train.dataset (reused when config and data are unchanged) and
    sample the labelled synthetic set (gan.n_per_class per class) to results/<study>/gan/synthetic.parquet."""
    cfg = _config(params, set_)
    out = _phase(cfg, "gan")
    fd = out.get("frechet_synthetic_vs_val")
    typer.echo(
        f"synthetic set: {out['synthetic']}  (generator {out['generator_hash'][:12]}, "
        f"{'trained' if out['trained'] else 'reused'}"
        + (f", class-conditional Frechet distance to held-out data {fd:.2f})" if fd is not None else ")")
    )
    if out.get("frechet_synthetic_vs_test") is not None:
        typer.echo(
            f"class-conditional Frechet distance of the synthetic set to test data "
            f"{out['frechet_synthetic_vs_test']:.2f}, to training data {out['frechet_synthetic_vs_train']:.2f} "
            "(Zhang et al. 2022: closer to test than to train)"
        )
    typer.echo(f"sample grid: {out['grid']}")


@gan_app.command("sample")
def gan_sample(params: Optional[Path] = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Re-sample the synthetic set from the trained GAN (e.g. --set gan.n_per_class=2000 --set gan.seed=1);
    refuses to run when there is no trained generator for this config and data."""
    cfg = _config(params, set_)
    import json

    from sgdlab.phases.gan import gan_config
    from sgdlab.study import Study

    study = Study(cfg)
    meta, generator = study.path("gan", "meta"), study.path("gan", "generator")
    if not meta.is_file() or not generator.is_file():
        _fail(FileNotFoundError(f"{generator}: no trained GAN; run `sgdlab gan train` first"))
    if json.loads(meta.read_text()).get("config") != gan_config(study).to_dict():
        _fail(
            ValueError(
                f"{meta}: the trained GAN has another config than params.yaml's gan section; run `sgdlab gan train`"
            )
        )
    out = _phase(cfg, "gan")
    typer.echo(f"synthetic set: {out['synthetic']}")


@app.command()
def predict(params: Optional[Path] = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Predict every finished classifier's test error (GAN, validation, train error) and compute the
    generalization measures (lambda_max, trace, PAC-Bayes flatness); score them all (MAE, Kendall tau, Psi,
    PGDL) into results/<study>/{predictions,scores}.parquet and scores.json."""
    cfg = _config(params, set_)
    from rich.console import Console
    from rich.table import Table

    out = _phase(cfg, "predict")
    table = Table(title=f"predictors over {out['n_models']} classifiers")
    for col in ("predictor", "kind", "scored against", "MAE (pp)", "Kendall tau", "Psi", "PGDL", "quality gate"):
        table.add_column(col)

    def f(v, scale=1.0):
        return "-" if v is None else f"{scale * v:.3g}"

    for s in out["scores"]:
        table.add_row(
            s["predictor"],
            s["kind"],
            str(s.get("target", "-")),
            f(s["mae"], 100),
            f(s["kendall_tau"]),
            f(s["psi"]),
            f(s["pgdl"]),
            (s["gate"] if s["gate"] == "pass" else f"{s['gate']}: {s['gate_note']}") if s.get("gate") else "-",
        )
    Console().print(table)
    gate = out.get("gate")
    if gate is not None:
        typer.echo(f"GAN quality gate: {gate['verdict']} ({gate['criteria']})")
        for r in gate["reasons"]:
            typer.echo(f"  - {r}")


@app.command()
def optimizers(name: Optional[str] = typer.Argument(None, help="show one optimizer in detail")) -> None:
    """List the optimizer families with their hyper-parameters and defaults."""
    from rich.console import Console
    from rich.table import Table

    from sgdlab.optim import get_spec, list_specs

    console = Console()
    if name:
        try:
            spec = get_spec(name)
        except ValueError as exc:
            _fail(exc)
        console.print(f"[bold]{spec.name}[/bold] ({spec.family}; {spec.source})\n{spec.summary}\n{spec.paper}")
        for hp in spec.hparams:
            console.print(f"  {hp.name} = {hp.default!r}  {hp.doc}")
        return
    table = Table(title="sgdlab optimizers (`sgdlab optimizers NAME` for details)")
    for col in ("name", "family", "source", "hyper-parameters (defaults)"):
        table.add_column(col)
    for spec in list_specs():
        table.add_row(spec.name, spec.family, spec.source, ", ".join(f"{h.name}={h.default!r}" for h in spec.hparams))
    console.print(table)


@app.command()
def run(
    params: Optional[Path] = ParamsOpt,
    set_: Optional[list[str]] = SetOpt,
    profile: Optional[str] = typer.Option(None, help="a profile of params.yaml (quick, full, ...)"),
    phase: Optional[list[str]] = typer.Option(None, "--phase", help="run only these phases (repeatable)"),
) -> None:
    """Run the study pipeline on the embedded defaults (no server needed): prepare -> sweep (with in-training
    Hessian probes) -> probe checkpoints -> gan -> predict -> report. One Prefect flow run, one MLflow
    parent run. When the run used params.yaml as it is (no --set, --profile or --params), each phase that
    finished is recorded in dvc.lock, so `dvc repro` afterwards re-runs nothing."""
    cfg = _config(params, set_, profile)
    from sgdlab.phases import PHASES

    phases = list(phase) if phase else list(PHASES)
    unknown = [p for p in phases if p not in PHASES]
    if unknown:  # before any compute or server start
        _fail(ValueError(f"unknown phase(s) {unknown}; phases are: {', '.join(PHASES)}"))
    from flows.pipeline import run_pipeline
    from sgdlab import tracking
    from sgdlab.data import DataFileError, SourceError

    typer.echo(f"sgdlab run: study {cfg.study.name!r} (profile {cfg.profile}); phases: {', '.join(phases)}")
    from sgdlab.interrupt import Interrupted
    from sgdlab.phases import PhaseFailed

    try:
        out = run_pipeline(cfg, phases)
    except (SourceError, DataFileError, FileNotFoundError, ValueError, PhaseFailed, Interrupted) as exc:
        _fail(exc)
    if "sweep" in out["phases"]:
        _print_summary(out["phases"]["sweep"])
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in out["timings_s"].items())
    typer.echo(f"done in {sum(out['timings_s'].values()):.0f} s ({timings})")
    if "report" in out["phases"]:
        typer.echo(f"report: {out['phases']['report']['html']}")
    if not set_ and params is None and profile is None:  # the run is what dvc.yaml describes
        _record_in_dvc(phases)
    typer.echo(
        f"MLflow: {tracking.tracking_uri()}  ->  start the UI with `.venv/bin/sgdlab ui`, then open "
        f"{tracking.runs_url(out['experiment_id'])}  (the runs of experiment {cfg.experiment_name!r})"
    )


def _record_in_dvc(phases: list[str]) -> None:
    """Record the phases that ran in dvc.lock (their deps, params and outs as they are now)."""
    from sgdlab.dvcsync import is_dvc_repo, record_stages
    from sgdlab.paths import project_root

    root = project_root()
    if not is_dvc_repo(root):
        return
    res = record_stages(root, phases)
    if res.recorded:
        typer.echo(
            f"dvc.lock: recorded {', '.join(res.recorded)} (`dvc repro` re-runs nothing until something changes)"
        )
    for name, why in {**res.skipped, **res.failed}.items():
        typer.echo(f"dvc.lock: did not record {name}: {why}")


@app.command()
def report(params: Optional[Path] = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Build the study report (PNG figures + one self-contained HTML page) from the phase tables and MLflow."""
    cfg = _config(params, set_)
    out = _phase(cfg, "report")
    typer.echo(f"report: {out['html']}")


@app.command("dvc-yaml")
def dvc_yaml(
    write: bool = typer.Option(False, "--write", help="regenerate dvc.yaml from the phase registry"),
    check: bool = typer.Option(False, "--check", help="fail if dvc.yaml differs from the generated one"),
) -> None:
    """Print dvc.yaml as generated from the phase registry (deps = each phase's import closure, params = the
    sections it reads, outs = the Study's output table); --check compares, --write rewrites the file."""
    from sgdlab.paths import project_root
    from sgdlab.phases import dvc

    text = dvc.generate()
    path = project_root() / "dvc.yaml"
    if write:
        path.write_text(text)
        typer.echo(f"wrote {path}")
    elif check:
        problems = dvc.check(path)
        if problems:
            _fail(ValueError(f"{path} is out of date (`sgdlab dvc-yaml --write`):\n" + "\n".join(problems)))
        typer.echo(f"{path}: in sync with the phase registry")
    else:
        typer.echo(text, nl=False)


@app.command()
def serve(
    params: Optional[Path] = ParamsOpt,
    set_: Optional[list[str]] = SetOpt,
    profile: Optional[str] = typer.Option(None, help="params.yaml profile for the scheduled runs"),
) -> None:
    """Run the study on a schedule: start a Prefect server on 127.0.0.1 (serve.port) and serve the study as a
    deployment with serve.cron (or serve.interval_seconds). Scheduled runs land in the same MLflow experiment.
    Ctrl-C stops both cleanly. The Prefect UI is not started (the API is at http://HOST:PORT/api)."""
    cfg = _config(params, set_)
    from flows.serve import start_serve_process, start_server, stop
    from sgdlab import interrupt

    interrupt.install(keyboard=True)  # SIGTERM too reaches the `finally` that stops the server and the worker

    sv = cfg.serve
    server = worker = None
    try:
        server, url = start_server(sv.host, sv.port)
        typer.echo(f"Prefect server: {url}")
        worker = start_serve_process(
            url, sv.name, sv.cron, sv.interval_seconds, str(params) if params else None, list(set_ or []), profile
        )
        when = f"cron {sv.cron!r}" if sv.cron else f"every {sv.interval_seconds} s"
        typer.echo(f"serving deployment 'study/{sv.name}' ({when}); Ctrl-C to stop")
        worker.wait()
    except KeyboardInterrupt:
        typer.echo("stopping ...")
    finally:
        stop(worker, server)


@app.command("tracking-server")
def tracking_server(
    port: int = typer.Option(5000, help="port of the MLflow server"),
    pg_port: int = typer.Option(0, help="port of PostgreSQL (0: a free one)"),
    state_dir: Optional[Path] = typer.Option(None, "--dir", help="state directory (default: mlflow/server/)"),
    workers: int = typer.Option(2, help="MLflow server worker processes"),
    host: str = typer.Option("127.0.0.1", help="interface of the MLflow server (PostgreSQL stays on 127.0.0.1)"),
    allowed_hosts: Optional[str] = typer.Option(
        None, help="MLflow's --allowed-hosts (Host headers accepted), e.g. 'mlflow.lab:5000' with --host 0.0.0.0"
    ),
) -> None:
    """Start PostgreSQL (a private cluster in mlflow/server/pgdata, created on first use) and an MLflow server
    on it with served artifacts, both on 127.0.0.1; then `export MLFLOW_TRACKING_URI=http://127.0.0.1:PORT`
    makes every phase log there. Ctrl-C stops both."""
    from sgdlab import interrupt
    from sgdlab.trackserver import ServerError, TrackingServer, default_state_dir

    interrupt.install(keyboard=True)
    ts = TrackingServer(
        state_dir or default_state_dir(),
        port=port,
        pg_port=pg_port,
        workers=workers,
        host=host,
        allowed_hosts=allowed_hosts,
    )
    try:
        ts.start()
        typer.echo(f"PostgreSQL on 127.0.0.1:{ts.postgres.port} (data: {ts.postgres.pgdata})")
        typer.echo(f"MLflow server on {ts.url} (artifacts: {ts.state_dir / 'artifacts'})")
        typer.echo(f"export MLFLOW_TRACKING_URI={ts.url}   # then sgdlab run ...; Ctrl-C to stop")
        ts.mlflow.proc.wait()
        typer.echo(f"mlflow server exited with code {ts.mlflow.proc.returncode}; see {ts.mlflow.log_path}", err=True)
        raise typer.Exit(1)
    except ServerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("stopping ...")
    finally:
        ts.stop()


@app.command()
def cluster(
    workers: int = typer.Option(2, help="dask worker processes (one thread each)"),
    port: int = typer.Option(8786, help="scheduler port"),
    gpus: int = typer.Option(0, help="GPUs: one worker per GPU, each offering the resource GPU=1"),
    prefect_port: int = typer.Option(4200, help="port of the Prefect server started when PREFECT_API_URL is unset"),
) -> None:
    """Start a Dask scheduler and worker processes on 127.0.0.1 for `orchestration.task_runner=dask` with
    `orchestration.dask_address` (printed). The workers log to $MLFLOW_TRACKING_URI (start `sgdlab
    tracking-server` first to share one store) and report to $PREFECT_API_URL; without it a Prefect server is
    started here too. Ctrl-C stops everything this command started."""
    from flows.serve import start_server, stop
    from sgdlab import interrupt
    from sgdlab.cluster import DaskCluster
    from sgdlab.paths import project_root
    from sgdlab.trackserver import ServerError

    interrupt.install(keyboard=True)
    prefect = None
    env = {"SGDLAB_HOME": str(project_root())}
    dc = None
    try:
        api = os.environ.get("PREFECT_API_URL")
        if not api:
            prefect, api = start_server("127.0.0.1", prefect_port)
            typer.echo(f"Prefect server: {api}")
        env["PREFECT_API_URL"] = api
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            typer.echo("note: MLFLOW_TRACKING_URI is unset: workers log to this project's sqlite store (one machine)")
        dc = DaskCluster(n_workers=workers, port=port, gpus=gpus, env=env, log_dir=project_root() / ".dask")
        address = dc.start()
        typer.echo(f"Dask scheduler {address}, {workers} workers (logs: {dc.log_dir})")
        typer.echo(f"export PREFECT_API_URL={api}")
        typer.echo(f"sgdlab run --set orchestration.task_runner=dask --set orchestration.dask_address={address}")
        dc.scheduler.wait()
        raise typer.Exit(1)
    except ServerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("stopping ...")
    finally:
        if dc is not None:
            dc.stop()
        stop(prefect)


@app.command()
def ui(
    host: str = typer.Option("127.0.0.1", help="interface to listen on (loopback by default)"),
    port: int = typer.Option(5000, help="port"),
) -> None:
    """Start the MLflow UI on this project's store (Ctrl-C to stop)."""
    from sgdlab.ui import run_ui

    # not os.execv(mlflow ui): its huey job consumers outlive a SIGTERM; run_ui stops the whole tree
    raise typer.Exit(run_ui(host, port))


recipe_app = typer.Typer(
    no_args_is_help=True,
    help="Paper recipes: one command runs a small study through the pipeline and checks a paper's claim.",
)
app.add_typer(recipe_app, name="recipe")
ScaleOpt = typer.Option("quick", "--scale", help="quick (2 CPU cores, <= 5 min) | full (a GPU machine)")


def _recipe_config(name: str, scale: str, set_: Optional[list[str]], params: Optional[Path]):
    from sgdlab.config import ConfigError
    from sgdlab.recipes import RecipeError, recipe_config

    if params is not None:
        os.environ["SGDLAB_HOME"] = str(Path(params).resolve().parent)
    try:
        cfg = recipe_config(name, scale, set_ or [], params)
        from sgdlab.validate import validate_config

        validate_config(cfg)
        return cfg
    except (ConfigError, RecipeError, ValueError) as exc:
        typer.secho(f"recipe error:\n{exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@recipe_app.command("list")
def recipe_list() -> None:
    """The recipes, their papers, and the last verdict at each scale (if checked)."""
    from rich.console import Console
    from rich.table import Table

    from sgdlab.config import load_config
    from sgdlab.recipes import RecipeError, list_recipes, load_recipe_file, read_verdict, study_name
    from sgdlab.study import Study

    table = Table(title="sgdlab recipes (`sgdlab recipe run NAME`)")
    for col in ("recipe", "claim", "paper", "quick", "full"):
        table.add_column(col, overflow="fold")
    base = load_config()
    for name in list_recipes():
        try:
            rf = load_recipe_file(name)
        except RecipeError as exc:
            table.add_row(name, f"[red]{exc}[/red]", "", "", "")
            continue
        last = []
        for scale in ("quick", "full"):
            d = Study(base).results_dir.parent / study_name(name, scale)
            v = read_verdict(d)
            last.append("-" if v is None else v.label)
        table.add_row(name, rf.title, rf.paper, *last)
    Console(width=160).print(table)


def _print_verdict(out: dict) -> None:
    from sgdlab.recipes import Verdict

    v = Verdict.from_dict(out["verdict"])
    color = typer.colors.GREEN if v.passed else typer.colors.RED
    for i, line in enumerate(v.lines()):
        typer.secho(line, fg=color if i == 0 else None, bold=i == 0)


@recipe_app.command("run")
def recipe_run(
    name: str = typer.Argument(..., help="recipe name (see `sgdlab recipe list`)"),
    scale: str = ScaleOpt,
    set_: Optional[list[str]] = SetOpt,
    params: Optional[Path] = ParamsOpt,
) -> None:
    """Run a recipe's study (prepare -> sweep [-> probe]), check the claim, build the report. Exit code 0 on
    PASS, 1 on FAIL (the numbers are printed either way and logged on the recipe's MLflow run)."""
    cfg = _recipe_config(name, scale, set_, params)
    from flows.recipes import run_recipe
    from sgdlab import tracking
    from sgdlab.data import DataFileError, SourceError

    typer.echo(f"sgdlab recipe run {name} (scale {scale}): study {cfg.study.name!r}")
    try:
        out = run_recipe(cfg, name, scale)
    except (SourceError, DataFileError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in out["timings_s"].items())
    typer.echo(f"done in {sum(out['timings_s'].values()):.0f} s ({timings})")
    _print_verdict(out)
    from sgdlab.recipes import recipe_paths
    from sgdlab.study import Study

    typer.echo(f"figure: {recipe_paths(Study(cfg).results_dir)['figure']}")
    typer.echo(f"MLflow: {tracking.run_url(out['experiment_id'], out['mlflow_run_id'])} (start `sgdlab ui` first)")
    raise typer.Exit(0 if out["verdict"]["verdict"] == "PASS" else 1)


@recipe_app.command("check")
def recipe_check(
    name: str = typer.Argument(..., help="recipe name"),
    scale: str = ScaleOpt,
    set_: Optional[list[str]] = SetOpt,
    params: Optional[Path] = ParamsOpt,
) -> None:
    """Re-check a recipe on its finished results (no training); exit code 0 on PASS, 1 on FAIL."""
    cfg = _recipe_config(name, scale, set_, params)
    from sgdlab.study import Study

    runs = Study(cfg).results_dir / "runs.parquet"
    if not runs.is_file():
        _fail(FileNotFoundError(f"{runs}: recipe {name} has not run at scale {scale}; `sgdlab recipe run {name}`"))
    from flows.recipes import run_recipe

    out = run_recipe(cfg, name, scale, check_only=True)
    _print_verdict(out)
    raise typer.Exit(0 if out["verdict"]["verdict"] == "PASS" else 1)


@app.command("bench-optimizers")
def bench_optimizers(
    scale: str = typer.Option("quick", "--scale", help="quick (2 CPU cores, about 20 min) | full (a GPU machine)"),
    set_: Optional[list[str]] = SetOpt,
    bench_file: Optional[Path] = typer.Option(
        None, "--file", help="benchmark file (default benchmarks/optimizers.yaml)"
    ),
    calibrate: bool = typer.Option(
        False, "--calibrate", help="propose the workloads' targets from a calibration search (other seeds)"
    ),
) -> None:
    """The optimizer benchmark: every optimizer tuned with the same budget on every workload (S studies x T
    trials), the chosen settings re-run over fresh seeds, scored by time to the fixed validation target
    (performance profiles, AlgoPerf's score). Writes results/optbench[-full]/{report.md, profile.png,
    scores.json, scores.parquet} and logs the scores on the benchmark's MLflow parent run."""
    from sgdlab.config import ConfigError
    from sgdlab.optbench.protocol import BenchError, load_bench, workload_config

    try:  # the file and every workload's config, before any compute
        bench = load_bench(scale, bench_file)
        for w in bench.workloads:
            workload_config(bench, w, "tune", overrides=set_ or [])
    except (BenchError, ConfigError, ValueError) as exc:
        typer.secho(f"benchmark error:\n{exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    from flows.optbench import run_calibration, run_optbench
    from sgdlab.data import DataFileError, SourceError

    if calibrate:
        typer.echo(f"sgdlab bench-optimizers --calibrate (scale {scale}): the tuning studies on calibration seeds")
        try:
            cal = run_calibration(scale, tuple(set_ or []), str(bench_file) if bench_file else None)
        except (SourceError, DataFileError, FileNotFoundError, ValueError) as exc:
            _fail(exc)
        for w, c in cal["workloads"].items():
            typer.echo(f"  {w:16s} {c['metric']} target {c['value']:g} (file: {c['current']:g})  [{c['rule']}]")
        typer.echo(f"calibration: {cal['path']}; fix the values in the benchmark file (workloads.<w>.target)")
        return

    typer.echo(
        f"sgdlab bench-optimizers (scale {scale}): {len(bench.optimizers)} optimizers x {len(bench.workloads)} "
        f"workloads, {bench.protocol.studies} studies x {bench.protocol.trials} trials each, "
        f"{bench.protocol.seeds} seeds for the chosen settings"
    )
    t0 = time.perf_counter()
    try:
        out = run_optbench(scale, tuple(set_ or []), str(bench_file) if bench_file else None)
    except (SourceError, DataFileError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    s = out["summary"]
    typer.echo(f"done in {time.perf_counter() - t0:.0f} s")
    for o in sorted(s["optimizers"], key=lambda o: -s["steps"]["score"][o]):
        typer.echo(f"  {o:22s} score {s['steps']['score'][o]:.3f} (steps)  {s['wall']['score'][o]:.3f} (wall)")
    typer.echo(f"report: {out['paths']['report']}\nfigure: {out['paths']['figure']}")


def main() -> None:  # pragma: no cover - console entry point
    """The ``sgdlab`` command: Ctrl-C / SIGTERM stop training within a step, checkpointed, with one line and exit
    130 (:mod:`sgdlab.interrupt`). Installed here, not in ``app``, so that invoking ``app`` in-process (tests,
    notebooks) leaves the caller's signal handling alone."""
    from sgdlab import interrupt

    interrupt.install()
    try:
        app()
    except SystemExit as exc:
        _exit_now(exc.code)


def _exit_now(code) -> None:  # pragma: no cover - console entry point
    """Run the atexit handlers (MLflow ends its runs, Prefect stops its ephemeral API server), flush stdio,
    then leave without the interpreter's finalisation. That finalisation spends 2-5 s in C code (no Python
    frame on the main thread, measured with faulthandler after a SIGTERM) on every ``sgdlab`` command; every
    file this project writes is closed (or atomically renamed) before the command returns, so nothing is lost.
    """
    import atexit

    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()

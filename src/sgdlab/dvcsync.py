"""Tell DVC what a phase produced, when the phase ran outside ``dvc repro`` (``sgdlab run``, Prefect).

``dvc repro`` writes ``dvc.lock`` itself; a phase run by the Prefect pipeline does not, so without this
``dvc status`` calls every stage changed and the next ``dvc repro`` re-runs the whole study.
:func:`record_stages` runs, once for all the given stages::

    dvc --wait-for-lock commit --force --no-relink dvc.yaml:<stage> ...

which hashes each stage's current deps, params and outs into ``dvc.lock`` and moves the cached outs
into the DVC cache (so ``dvc push`` versions them); ``cache: false`` outs, metrics and plots get their
hash in the lock only. ``--force`` accepts the stage without the interactive "changed, are you sure?"
prompt (which, with no terminal, is a refusal); ``--no-relink`` keeps the files the phase just wrote
instead of replacing them by links/copies from the cache (with the default ``reflink,copy`` cache type
on a filesystem without reflinks that is a second full copy of every output). ``-d/--with-deps`` is not
used: a stage upstream of the ones that ran (its outputs maybe older than its deps) is left to
``dvc status`` to judge.

Call it only after the phases ran from exactly ``params.yaml`` (no ``--set`` overrides, no other params
file): DVC records the params in ``params.yaml``, whatever the run used.

The library never imports Prefect or DVC's Python API: DVC is the ``dvc`` command next to
``sys.executable`` (the project's virtualenv), else the one on ``PATH``. A DVC failure never raises (the
study's results are already written): it is reported in :class:`StageSync`. Only a stage name that is
not in ``dvc.yaml`` raises (``ValueError``), being a bug of the caller.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DVC_FILE = "dvc.yaml"
PARAMS_FILE = "params.yaml"  # DVC's default params file and the default source of ${...} values

_PLACEHOLDER = re.compile(r"\$\{\s*([^}]*?)\s*\}")
_LOCK = threading.Lock()  # one DVC command at a time from this process (DVC holds a repo-wide lock)


@dataclass(frozen=True)
class StageSync:
    """What :func:`record_stages` did, stage by stage."""

    recorded: tuple[str, ...] = ()  # in dvc.lock now, their cached outs in the DVC cache
    skipped: dict[str, str] = field(default_factory=dict)  # stage -> why it was not attempted
    failed: dict[str, str] = field(default_factory=dict)  # stage -> why DVC did not record it
    stderr: str = ""  # DVC's stderr when a command failed
    command: tuple[str, ...] = ()  # the last dvc command run (empty when none ran)
    seconds: float = 0.0  # wall time spent in DVC

    @property
    def ok(self) -> bool:
        """No DVC failure (skips are not failures)."""
        return not self.failed

    def summary(self) -> str:
        """One line for a log: recorded, skipped and failed stages with their reasons."""
        parts = []
        if self.recorded:
            parts.append(f"recorded {', '.join(self.recorded)} in dvc.lock ({self.seconds:.1f} s)")
        parts += [f"skipped {s}: {r}" for s, r in self.skipped.items()]
        parts += [f"failed {s}: {r}" for s, r in self.failed.items()]
        return "; ".join(parts) or "no stages"


class DvcError(RuntimeError):
    """A ``dvc`` command failed (raised by :func:`status` only; :func:`record_stages` reports)."""


def is_dvc_repo(root: Path) -> bool:
    """True if ``root`` holds a ``.dvc`` directory and a ``dvc.yaml``."""
    root = Path(root)
    return (root / ".dvc").is_dir() and (root / DVC_FILE).is_file()


def dvc_executable() -> str | None:
    """The ``dvc`` next to ``sys.executable`` (the virtualenv's), else the one on ``PATH``, else None."""
    here = Path(sys.executable).parent / ("dvc.exe" if os.name == "nt" else "dvc")
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("dvc")


# ------------------------------------------------------------------------------------- dvc.yaml
def _load_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _lookup(ctx: Any, dotted: str) -> Any:
    """``a.b.0`` / ``a.b[0]`` in nested dicts and lists; KeyError if absent."""
    cur = ctx
    for part in dotted.replace("[", ".").replace("]", "").split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.lstrip("-").isdigit() and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise KeyError(dotted)
    return cur


def _context(root: Path, dvc_yaml: dict) -> dict:
    """The values ``${...}`` resolve from: ``params.yaml``'s top level, then dvc.yaml's ``vars``."""
    ctx: dict = {}
    if (root / PARAMS_FILE).is_file():
        ctx.update(_load_yaml(root / PARAMS_FILE) or {})
    for item in dvc_yaml.get("vars") or []:
        if isinstance(item, dict):
            ctx.update(item)
        elif isinstance(item, str):  # "file.yaml" or "file.yaml:key1,key2"
            fname, _, keys = item.partition(":")
            if fname == PARAMS_FILE and not keys:
                continue
            path = root / fname
            if path.is_file() and path.suffix in (".yaml", ".yml", ".json"):
                data = _load_yaml(path) or {}
                ctx.update({k: data[k] for k in keys.split(",") if k in data} if keys else data)
    return ctx


def _resolve(text: str, ctx: dict) -> str:
    """Substitute ``${name}`` placeholders; KeyError naming the first unresolved one."""

    def sub(m: re.Match) -> str:
        value = _lookup(ctx, m.group(1))
        if isinstance(value, (dict, list)):
            raise KeyError(m.group(1))
        return str(value)

    return _PLACEHOLDER.sub(sub, text)


def _paths(entries: Any) -> list[str]:
    """Paths of a deps/outs/metrics/plots list (``- path`` or ``- path: {options}``)."""
    out = []
    for e in entries or []:
        if isinstance(e, str):
            out.append(e)
        elif isinstance(e, dict):
            out.extend(str(k) for k in e)
    return out


def _params(entries: Any) -> list[tuple[str, str | None]]:
    """(file, key) pairs of a stage's params; key None = the whole file."""
    out: list[tuple[str, str | None]] = []
    for e in entries or []:
        if isinstance(e, str):
            out.append((PARAMS_FILE, e))
        elif isinstance(e, dict):
            for fname, keys in e.items():
                if not keys:
                    out.append((str(fname), None))
                else:
                    out.extend((str(fname), str(k)) for k in keys)
    return out


def _stage_problem(root: Path, stage: dict, ctx: dict) -> str | None:
    """Why ``dvc commit`` cannot record this stage now (a missing out, dep or param), or None."""
    try:
        wdir = root / _resolve(str(stage.get("wdir", ".")), ctx)
        outs = [_resolve(p, ctx) for key in ("outs", "metrics", "plots") for p in _paths(stage.get(key))]
        deps = [_resolve(p, ctx) for p in _paths(stage.get("deps"))]
        params = [(_resolve(f, ctx), k and _resolve(k, ctx)) for f, k in _params(stage.get("params"))]
    except KeyError as exc:
        return f"cannot resolve ${{{exc.args[0]}}} in dvc.yaml from {PARAMS_FILE}"

    missing = [p for p in outs if not (wdir / p).exists()]
    if missing:
        return f"out missing (the phase did not run or produced nothing): {', '.join(missing)}"
    empty = [p for p in outs if (wdir / p).is_dir() and not any((wdir / p).iterdir())]
    if empty:
        return f"out is an empty directory (the phase produced nothing): {', '.join(empty)}"
    missing = [p for p in deps if "://" not in p and not (wdir / p).exists()]
    if missing:
        return f"dep missing: {', '.join(missing)}"
    loaded: dict[str, Any] = {}
    for fname, key in params:
        path = wdir / fname
        if not path.is_file():
            return f"params file missing: {fname}"
        if key is None:
            continue
        if fname not in loaded:
            try:
                loaded[fname] = _load_yaml(path) or {}
            except (OSError, yaml.YAMLError) as exc:
                return f"cannot read params file {fname}: {exc}"
        try:
            _lookup(loaded[fname], key)
        except KeyError:
            return f"param missing: {fname}:{key}"
    return None


def _stages(root: Path) -> tuple[dict, dict]:
    """(the whole dvc.yaml, its ``stages``)."""
    data = _load_yaml(root / DVC_FILE) or {}
    return data, data.get("stages") or {}


def _check_names(stages: list[str], declared: dict) -> list[str]:
    """Unique names in order; ValueError for names not in dvc.yaml (``name@key`` of a foreach/matrix
    stage is accepted)."""
    names = list(dict.fromkeys(stages))
    unknown = []
    for s in names:
        base, at, _ = s.partition("@")
        if s in declared:
            continue
        if at and isinstance(declared.get(base), dict) and ("foreach" in declared[base] or "matrix" in declared[base]):
            continue
        unknown.append(s)
    if unknown:
        raise ValueError(f"not a stage of {DVC_FILE}: {', '.join(map(repr, unknown))} (stages: {', '.join(declared)})")
    return names


# ------------------------------------------------------------------------------------------ dvc
def _dvc(root: Path, args: list[str], timeout: float) -> tuple[int, str, str, tuple[str, ...]]:
    """Run ``dvc <args>`` in ``root``; (returncode, stdout, stderr, argv). Never raises: a missing
    executable or a timeout is returncode -1 with the reason in stderr."""
    exe = dvc_executable()
    if exe is None:
        return -1, "", "dvc executable not found (next to sys.executable or on PATH)", ()
    argv = (exe, *args)
    env = dict(os.environ)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    with _LOCK:
        try:
            r = subprocess.run(
                argv, cwd=root, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as exc:
            return -1, "", f"dvc timed out after {timeout:g} s: {' '.join(args)}\n{exc.stderr or ''}", argv
        except OSError as exc:
            return -1, "", f"cannot run dvc: {exc}", argv
    return r.returncode, r.stdout, r.stderr, argv


def _target(name: str) -> str:
    return f"{DVC_FILE}:{name}"  # unambiguous even if a file or folder is named like the stage


def record_stages(root: Path, stages: list[str], *, timeout: float = 300) -> StageSync:
    """Record ``stages`` (names in ``root/dvc.yaml``) in ``dvc.lock`` from what is on disk now.

    A stage is skipped (with the reason) when root is not a DVC repo, when running inside a DVC stage
    command (``dvc repro`` records it itself and holds the repo lock), or when one of its outs, metrics
    or plots is missing (the phase did not run or produced nothing), or a dep or param is missing. The
    others are committed in one ``dvc commit``; if that fails they are retried one by one so a bad
    stage does not keep the good ones out. Raises ValueError only for a name not in dvc.yaml.
    """
    root = Path(root)
    stages = list(dict.fromkeys(stages))
    if not is_dvc_repo(root):
        why = f"{root} is not a DVC repo (needs .dvc/ and {DVC_FILE})"
        return StageSync(skipped=dict.fromkeys(stages, why))
    try:
        dvc_yaml, declared = _stages(root)
    except (OSError, yaml.YAMLError) as exc:
        return StageSync(failed=dict.fromkeys(stages, f"cannot read {DVC_FILE}: {exc}"))
    names = _check_names(stages, declared)
    if os.environ.get("DVC_STAGE"):
        why = f"running inside DVC stage {os.environ['DVC_STAGE']!r}: DVC records it"
        return StageSync(skipped=dict.fromkeys(names, why))

    try:
        ctx = _context(root, dvc_yaml)
    except (OSError, yaml.YAMLError) as exc:
        ctx = {}
        ctx_error = f"cannot read the values of ${{...}}: {exc}"
    else:
        ctx_error = None
    skipped: dict[str, str] = {}
    todo: list[str] = []
    for name in names:
        stage = declared.get(name)
        if not isinstance(stage, dict) or "foreach" in stage or "matrix" in stage:
            todo.append(name)  # a foreach/matrix entry: DVC resolves and checks it
            continue
        why = ctx_error or _stage_problem(root, stage, ctx)
        if why:
            skipped[name] = why
        else:
            todo.append(name)
    if not todo:
        return StageSync(skipped=skipped)

    t0 = time.perf_counter()
    base = ["--wait-for-lock", "commit", "--force", "--no-relink"]
    rc, _, err, argv = _dvc(root, [*base, *map(_target, todo)], timeout)
    if rc == 0:
        return StageSync(recorded=tuple(todo), skipped=skipped, command=argv, seconds=time.perf_counter() - t0)
    if len(todo) == 1 or not argv:  # one stage, or no dvc at all: nothing to retry
        return StageSync(
            skipped=skipped,
            failed=dict.fromkeys(todo, _reason(err)),
            stderr=err,
            command=argv,
            seconds=time.perf_counter() - t0,
        )
    recorded, failed, errs = [], {}, [err]
    for name in todo:
        remaining = timeout - (time.perf_counter() - t0)
        if remaining <= 0:
            failed[name] = "not retried: timeout spent"
            continue
        rc1, _, err1, argv = _dvc(root, [*base, _target(name)], remaining)
        if rc1 == 0:
            recorded.append(name)
        else:
            failed[name] = _reason(err1)
            errs.append(err1)
    return StageSync(
        recorded=tuple(recorded),
        skipped=skipped,
        failed=failed,
        stderr="\n".join(dict.fromkeys(e for e in errs if e)),
        command=argv,
        seconds=time.perf_counter() - t0,
    )


def _reason(stderr: str) -> str:
    """DVC's error line (``ERROR: ...``), else the last line of its stderr."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors[0] if errors else lines[-1] if lines else "dvc failed without a message")[:500]


def status(root: Path, stages: list[str], *, timeout: float = 120) -> dict[str, bool]:
    """``{stage: up to date}`` from ``dvc status --json``: False when DVC reports any change (deps,
    params, outs, command, always_changed) or the stage is not in dvc.lock yet.

    Raises ValueError for a name not in dvc.yaml and DvcError when root is not a DVC repo or dvc fails.
    """
    root = Path(root)
    if not is_dvc_repo(root):
        raise DvcError(f"{root} is not a DVC repo (needs .dvc/ and {DVC_FILE})")
    _, declared = _stages(root)
    names = _check_names(stages, declared)
    if not names:
        return {}
    wait = [] if os.environ.get("DVC_STAGE") else ["--wait-for-lock"]  # dvc repro holds the lock
    rc, out, err, _ = _dvc(root, [*wait, "status", "--json", *map(_target, names)], timeout)
    if rc != 0:
        raise DvcError(f"dvc status failed ({rc}): {_reason(err)}")
    text = out.strip()
    try:
        changed = json.loads(text[text.find("{") :] if "{" in text else "{}")
    except json.JSONDecodeError as exc:
        raise DvcError(f"dvc status --json printed no JSON: {out[:500]!r}") from exc
    keys = {k.split(":", 1)[-1] if k.startswith(f"{DVC_FILE}:") else k for k in changed}
    return {name: name not in keys for name in names}

"""``dvc.yaml`` generated from the phase registry, so DVC sees exactly what the code reads and writes.

Per phase (= DVC stage):

- ``deps``: the import closure of the phase's code (its library module, the generic flow and task, the
  CLI), found by reading the ``import`` statements of every module reached (function-level imports
  included), plus the outputs of the earlier phases it reads (``Phase.inputs``);
- ``params``: the sections the phase declares (a phase cannot read another: see
  :class:`sgdlab.phases.SectionView`), plus ``profile`` and ``profiles`` (a profile rewrites sections);
- ``outs``/``metrics``/``plots``: from :data:`sgdlab.study.OUTPUTS`, templated with DVC's ``${...}``
  over params.yaml (``${study.results_dir}/${study.name}/...``), so the paths follow params.yaml.

``sgdlab dvc-yaml --check`` (and a test) fails when the committed file differs from the generated one;
``--write`` regenerates it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from sgdlab.phases import PHASES, Phase
from sgdlab.study import OUTPUTS

REPO = Path(__file__).resolve().parents[3]
ROOTS = {"sgdlab": REPO / "src" / "sgdlab", "flows": REPO / "flows", "tasks": REPO / "tasks"}
# What every stage runs through besides its own library module (the CLI command -> the phase flow -> the task).
COMMON_ENTRY = ("sgdlab.cli", "flows.phases", "tasks.phase")
DVC_ROOTS = {
    "models": "${study.models_dir}/${study.name}",
    "results": "${study.results_dir}/${study.name}",
    "data": "${data.root}",
}


def module_file(name: str) -> Path | None:
    """The source file of a project module (``sgdlab.x.y``, ``flows.x``, ``tasks.x``), or None."""
    top, *rest = name.split(".")
    base = ROOTS.get(top)
    if base is None:
        return None
    p = base.joinpath(*rest)
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    if p.with_suffix(".py").is_file():
        return p.with_suffix(".py")
    return None


def _imports(path: Path, name: str) -> set[str]:
    """Project modules imported anywhere in ``path`` (module ``name``), resolved to module names."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if module_file(m) is not None}


def import_closure(entries: tuple[str, ...], follow_cli: bool = False) -> set[Path]:
    """Source files of ``entries`` and of every project module they import, transitively, with the
    ``__init__`` of every package on the way (importing ``a.b`` runs ``a/__init__.py``). The CLI module
    is included as a file but its imports are not followed (its commands import each phase lazily)."""
    seen: dict[str, Path] = {}
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name)
        if path is None:
            continue
        seen[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        if name == "sgdlab.cli" and not follow_cli:
            continue
        todo += sorted(_imports(path, name))
    return set(seen.values())


def _collapse(files: set[Path]) -> list[str]:
    """Repo-relative paths; a package directory stands for its files when all of them are in the set."""

    def all_py(d: Path) -> set[Path]:
        return {p for p in d.rglob("*.py") if "__pycache__" not in p.parts}

    out: set[Path] = set(files)
    dirs = sorted({p.parent for p in files}, key=lambda d: len(d.parts))
    for d in dirs:
        contents = all_py(d)
        if contents and contents <= out and d != ROOTS["sgdlab"]:
            out = (out - contents) | {d}
    # a directory already covered by a parent directory
    out = {p for p in out if not any(q != p and q.is_dir() and p.is_relative_to(q) for q in out)}
    return sorted(p.relative_to(REPO).as_posix() for p in out)


def _dvc_path(template: str) -> str:
    return template.format(**DVC_ROOTS)


def stage(phase: Phase) -> dict:
    """The ``dvc.yaml`` stage of ``phase``."""
    code = _collapse(import_closure((phase.module, *COMMON_ENTRY)))
    inputs = [_dvc_path(OUTPUTS[p][n].path) for p, n in (i.split(".") for i in phase.inputs)]
    st: dict = {"cmd": phase.cmd, "deps": inputs + code, "params": [*phase.sections, "profile", "profiles"]}
    for kind in ("outs", "metrics", "plots"):
        entries = []
        for o in OUTPUTS[phase.name].values():
            if o.kind != kind:
                continue
            opts = {k: v for k, v in (("cache", o.cache), ("persist", o.persist)) if v != (k == "cache")}
            entries.append({_dvc_path(o.path): opts} if opts else _dvc_path(o.path))
        if entries:
            st[kind] = entries
    return st


HEADER = """\
# GENERATED by `sgdlab dvc-yaml --write` from sgdlab.phases.PHASES and sgdlab.study.OUTPUTS: do not edit.
# Each stage runs the same phase code as the Prefect pipeline (through the CLI). deps = the import closure
# of the phase's code + the outputs of earlier phases it reads; params = the sections it reads (+ profile,
# profiles); outs/metrics/plots = the Study's output table, templated over params.yaml.
"""


def generate() -> str:
    stages = {name: stage(p) for name, p in PHASES.items()}
    return HEADER + yaml.safe_dump({"stages": stages}, sort_keys=False, width=120)


def check(path: Path | str = REPO / "dvc.yaml") -> list[str]:
    """Differences between the committed ``dvc.yaml`` and the generated one (empty: in sync)."""
    have = yaml.safe_load(Path(path).read_text()) or {}
    want = yaml.safe_load(generate())
    problems = []
    for name in sorted(set(have.get("stages", {})) | set(want["stages"])):
        h, w = have.get("stages", {}).get(name), want["stages"].get(name)
        if h is None or w is None:
            problems.append(f"stage {name}: {'missing from dvc.yaml' if h is None else 'not a phase'}")
            continue
        for key in sorted(set(h) | set(w)):
            if h.get(key) != w.get(key):
                problems.append(f"stage {name}.{key}: dvc.yaml has {h.get(key)!r}, the code needs {w.get(key)!r}")
    return problems

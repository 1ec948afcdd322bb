"""dvc.yaml against the code: each stage's deps are its code's import closure plus the outputs it reads,
its params the sections it reads, its outs the Study's output table. No DVC process needed."""

from pathlib import Path

import yaml

from sgdlab.config import load_config
from sgdlab.phases import PHASES
from sgdlab.phases import dvc as phase_dvc
from sgdlab.study import OUTPUTS, Study

REPO = Path(__file__).resolve().parents[1]


def test_committed_dvc_yaml_is_the_generated_one():
    assert phase_dvc.check(REPO / "dvc.yaml") == [], "run `sgdlab dvc-yaml --write`"


def test_stage_deps_cover_what_the_issue_found_missing():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    deps = {name: set(st["deps"]) for name, st in stages.items()}

    def covered(stage, path):  # a file or a directory listed itself or through a parent directory
        return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps[stage])

    for stage in ("probe", "predict"):
        for lib in (
            "src/sgdlab/models/mlp.py",
            "src/sgdlab/train/loop.py",
            "src/sgdlab/optim/registry.py",
            "src/sgdlab/data/loader.py",
            "src/sgdlab/runspec.py",
            "src/sgdlab/study.py",
        ):
            assert covered(stage, lib), (stage, lib)
    assert covered("gan", "src/sgdlab/gan/train.py") and covered("gan", "src/sgdlab/data/loader.py")
    assert covered("sweep", "src/sgdlab/runner.py") and covered("sweep", "src/sgdlab/hessian/lanczos.py")
    assert "${data.root}/processed" in deps["probe"]  # probes read the data
    assert not covered("prepare", "src/sgdlab/gan/train.py")  # and a GAN edit does not re-run prepare
    for name, st in stages.items():
        assert {"profile", "profiles", "study"} <= set(st["params"]), name
    assert {"data", "probe", "predict"} <= set(stages["predict"]["params"])


def test_import_closure_follows_function_level_imports():
    files = phase_dvc.import_closure(("sgdlab.phases.gan",))
    # prediction.train_and_sample imports sgdlab.gan inside the function
    assert REPO / "src" / "sgdlab" / "gan" / "train.py" in files
    assert REPO / "src" / "sgdlab" / "prediction.py" in files


def test_every_profile_writes_exactly_the_declared_outs():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    dvc_vars = {
        "${study.models_dir}": params["study"]["models_dir"],
        "${study.results_dir}": params["study"]["results_dir"],
        "${study.name}": params["study"]["name"],
        "${data.root}": params["data"]["root"],
    }
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for profile in params["profiles"]:
        study = Study(load_config(REPO / "params.yaml", profile=profile), root=REPO)
        for phase in PHASES:
            declared = set()
            for kind in ("outs", "metrics", "plots"):
                for entry in stages[phase].get(kind, []):
                    path = next(iter(entry)) if isinstance(entry, dict) else entry
                    for k, v in dvc_vars.items():
                        path = path.replace(k, v)
                    declared.add((REPO / path).resolve())
            assert declared == {p.resolve() for p in study.outputs(phase).values()}, (profile, phase)
    assert set(OUTPUTS) == set(PHASES)

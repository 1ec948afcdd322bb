"""Phase ``gan``: a class-conditional GAN on the training part of ``train.dataset`` -> a labelled synthetic
set (``gan/synthetic.parquet``), a sample grid and the class-conditional Frechet distance to held-out data.

One unit. The GAN is trained on the training part only (the validation part serves the Frechet distance;
the test split enters only the paper's diagnostic, the Frechet distance of the finished synthetic set to
test vs to training data). ``generator.pt`` is reused when the GAN config and the data hash are unchanged.
"""

from __future__ import annotations

from sgdlab import tracking
from sgdlab.config import ConfigError
from sgdlab.phases import Outcome, Plan, Unit, raise_failures
from sgdlab.study import Study


def gan_config(study: Study):
    """The GANConfig of the ``gan`` section on the study's device; errors name the key."""
    from sgdlab.gan import GANConfig

    g = study.cfg.gan
    try:
        return GANConfig.profile(g.profile, **{**g.overrides, "seed": g.seed, "device": study.device})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"params.yaml: gan: {exc}") from None


def progress_lines(label: str = "gan", every_s: float = 5.0, unit: str = "step"):
    """``progress(step, total)`` printing one line at most every ``every_s`` seconds (and at the end), so a
    GAN training (or the predict phase's pass over the classifiers) of minutes shows it is alive also when
    stdout is a file or a pipe."""
    import time

    t0 = time.monotonic()
    last = [t0]

    def progress(step: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s or step >= total:
            last[0] = now
            print(f"{label}: {unit} {step}/{total} [{now - t0:.0f} s]", flush=True)

    return progress


def plan(study: Study) -> Plan:
    gan_config(study)  # an unknown profile or GAN setting names the key before any compute
    data = study.data_spec()
    return Plan(
        [Unit("gan", {})],
        params=tracking.flatten({"gan": study.cfg.gan.model_dump()}),
        data_hash=data.data_hash,
        extra={"data": data.to_dict()},
    )


def unit(study: Study, payload: dict, ctx: dict) -> dict:
    from sgdlab.prediction import CLASS_NAMES, data_range, train_and_sample

    g = study.cfg.gan
    splits = study.load()
    run_id = ctx["parent_run_id"]
    with tracking.MetricBuffer(run_id) as buf:
        out = train_and_sample(
            splits.x_train,
            splits.y_train,
            splits.num_outputs,
            splits.data_hash,
            gan_config(study),
            study.outputs("gan"),
            n_per_class=g.n_per_class,
            seed=g.seed,
            x_ref=splits.x_val,
            y_ref=splits.y_val,
            range_=data_range(splits),
            frechet_steps=g.frechet_steps,
            class_names=CLASS_NAMES.get(splits.name),
            metric_sink=buf,
            progress=progress_lines("gan: training"),
            shared_dir=study.models_dir.parent / "_shared" / "gan",  # one generator per training set and config
            snapshots=g.snapshots,
            other_studies=study.results_dir.parent,  # their DVC-versioned generators (e.g. after `dvc pull`)
            # the test split only for the Frechet diagnostic, after the GAN is trained
            diagnostics={"test": (splits.x_test, splits.y_test)},
        )
        buf(
            {
                k.replace("frechet_", "gan/frechet_"): v
                for k, v in out.items()
                if k.startswith("frechet") and isinstance(v, float)
            },
            0,
        )
        buf({"gan/wall_time_s": out["wall_time_s"]}, 0)
    if out.get("reused_from"):
        print(f"gan: reused the generator of this training set and config from {out['reused_from']}", flush=True)
    tracking.set_tags(
        run_id,
        {
            "generator_hash": out["generator_hash"],
            "data_hash": splits.data_hash,
            "generator_trained": str(out["trained"]).lower(),
            **({"generator_reused_from": out["reused_from"]} if out.get("reused_from") else {}),
        },
    )
    for key in ("grid", "checkpoint"):
        tracking.log_artifact(run_id, out[key], "gan")
    return out


def finish(study: Study, plan: Plan, outcomes: list[Outcome], ctx: dict) -> dict:
    raise_failures("gan", outcomes)
    return outcomes[0].value

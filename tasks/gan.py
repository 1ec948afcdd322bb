"""Prefect task: train the class-conditional GAN on the training part and sample the synthetic set."""

from sgdlab.paths import apply_prefect_env

apply_prefect_env()

from prefect import task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from sgdlab import tracking  # noqa: E402
from sgdlab.prediction import CLASS_NAMES, data_range, train_and_sample  # noqa: E402
from sgdlab.runner import load_cached  # noqa: E402


@task(name="gan-train-sample", cache_policy=NO_CACHE, retries=0)
def gan_task(data: dict, device: str, gan: dict, out_dir: str, run_id: str) -> dict:
    """The GAN sees ``splits.x_train`` only (the classifiers' training part); the validation part serves the
    Frechet distance; the test split is never passed. ``generator.pt`` is reused when config and data match."""
    from sgdlab.gan import GANConfig

    splits = load_cached(device=device, **data)
    cfg = GANConfig.profile(gan["profile"], **{**gan["overrides"], "seed": gan["seed"], "device": device})
    # the GAN is trained on the training part only; the test split never reaches this task
    with tracking.MetricBuffer(run_id) as buf:
        out = train_and_sample(splits.x_train, splits.y_train, splits.num_outputs, splits.data_hash, cfg, out_dir,
                               n_per_class=gan["n_per_class"], seed=gan["seed"], x_ref=splits.x_val, y_ref=splits.y_val,
                               range_=data_range(splits), frechet_steps=gan["frechet_steps"],
                               class_names=CLASS_NAMES.get(data["name"]),
                               metric_sink=lambda step, m: buf(m, step))
        buf({k.replace("frechet_", "gan/frechet_"): v for k, v in out.items()
             if k.startswith("frechet") and isinstance(v, float)}, 0)
        buf({"gan/wall_time_s": out["wall_time_s"]}, 0)
    tracking.set_tags(run_id, {"generator_hash": out["generator_hash"]})
    for key in ("grid", "checkpoint"):
        tracking.log_artifact(run_id, out[key], "gan")
    return out

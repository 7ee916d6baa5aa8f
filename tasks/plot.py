"""Task: plot the data (samples per class, class distribution, pixel histogram)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from mnist_pipeline import plots
from mnist_pipeline.data import DatasetRef, open_dataset
from tasks.caching import StageCache, StageSerializer


@task(
    name="plot",
    result_serializer=StageSerializer(),
    cache_policy=StageCache(
        parts=lambda inputs: {
            "digest": inputs["ref"].digest,
            "seed": inputs["seed"],
            "workdir": inputs["workdir"],
        },
        code=("mnist_pipeline.plots",),
        outputs=lambda paths: paths,
    ),
)
def plot_data(ref: DatasetRef, workdir: str, seed: int) -> list[str]:
    """Write the data plots as PNGs and return their paths."""
    data = open_dataset(ref)
    # One folder per cache key's data and seed: another seed's plots never
    # overwrite the files a cached result points to.
    folder = Path(workdir) / "plots" / ref.digest / f"seed-{seed}"
    figures = {
        "samples_per_class.png": plots.plot_samples(
            data.x_train, data.y_train, seed=seed
        ),
        "class_distribution.png": plots.plot_class_distribution(
            data.y_train, data.y_test
        ),
        "pixel_histogram.png": plots.plot_pixel_histogram(data.x_train, data.x_test),
    }
    return [str(plots.save_figure(fig, folder / name)) for name, fig in figures.items()]

"""The one typed configuration of a training run.

It is the flow's parameter (Prefect renders it as a form and validates it), the
CLI builds it from options, and MLflow logs it as the run's params.
"""

from __future__ import annotations

import itertools
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

#: Where Keras's own ``keras.datasets.mnist.load_data`` downloads MNIST from.
KERAS_MNIST_ORIGIN = (
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
)
#: The SHA-256 Keras checks that download against.
KERAS_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"


#: Augmentation strengths: the classic MNIST ones (small rotations, shifts, zoom).
AUGMENT_ROTATION = 10.0
AUGMENT_SHIFT = 0.1
AUGMENT_ZOOM = 0.1

Rotation = Annotated[float, Field(ge=0, le=45)]
Shift = Annotated[float, Field(ge=0, le=0.3)]
Zoom = Annotated[float, Field(ge=0, le=0.5)]


class Augmentation(BaseModel):
    """Random changes to training images, drawn anew for every batch.

    Applied in the training graph only: the saved and served model never
    augments, and validation and test images are never changed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rotation: Rotation = Field(
        AUGMENT_ROTATION, description="Largest rotation either way, in degrees"
    )
    shift: Shift = Field(
        AUGMENT_SHIFT, description="Largest shift either way, share of the image side"
    )
    zoom: Zoom = Field(
        AUGMENT_ZOOM, description="Largest zoom in or out, share of the image size"
    )

    def label(self) -> str:
        """A short description, e.g. ``rotation 10°, shift 0.1, zoom 0.1``."""
        return f"rotation {self.rotation:g}°, shift {self.shift:g}, zoom {self.zoom:g}"


class TrainConfig(BaseModel):
    """Everything that decides what a training run does.

    Defaults reproduce the reference notebook: 10 epochs, batch 400, Adam at 0.01
    and a 10% validation split.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: str = Field(
        "auto",
        description=(
            "auto, mnist, sample, a .npz in Keras layout, or a folder with the four "
            "MNIST IDX files"
        ),
    )
    epochs: int = Field(10, ge=1, le=1000, description="Training epochs")
    batch_size: int = Field(400, ge=1, le=65536, description="Images per step")
    learning_rate: float = Field(0.01, gt=0, le=10, description="Adam learning rate")
    validation_split: float = Field(
        0.1, gt=0, lt=1, description="Share of training images held out (stratified)"
    )
    seed: int = Field(
        0, ge=0, description="Seed for the split, weights, dropout and augmentation"
    )
    augment: bool = Field(
        False,
        description=(
            "Train on randomly rotated, shifted and zoomed copies of the images "
            "(training only: the saved model never augments)"
        ),
    )
    augment_rotation: Rotation = Field(
        AUGMENT_ROTATION, description="Augmentation: largest rotation, degrees"
    )
    augment_shift: Shift = Field(
        AUGMENT_SHIFT, description="Augmentation: largest shift, share of the side"
    )
    augment_zoom: Zoom = Field(
        AUGMENT_ZOOM, description="Augmentation: largest zoom in or out, share"
    )
    experiment: str = Field("mnist", min_length=1, description="MLflow experiment")
    model_name: str = Field(
        "mnist-cnn", min_length=1, description="MLflow registered model name"
    )
    min_class_share: float = Field(
        0.05,
        ge=0,
        le=0.1,
        description="Validation fails when a class is rarer than this share of a split",
    )
    train_limit: int | None = Field(
        None, ge=10, description="Use a stratified subset of this many training images"
    )
    test_limit: int | None = Field(
        None, ge=10, description="Use a stratified subset of this many test images"
    )
    min_accuracy: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Gate: test accuracy floor (default 0.98 MNIST, 0.94 sample)",
    )
    max_accuracy_drop: float = Field(
        0.002, ge=0, le=1, description="Gate: allowed accuracy drop vs @champion"
    )
    max_recall_drop: float = Field(
        0.02, ge=0, le=1, description="Gate: allowed drop of the worst class recall"
    )
    min_robust_accuracy: float = Field(
        0.80, ge=0, le=1, description="Gate: floor on shifted/noisy test accuracy"
    )
    workdir: str = Field(
        "outputs", min_length=1, description="Folder for datasets, plots and models"
    )
    mnist_origin: str = Field(
        KERAS_MNIST_ORIGIN, description="URL of mnist.npz for the mnist source"
    )
    mnist_sha256: str = Field(
        KERAS_MNIST_SHA256, description="Expected SHA-256 of the downloaded mnist.npz"
    )
    download_timeout: float = Field(
        30.0, gt=0, le=3600, description="Seconds before a stalled download fails"
    )

    def training_params(self) -> dict[str, object]:
        """The fields that decide what training computes (its checkpoint key).

        The augmentation strengths are among them only when augmentation is on:
        otherwise they change nothing.
        """
        fields = {
            "epochs",
            "batch_size",
            "learning_rate",
            "validation_split",
            "seed",
            "augment",
        }
        if self.augment:
            fields |= {"augment_rotation", "augment_shift", "augment_zoom"}
        return self.model_dump(include=fields)

    def augmentation_strengths(self) -> Augmentation:
        """The configured strengths, whether or not ``augment`` is on."""
        return Augmentation(
            rotation=self.augment_rotation,
            shift=self.augment_shift,
            zoom=self.augment_zoom,
        )

    def augmentation(self) -> Augmentation | None:
        """What training augments with, or None (the notebook's training)."""
        return self.augmentation_strengths() if self.augment else None


class DriftConfig(BaseModel):
    """When a batch counts as drifted from the model's reference profile.

    The defaults follow common practice: a PSI of 0.1 is a moderate and 0.25 a
    major shift (0.2 is the usual alarm), a significance level of 1% for the
    Kolmogorov-Smirnov and chi-square tests, and a 0.1% tail on each side for
    flagging single images. docs/photos-and-drift.md shows what they flag.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    psi_threshold: float = Field(
        0.2,
        gt=0,
        le=100,
        description="A feature drifts when its population stability index reaches "
        "this (and its test is significant)",
    )
    ks_alpha: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="Significance level of the Kolmogorov-Smirnov (per-image "
        "features) and chi-square (predicted classes) tests",
    )
    js_threshold: float = Field(
        0.1,
        gt=0,
        le=1,
        description="The pixel histogram drifts when its Jensen-Shannon distance "
        "(base 2) reaches this",
    )
    min_histogram_images: int = Field(
        10,
        ge=1,
        description="Smallest batch whose pixel histogram is judged (a few images' "
        "histogram differs from any reference by chance)",
    )
    bins: int = Field(
        10, ge=2, le=100, description="Reference quantile bins for PSI and JS"
    )
    ood_quantile: float = Field(
        0.001,
        gt=0,
        lt=0.5,
        description="An image is out of distribution when a feature lies beyond "
        "the reference's quantiles at this share from either end",
    )


class PredictConfig(BaseModel):
    """A batch-inference run: which model, which images, where the CSV goes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_uri: str = Field(
        "models:/mnist-cnn@champion", min_length=1, description="MLflow model URI"
    )
    input: str = Field(
        ..., min_length=1, description=".npz, IDX image file, or folder of PNG/JPEG"
    )
    output: str = Field(..., min_length=1, description="CSV file to write")
    experiment: str = Field(
        "mnist-predictions", min_length=1, description="MLflow experiment"
    )


class RegistryConfig(BaseModel):
    """An operator's change to the registered model's ``@champion`` alias."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str = Field("mnist-cnn", min_length=1)
    version: int | None = Field(
        None, ge=1, description="Version to promote (promote only)"
    )
    reason: str = Field("operator request", description="Recorded in the tags")


#: At most this many combinations per sweep: a typo must not queue thousands.
MAX_TRIALS = 256
#: Training settings a sweep's grid decides, per trial (not taken from ``training``).
SWEPT_FIELDS = (
    "learning_rate",
    "batch_size",
    "dropout",
    "conv_filters",
    "epochs",
    "augment",
)

LearningRate = Annotated[float, Field(gt=0, le=10)]
BatchSize = Annotated[int, Field(ge=1, le=65536)]
Dropout = Annotated[float, Field(ge=0, lt=1)]
Filters = Annotated[int, Field(ge=1, le=1024)]
Epochs = Annotated[int, Field(ge=1, le=1000)]


class TrialParams(BaseModel):
    """The hyperparameters of one sweep trial: one combination of the grid."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    learning_rate: LearningRate
    batch_size: BatchSize
    dropout: Dropout
    conv_filters: tuple[Filters, Filters]
    epochs: Epochs
    augmentation: Augmentation | None = None

    def label(self) -> str:
        """A short human-readable description, e.g. for run names and logs."""
        first, second = self.conv_filters
        augmented = (
            f", augmented ({self.augmentation.label()})" if self.augmentation else ""
        )
        return (
            f"lr {self.learning_rate:g}, batch {self.batch_size}, dropout "
            f"{self.dropout:g}, filters {first}/{second}, {self.epochs} epoch(s)"
            f"{augmented}"
        )

    def flat_params(self) -> dict[str, object]:
        """The settings as flat name-value pairs (MLflow params, table columns)."""
        values = self.model_dump(exclude={"augmentation"})
        strengths = self.augmentation
        return values | {
            "augment": strengths is not None,
            "augment_rotation": strengths.rotation if strengths else None,
            "augment_shift": strengths.shift if strengths else None,
            "augment_zoom": strengths.zoom if strengths else None,
        }


class SweepGrid(BaseModel):
    """The values a sweep tries: one trial per combination (their Cartesian product).

    Each field lists values; one left out keeps the notebook's single value
    (``model.py`` holds the same filter and dropout defaults).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    learning_rate: tuple[LearningRate, ...] = Field(
        (0.01,), min_length=1, description="Adam learning rates to try"
    )
    batch_size: tuple[BatchSize, ...] = Field(
        (400,), min_length=1, description="Global batch sizes to try"
    )
    dropout: tuple[Dropout, ...] = Field(
        (0.5,), min_length=1, description="Dropout rates before the softmax to try"
    )
    conv_filters: tuple[tuple[Filters, Filters], ...] = Field(
        ((30, 15),),
        min_length=1,
        description="Filter counts of the two convolution layers, as pairs",
    )
    epochs: tuple[Epochs, ...] = Field(
        (10,), min_length=1, description="Training epochs to try"
    )
    augment: tuple[bool, ...] = Field(
        (False,),
        min_length=1,
        description=(
            "Whether trials augment their training images, e.g. [false, true]; "
            "the strengths are the shared training settings'"
        ),
    )

    @field_validator(
        "learning_rate", "batch_size", "dropout", "epochs", "augment", mode="before"
    )
    @classmethod
    def _one_value_is_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, int | float | str) else value

    @field_validator("conv_filters", mode="before")
    @classmethod
    def _one_pair_is_a_list(cls, value: object) -> object:
        if isinstance(value, list | tuple) and value and isinstance(value[0], int):
            return [value]
        return value

    @model_validator(mode="after")
    def _distinct_and_bounded(self) -> SweepGrid:
        for name in SWEPT_FIELDS:
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a value more than once: {values}")
        count = len(self.trials())
        if count > MAX_TRIALS:
            raise ValueError(
                f"{count} combinations; a sweep runs at most {MAX_TRIALS} trials"
            )
        return self

    def trials(self, augmentation: Augmentation | None = None) -> list[TrialParams]:
        """Every combination, in a stable order (the grid's, first field slowest).

        Args:
            augmentation: the strengths of the trials that augment (default:
                :class:`Augmentation`'s defaults).
        """
        strengths = augmentation or Augmentation()
        trials = []
        for values in itertools.product(*(getattr(self, n) for n in SWEPT_FIELDS)):
            settings = dict(zip(SWEPT_FIELDS, values, strict=True))
            augment = settings.pop("augment")
            trials.append(
                TrialParams(**settings, augmentation=strengths if augment else None)
            )
        return trials


class SweepConfig(BaseModel):
    """A hyperparameter sweep: what every trial shares, the grid, where it runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    grid: SweepGrid = Field(default_factory=SweepGrid)
    training: TrainConfig = Field(
        default_factory=TrainConfig,
        description=(
            "Shared by every trial: data, subsets, validation split, seed, "
            "experiment, registered model, gate, work folder and augmentation "
            "strengths. Its epochs, batch size, learning rate and augment are "
            "not used: the grid decides them."
        ),
    )
    dask_address: str | None = Field(
        None,
        min_length=1,
        description=(
            "Scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786; "
            "default: a local cluster for this run"
        ),
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Worker processes of the local cluster (default: one per core)",
    )

    def trials(self) -> list[TrialParams]:
        """The grid's trials, augmenting ones with the shared training strengths."""
        return self.grid.trials(self.training.augmentation_strengths())

    @field_validator("workers")
    @classmethod
    def _workers_only_for_a_local_cluster(
        cls, workers: int | None, info: ValidationInfo
    ) -> int | None:
        if workers and info.data.get("dask_address"):
            raise ValueError(
                "sizes the local cluster; the cluster at dask_address has its "
                "own workers"
            )
        return workers

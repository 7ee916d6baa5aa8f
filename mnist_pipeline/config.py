"""The one typed configuration of a training run.

It is the flow's parameter (Prefect renders it as a form and validates it), the
CLI builds it from options, and MLflow logs it as the run's params.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Literal

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


#: The notebook's filter counts of the two convolution layers, and its dropout
#: (``model.build_model``'s defaults; a sweep may vary them).
CONV_FILTERS = (30, 15)
DROPOUT = 0.5

#: The registered model every command uses unless told otherwise.
DEFAULT_MODEL_NAME = "mnist-cnn"
#: The work folder every command uses unless told otherwise.
DEFAULT_WORKDIR = "outputs"

#: Seconds a promotion (or an operator's alias change) waits for another one of
#: the same model to finish before it fails.
DEFAULT_PROMOTION_TIMEOUT = 900.0
PromotionTimeout = Annotated[
    float,
    Field(
        gt=0,
        le=86400,
        description=(
            "Seconds to wait while another run promotes the same model before failing"
        ),
    ),
]

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
        DEFAULT_MODEL_NAME, min_length=1, description="MLflow registered model name"
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
    min_accuracy_gain: float = Field(
        0.0,
        ge=0,
        le=1,
        description=(
            "Gate: test accuracy must beat @champion's on the same images by more "
            "than this (0: at least one more image right)"
        ),
    )
    max_recall_drop: float = Field(
        0.02, ge=0, le=1, description="Gate: allowed drop of the worst class recall"
    )
    min_robust_accuracy: float = Field(
        0.80, ge=0, le=1, description="Gate: floor on shifted/noisy test accuracy"
    )
    max_p_value: float = Field(
        0.05,
        gt=0,
        le=1,
        description=(
            "Gate: a gain over @champion counts only when McNemar's exact test on "
            "the images only one of them gets right gives p at most this "
            "(1: the test off, one more image right is enough)"
        ),
    )
    release_reason: str = Field(
        "",
        max_length=2000,
        description=(
            "Release without improvement: why (e.g. a fix shipped with the model). "
            "Set, the candidate need not beat @champion, only not be "
            "significantly worse (at max_p_value); every other check still applies"
        ),
    )
    approval: Literal["none", "required"] = Field(
        "none",
        description=(
            "required: a candidate that passes every check waits, paused, for a "
            "person to approve it in the Prefect UI before it becomes @champion"
        ),
    )
    approval_timeout: float = Field(
        86400.0,
        gt=0,
        le=30 * 86400,
        description="Seconds to wait for the approval; then the candidate expires",
    )
    workdir: str = Field(
        DEFAULT_WORKDIR,
        min_length=1,
        description="Folder for datasets, plots and models",
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
    retrain: bool = Field(
        False,
        description=(
            "Train and register even when a registered version already holds this "
            "training (same data, settings and code version)"
        ),
    )
    promotion_timeout: PromotionTimeout = DEFAULT_PROMOTION_TIMEOUT

    def training_params(self) -> dict[str, object]:
        """The settings that decide what training computes (part of its key).

        The same keys as :meth:`TrialParams.training_params`, so a sweep trial
        and a training run of one setup have one key. The augmentation
        strengths count only when augmentation is on: otherwise they change
        nothing.
        """
        fields = {"epochs", "batch_size", "learning_rate", "validation_split", "seed"}
        augmentation = self.augmentation()
        return self.model_dump(include=fields) | {
            "conv_filters": list(CONV_FILTERS),
            "dropout": DROPOUT,
            "augmentation": augmentation.model_dump() if augmentation else None,
        }

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
    chunk_size: int = Field(
        1000,
        ge=1,
        le=100_000,
        description=(
            "Images read, predicted and written at a time; memory grows with it, "
            "not with the input"
        ),
    )
    preprocessing: Literal["mnist", "resize"] = Field(
        "mnist",
        description=(
            "How a folder's pictures become 28x28 images: 'mnist' crops to the ink "
            "and centres it as MNIST's digits were made; 'resize' is the "
            "notebook's plain resize (arrays are read as they are)"
        ),
    )
    drift: DriftConfig = Field(
        default_factory=DriftConfig,
        description="When a batch counts as drifted from the version's reference "
        "profile (set in --config FILE.yaml)",
    )


#: Bytes of JSON one image may take in a served request when ``max_body_bytes``
#: is not set: 784 values written as ``255.0, `` (7 bytes) plus brackets.
JSON_BYTES_PER_IMAGE = 8 * 1024


class ServeConfig(BaseModel):
    """An HTTP model server: which model, where it listens, what a request may cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_uri: str = Field(
        "models:/mnist-cnn@champion",
        min_length=1,
        description=(
            "MLflow model URI; an alias (models:/name@alias) is followed (see "
            "watch_interval), a version or a path is served as it is"
        ),
    )
    watch_interval: float = Field(
        5.0,
        ge=0,
        le=3600,
        description=(
            "Seconds between checks of the alias; a new version is loaded and "
            "checked in the background, then swapped in (0: serve the version "
            "the alias named at start)"
        ),
    )
    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on")
    port: int = Field(5001, ge=1, le=65535, description="TCP port to listen on")
    workers: int = Field(
        2,
        ge=1,
        le=64,
        description="Server processes, each with its own copy of the model",
    )
    max_images_per_request: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="More images in one request are refused (400); use batch predict",
    )
    max_body_bytes: int | None = Field(
        None,
        ge=1024,
        description=(
            "Larger request bodies are refused (413) before they are parsed "
            f"(default: {JSON_BYTES_PER_IMAGE // 1024} KiB per allowed image)"
        ),
    )
    request_timeout: int = Field(
        60,
        ge=1,
        le=3600,
        description="Seconds before a request is answered 504 (its work still ends)",
    )
    limit_concurrency: int | None = Field(
        None,
        ge=1,
        description="Per worker: connections beyond this many are answered 503",
    )
    keep_alive_timeout: int = Field(
        5, ge=1, le=3600, description="Seconds an idle keep-alive connection stays"
    )
    access_log: bool = Field(True, description="Log one line per request")
    max_image_pixels: int = Field(
        12_000_000,
        ge=1,
        le=200_000_000,
        description=(
            "/predict-image: a larger picture (width x height) is refused (413) "
            "from its header, undecoded"
        ),
    )
    image_decodes: int = Field(
        2,
        ge=1,
        le=64,
        description=(
            "/predict-image, per worker: pictures decoded at once; more wait "
            "(within request_timeout)"
        ),
    )

    def body_limit(self) -> int:
        """The largest request body accepted, in bytes."""
        return self.max_body_bytes or self.max_images_per_request * JSON_BYTES_PER_IMAGE


class RegistryConfig(BaseModel):
    """An operator's change to the registered model's ``@champion`` alias."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str = Field(
        DEFAULT_MODEL_NAME, min_length=1, description="Registered model name"
    )
    reason: str = Field(
        "operator request",
        min_length=1,
        max_length=2000,
        description="Why: recorded in the alias history",
    )
    operator: str = Field(
        "",
        max_length=200,
        description="Who asks for the change, recorded in the history "
        "(default: the user@host that runs it)",
    )
    promotion_timeout: PromotionTimeout = DEFAULT_PROMOTION_TIMEOUT


class PromoteConfig(RegistryConfig):
    """Make a registered version the ``@champion`` without comparing it with the
    champion (a version the gate found below a floor is refused)."""

    version: int = Field(..., ge=1, description="Version to make @champion")


class RollbackConfig(RegistryConfig):
    """Move ``@champion`` back: one step, or to any earlier champion."""

    to: int = Field(
        0,
        ge=0,
        description="An earlier champion to go back to (0: the one before the "
        "current champion)",
    )


class HistoryConfig(BaseModel):
    """Read the history of the ``@champion`` alias."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str = Field(
        DEFAULT_MODEL_NAME, min_length=1, description="Registered model name"
    )
    limit: int | None = Field(
        None, ge=1, description="Show only the newest N moves (default: all)"
    )


class PruneConfig(BaseModel):
    """What to clear from the work folder after a year of nights (a plan first)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workdir: str = Field(DEFAULT_WORKDIR, min_length=1, description="Work folder")
    model_name: str = Field(
        DEFAULT_MODEL_NAME,
        min_length=1,
        description="Registered model whose versions decide what stays",
    )
    keep_versions: int = Field(
        5,
        ge=0,
        le=10000,
        description="The last N versions keep their local models (as do "
        "@champion and @challenger)",
    )
    older_than_days: float = Field(
        30.0, ge=0, le=36500, description="Only files older than this go"
    )
    apply: bool = Field(
        False, description="Remove what the plan lists (default: only list it)"
    )


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

    def training_params(self, validation_split: float, seed: int) -> dict[str, object]:
        """The settings that decide what this trial's training computes."""
        return self.model_dump(mode="json") | {
            "validation_split": validation_split,
            "seed": seed,
        }

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

    Each field lists values; one left out keeps the notebook's single value.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    learning_rate: tuple[LearningRate, ...] = Field(
        (0.01,), min_length=1, description="Adam learning rates to try"
    )
    batch_size: tuple[BatchSize, ...] = Field(
        (400,), min_length=1, description="Global batch sizes to try"
    )
    dropout: tuple[Dropout, ...] = Field(
        (DROPOUT,), min_length=1, description="Dropout rates before the softmax to try"
    )
    conv_filters: tuple[tuple[Filters, Filters], ...] = Field(
        (CONV_FILTERS,),
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

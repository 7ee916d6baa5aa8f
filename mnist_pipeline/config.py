"""The one typed configuration of a training run.

It is the flow's parameter (Prefect renders it as a form and validates it), the
CLI builds it from options, and MLflow logs it as the run's params.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: Where Keras's own ``keras.datasets.mnist.load_data`` downloads MNIST from.
KERAS_MNIST_ORIGIN = (
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
)
#: The SHA-256 Keras checks that download against.
KERAS_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"


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
    seed: int = Field(0, ge=0, description="Seed for the split, weights and dropout")
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
        """The fields that decide what training computes (its checkpoint key)."""
        return self.model_dump(
            include={
                "epochs",
                "batch_size",
                "learning_rate",
                "validation_split",
                "seed",
            }
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

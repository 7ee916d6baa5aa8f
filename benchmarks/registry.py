"""A registry for the serving and batch benchmarks (run as its own process).

``python -m benchmarks.registry --uri sqlite:///DIR/mlflow.db --folder DIR``
registers ``bench`` version 1 (the pipeline's wrapper, ``@champion``) and version
2 (the pre-change wrapper, ``benchmarks/keras_predict_model.py``, ``@before``),
both around the same untrained model: speed depends on the model's shape, not
its weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mnist_pipeline.runtime import configure_environment

NAME = "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--folder", type=Path, required=True)
    args = parser.parse_args()
    configure_environment()

    import keras
    import mlflow
    import numpy as np

    from mnist_pipeline import packaging, runs, tracking_store
    from mnist_pipeline.model import build_model
    from mnist_pipeline.serving import as_model_input

    keras.utils.set_random_seed(0)
    path = args.folder / "model.keras"
    build_model().save(path)
    client = tracking_store.connect(args.uri)
    experiment = client.create_experiment(
        "bench", artifact_location=(args.folder / "mlruns").as_uri()
    )
    example = np.zeros((1, 28, 28), np.uint8)
    with runs.tracked_run(client, experiment, "bench", {}) as run_id:
        packaging.log_model(run_id, path, NAME, example, {})
        mlflow.models.Model.log(
            artifact_path=None,
            name="before",
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=str(Path(__file__).with_name("keras_predict_model.py")),
            artifacts={"keras_model": str(path)},
            signature=packaging.SIGNATURE,
            input_example=as_model_input(example),
            pip_requirements=packaging.pip_requirements(),
            registered_model_name=NAME,
        )
    client.set_registered_model_alias(NAME, "champion", "1")
    client.set_registered_model_alias(NAME, "before", "2")
    print("RESULT {}", flush=True)


if __name__ == "__main__":
    main()

"""What normalisation and augmentation buy: ``python -m benchmarks.photos``.

For each training configuration and seed, on the bundled sample: test accuracy
on its 1,000 test images, the promotion gate's robustness figure (mean accuracy
on the test images shifted 2 pixels four ways and with noise), training time,
and accuracy on two photo sets, each normalised both ways ("mnist" and the
notebook's "resize"):

- ``uci``: 1,797 real handwritten digits that are not MNIST's (scikit-learn's
  bundled UCI set), rendered as photos (mnist_pipeline.photoset);
- ``crafted``: the sample's 1,000 test digits pasted on paper the same way.

Writes ``benchmarks/results/photos.json`` and ``photos.md``. Every model trains
in this one process, configurations alternating within each seed, so times are
comparable as ratios (the machine is shared). About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("results")
#: name -> train_model settings (augmentation from TrainConfig's defaults).
CONFIGS = {
    "notebook (10 epochs, batch 400, Adam 0.01)": {
        "epochs": 10,
        "batch_size": 400,
        "learning_rate": 0.01,
        "augment": False,
    },
    "notebook + augmentation": {
        "epochs": 10,
        "batch_size": 400,
        "learning_rate": 0.01,
        "augment": True,
    },
    "30 epochs, batch 200, Adam 0.003": {
        "epochs": 30,
        "batch_size": 200,
        "learning_rate": 0.003,
        "augment": False,
    },
    "30 epochs, batch 200, Adam 0.003 + augmentation (recommended)": {
        "epochs": 30,
        "batch_size": 200,
        "learning_rate": 0.003,
        "augment": True,
    },
}


def photo_sets(sample) -> dict[str, dict]:
    """Each set normalised both ways: images by mode, labels, styles, refusals.

    A photo that normalisation refuses (no ink, several digits) counts as not
    read: its image is left blank, and the refusal is listed.
    """
    from PIL import Image

    from mnist_pipeline import photos, photoset
    from mnist_pipeline.errors import DigitImageError

    uci_strokes, uci_labels = photoset.uci_strokes()
    sources = {
        "uci": (uci_strokes, uci_labels),
        "crafted": (photoset.mnist_strokes(sample.x_test), sample.y_test),
    }
    sets = {}
    for name, (strokes, labels) in sources.items():
        images = {mode: [] for mode in photos.NORMALISATIONS}
        refused = []
        with tempfile.TemporaryDirectory() as folder:
            records = photoset.write_photo_set(Path(folder), strokes, labels, seed=1)
            for record in records:
                for mode in photos.NORMALISATIONS:
                    picture = Image.open(Path(folder) / record.file)
                    try:
                        images[mode].append(photos.normalise_photo(picture, mode))
                    except DigitImageError as exc:
                        images[mode].append(np.zeros((28, 28), np.uint8))
                        refused.append(f"{record.file} ({mode}): {exc}")
        sets[name] = {
            "images": {mode: np.stack(v) for mode, v in images.items()},
            "labels": np.asarray(labels),
            "styles": [r.style for r in records],
            "refused": refused,
        }
    return sets


def measure(name: str, settings: dict, seed: int, sample, prepared, sets) -> dict:
    """Train one configuration with one seed and score it every way."""
    from mnist_pipeline import gate
    from mnist_pipeline.config import TrainConfig
    from mnist_pipeline.evaluate import evaluate_model
    from mnist_pipeline.train import train_model

    config = TrainConfig(seed=seed, **settings)
    started = time.perf_counter()
    model, _ = train_model(
        prepared,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=seed,
        augmentation=config.augmentation(),
    )
    seconds = time.perf_counter() - started

    def accuracy(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        scaled = images[..., None].astype("float32") / 255
        return model.predict(scaled, verbose=0).argmax(axis=1) == labels

    robust = {
        k: float(accuracy(v, sample.y_test).mean())
        for k, v in gate.perturbations(sample.x_test, seed).items()
    }
    row = {
        "config": name,
        "seed": seed,
        "train_seconds": round(seconds, 1),
        "test_accuracy": evaluate_model(
            model, prepared.x_test, prepared.y_test
        ).accuracy,
        "robust_accuracy": float(np.mean(list(robust.values()))),
        "robust": robust,
    }
    for set_name, photo_set in sets.items():
        labels, styles = photo_set["labels"], photo_set["styles"]
        for mode, normalised in photo_set["images"].items():
            right = accuracy(normalised, labels)
            row[f"{set_name}_{mode}"] = float(right.mean())
            by_style = defaultdict(list)
            for style, ok in zip(styles, right, strict=True):
                by_style[style].append(ok)
            row[f"{set_name}_{mode}_by_style"] = {
                s: float(np.mean(v)) for s, v in by_style.items()
            }
    return row


def summarise(rows: list[dict]) -> list[dict]:
    """Mean over seeds per configuration, training time as a ratio to the first.

    Times leave out seed 0 when there are more seeds: the first model of the
    process also pays for TensorFlow's start-up and first tracing.
    """
    columns = ("test_accuracy", "robust_accuracy")
    columns += tuple(k for k in rows[0] if k.startswith(("uci_", "crafted_")))
    columns = tuple(c for c in columns if not c.endswith("_by_style"))
    timed_seeds = {r["seed"] for r in rows} - (
        {0} if len(rows) > len(CONFIGS) else set()
    )
    table = []
    for name in CONFIGS:
        mine = [r for r in rows if r["config"] == name]
        timed = [r["train_seconds"] for r in mine if r["seed"] in timed_seeds]
        table.append(
            {"config": name, "seeds": [r["seed"] for r in mine]}
            | {c: float(np.mean([r[c] for r in mine])) for c in columns}
            | {"train_seconds": float(np.mean(timed))}
        )
    baseline = table[0]["train_seconds"]
    for entry in table:
        entry["train_time_ratio"] = entry["train_seconds"] / baseline
    return table


def markdown(table: list[dict], rows: list[dict]) -> str:
    head = (
        "| Configuration | Test accuracy (1,000) | Robustness (gate) | UCI photos, "
        "mnist | UCI photos, resize | Crafted photos, mnist | Crafted photos, resize "
        "| Training s (× notebook) |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for t in table:
        lines.append(
            f"| {t['config']} | {t['test_accuracy']:.4f} | {t['robust_accuracy']:.4f} "
            f"| {t['uci_mnist']:.3f} | {t['uci_resize']:.3f} "
            f"| {t['crafted_mnist']:.3f} | {t['crafted_resize']:.3f} "
            f"| {t['train_seconds']:.0f} "
            f"({t['train_time_ratio']:.2f}×) |"
        )
    per_seed = ["", "Per seed (test accuracy, robustness, UCI photos mnist):", ""]
    per_seed += [
        f"- {r['config']}, seed {r['seed']}: {r['test_accuracy']:.4f}, "
        f"{r['robust_accuracy']:.4f}, {r['uci_mnist']:.3f}"
        for r in rows
    ]
    styles = ["", "UCI photos by style, mean over configurations and seeds:", ""]
    for mode in ("mnist", "resize"):
        by_style = defaultdict(list)
        for r in rows:
            for style, value in r[f"uci_{mode}_by_style"].items():
                by_style[style].append(value)
        styles.append(
            f"- {mode}: "
            + ", ".join(f"{s} {np.mean(v):.3f}" for s, v in by_style.items())
        )
    return "\n".join(lines + per_seed + styles) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite photos.md from photos.json"
    )
    args = parser.parse_args()
    if args.report_only:
        result = json.loads((RESULTS / "photos.json").read_text())
        result["table"] = summarise(result["rows"])
        write(result)
        return

    from mnist_pipeline.runtime import configure_environment

    configure_environment()
    from mnist_pipeline.data import load_sample
    from mnist_pipeline.preprocess import preprocess

    sample = load_sample()
    started = time.time()
    sets = photo_sets(sample)
    rows = []
    for seed in range(args.seeds):
        prepared = preprocess(sample, 0.1, seed)
        for name, settings in CONFIGS.items():
            rows.append(measure(name, settings, seed, sample, prepared, sets))
            print(json.dumps({k: v for k, v in rows[-1].items() if "style" not in k}))
    table = summarise(rows)
    RESULTS.mkdir(exist_ok=True)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}",
        "minutes": round((time.time() - started) / 60, 1),
        "table": table,
        "refused": {name: photo_set["refused"] for name, photo_set in sets.items()},
        "rows": rows,
    }
    write(result)


def write(result: dict) -> None:
    """photos.json and photos.md from a result."""
    (RESULTS / "photos.json").write_text(json.dumps(result, indent=2) + "\n")
    refused = [f"- refused: {r}" for v in result["refused"].values() for r in v]
    text = markdown(result["table"], result["rows"]) + "\n".join(["", *refused, ""])
    (RESULTS / "photos.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Human-readable summaries of a run (Prefect markdown artifact, CLI lines)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from mnist_pipeline.gate import Decision

if TYPE_CHECKING:
    from mnist_pipeline.drift import DriftReport


def summary_markdown(
    *,
    metrics: Mapping[str, float],
    dataset: str,
    digest: str,
    model_name: str,
    version: str,
    run_id: str,
    run_url: str | None,
    gate: str,
) -> str:
    """Headline metrics, dataset and model version as a markdown page."""
    run = f"[{run_id}]({run_url})" if run_url else f"`{run_id}`"
    return "\n".join(
        [
            "# MNIST training run",
            "",
            "| | |",
            "|---|---|",
            f"| Test accuracy | **{metrics['test_accuracy']:.4f}** |",
            f"| Test loss | {metrics['test_loss']:.4f} |",
            f"| Worst class recall | {metrics['test_min_class_recall']:.4f} |",
            f"| Dataset | {dataset} (digest `{digest}`) |",
            f"| Registered model | `{model_name}` version **{version}** |",
            f"| Promotion gate | {gate} |",
            f"| MLflow run | {run} |",
        ]
    )


def per_class_rows(per_class: Sequence[Mapping[str, float]]) -> list[dict[str, str]]:
    """Per-class metrics rounded for a table artifact."""
    return [
        {
            "class": str(int(row["class"])),
            "precision": f"{row['precision']:.4f}",
            "recall": f"{row['recall']:.4f}",
            "f1": f"{row['f1']:.4f}",
            "support": str(int(row["support"])),
        }
        for row in per_class
    ]


def gate_markdown(
    model_name: str, version: str, decision: Decision, champion_version: str | None
) -> str:
    """The gate's verdict and every compared figure as a markdown page."""
    verdict = (
        f"**promoted**: `{model_name}` v{version} is now `@champion`"
        if decision.promote
        else f"**rejected**: `{model_name}` v{version} stays `@challenger`"
    )
    compared = f"v{champion_version}" if champion_version else "none (first model)"
    lines = [
        "# Promotion gate",
        "",
        f"Decision: {verdict}. Compared with champion: {compared}.",
        "",
        "| Check | Result | Value | Required |",
        "|---|---|---|---|",
    ]
    for check in decision.checks:
        result = "pass" if check.passed else "**FAIL**"
        figures = f"{check.value:.4f} | >= {check.threshold:.4f}"
        lines.append(f"| {check.name} | {result} | {figures} |")
    return "\n".join(lines)


def drift_markdown(report: DriftReport, model_name: str, version: str) -> str:
    """A batch's drift verdict, per-feature figures and flagged images as markdown."""
    verdict = (
        f"**drift detected** in {', '.join(f'`{n}`' for n in report.drifting)}"
        if report.drift_detected
        else "**no drift**"
    )
    flagged = sum(report.out_of_distribution)
    lines = [
        "# Input drift",
        "",
        f"Batch of {report.images} image(s) against the reference profile of "
        f"`{model_name}` v{version}: {verdict}. {flagged} image(s) "
        f"({report.ood_share:.1%}) out of distribution.",
        "",
        "| Feature | Verdict | PSI | JS distance | KS statistic | p-value | Batch mean "
        "| Reference mean | Why |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in report.features:
        result = "**DRIFT**" if f.drifted else "ok"
        cells = [
            f.name,
            result,
            f"{f.psi:.3f}",
            f"{f.js_distance:.3f}",
            _figure(f.ks_statistic, ".3f"),
            _figure(f.p_value, ".2g"),
            _figure(f.batch_mean, ".4g"),
            _figure(f.reference_mean, ".4g"),
            f.reason,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    t = report.thresholds
    lines += [
        "",
        f"Thresholds: PSI >= {t.psi_threshold:g} with p < {t.ks_alpha:g} over all "
        f"tests (Bonferroni); pixel histogram JS >= {t.js_threshold:g}; an image is "
        f"out of distribution beyond the reference's {t.ood_quantile:g} quantiles.",
    ]
    return "\n".join(lines)


def _figure(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)

"""Human-readable summaries of a run (Prefect markdown artifact, CLI lines)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from mnist_pipeline.gate import Decision, format_p

if TYPE_CHECKING:
    from mnist_pipeline.drift import DriftReport


def summary_markdown(
    *,
    metrics: Mapping[str, float],
    dataset: str,
    digest: str,
    split_digests: Mapping[str, str],
    model_name: str,
    version: str,
    version_url: str | None,
    run_id: str,
    run_url: str | None,
    gate: str,
    training_key: str,
    code_version: str,
) -> str:
    """Headline metrics, dataset and model version as a markdown page."""
    return _table(
        "# MNIST training run",
        [
            ("Test accuracy", f"**{metrics['test_accuracy']:.4f}**"),
            ("Test loss", f"{metrics['test_loss']:.4f}"),
            ("Worst class recall", f"{metrics['test_min_class_recall']:.4f}"),
            ("Dataset", dataset_line(dataset, digest, split_digests)),
            ("Registered model", _version(model_name, version, version_url)),
            ("Promotion gate", gate),
            ("MLflow run", _link(run_id, run_url)),
            ("Training key", f"`{training_key}` (code version `{code_version}`)"),
        ],
    )


def existing_markdown(
    *,
    model_name: str,
    version: str,
    version_url: str | None,
    run_id: str | None,
    run_url: str | None,
    tags: Mapping[str, str],
    training_key: str,
    gate: str,
) -> str:
    """The page of a run that found its training already registered.

    ``gate`` is the holding version's verdict as :func:`held_verdict` words it:
    this run decided nothing.
    """
    digest = tags.get("dataset_digest", "?")
    return _table(
        "# MNIST training run: nothing to train",
        [
            (
                "Already trained",
                f"{_version(model_name, version, version_url)} holds this "
                "training: same data, settings and code version. Nothing was "
                "trained or registered.",
            ),
            ("Test accuracy", f"**{tags.get('test_accuracy', '?')}**"),
            ("Dataset", f"{tags.get('dataset', '?')}: dataset digest `{digest}`"),
            ("Promotion gate", gate),
            ("MLflow run that trained it", _link(run_id or "?", run_url)),
            ("Training key", f"`{training_key}`"),
            ("Train again", "`--retrain` (config field `retrain: true`)"),
        ],
    )


def _table(title: str, rows: Sequence[tuple[str, str]]) -> str:
    lines = [title, "", "| | |", "|---|---|"]
    return "\n".join(lines + [f"| {name} | {value} |" for name, value in rows])


def _version(model_name: str, version: str, url: str | None) -> str:
    # Prefect renders no code or bold inside link text: plain words in a link.
    if url:
        return f"[{model_name} version {version}]({url})"
    return f"`{model_name}` version **{version}** (`models:/{model_name}/{version}`)"


def dataset_line(name: str, digest: str, split_digests: Mapping[str, str]) -> str:
    """A dataset's digests, each named for what it covers.

    The dataset digest covers both splits; MLflow's dataset inputs
    (``<name>-train``, ``<name>-test``) carry the split digests.
    """
    splits = ", ".join(f"{s} split `{d}`" for s, d in split_digests.items())
    return f"{name}: dataset digest `{digest}` ({splits})"


def held_verdict(version: str, run_id: str | None, day: str, verdict: str) -> str:
    """The recorded verdict of the version holding a training, saying whose it is."""
    run = f"run {run_id[:8]}, " if run_id else ""
    return f"v{version}'s gate ({run}{day}): {verdict}"


def nothing_trained(version: str, gate: str) -> str:
    """The gate line of a run that found its training registered as ``version``."""
    return f"nothing trained; v{version} holds this training; {gate}"


def code_aliases(text: str) -> str:
    """``@champion``/``@challenger`` as code: MLflow's pages link a bare ``@name``
    to github.com/name."""
    return re.sub(r"(?<!`)@(champion|challenger)\b(?!`)", r"`@\1`", text)


def _link(text: str, url: str | None) -> str:
    return f"[{text}]({url})" if url else f"`{text}`"


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


def gate_sentence(decision: Decision, compared_with: str | None) -> str:
    """The gate's verdict in one line, naming the champion it was compared with,
    with the evidence (images, p-value) and a person's decision where there was
    one."""
    details = {c.name: c for c in decision.checks}
    approval = details.get("approval")
    signed = f"; {approval.detail}" if approval and approval.passed else ""
    if not decision.promote:
        if decision.lacks_evidence:
            detail = details["significant_improvement"].detail
            return f"{detail}, kept as @challenger{signed}"
        kept = "kept as @challenger: " + "; ".join(decision.reasons) + signed
        return kept + _evidence_note(decision, kept)
    if compared_with is None:
        return "promoted to @champion (first champion; every check passed)" + signed
    if decision.release_reason:
        return (
            f"released to @champion over v{compared_with} as a release that need "
            f"not be better ({decision.release_reason}): "
            f"{details['not_worse_than_champion'].detail}" + signed
        )
    evidence = details.get("significant_improvement") or details.get(
        "better_than_champion"
    )
    if evidence is None:
        return f"v{compared_with} is @champion (this version)"
    return f"promoted to @champion over v{compared_with}: {evidence.detail}" + signed


def gate_markdown(
    model_name: str,
    version: str,
    decision: Decision,
    compared_with: str | None,
    lineage: str,
) -> str:
    """The gate's verdict and every compared figure as a markdown page."""
    verdict = (
        f"**promoted**: `{model_name}` v{version} is now `@champion`"
        if decision.promote
        else f"**rejected**: `{model_name}` v{version} stays `@challenger`"
    )
    compared = f"v{compared_with}" if compared_with else "none (first model)"
    lines = [
        "# Promotion gate",
        "",
        f"Decision: {verdict}. Compared with champion: {compared}.",
        "",
        f"Test split: {lineage}.",
        "",
        *_evidence_lines(decision),
        *_check_table(decision),
    ]
    return "\n".join(lines)


def approval_markdown(
    model_name: str,
    version: str,
    *,
    verdict: str,
    decision: Decision,
    run: str,
    version_url: str | None,
    timeout: float,
) -> str:
    """What the person who approves reads above the form: the gate's figures
    against the champion and links to the MLflow run and version."""
    lines = [
        f"# Approve `{model_name}` v{version} as `@champion`?",
        "",
        "Tick **approve** and submit to make it `@champion` (the champion is "
        "read and compared again first); submit without the tick to reject. "
        f"No answer within {duration(timeout)}: it expires and stays "
        "`@challenger`.",
        "",
        f"Every automatic check passed; the gate's verdict, if approved: "
        f"{code_aliases(verdict)}.",
        "",
        f"MLflow: {run}; {_link(f'{model_name} version {version}', version_url)}.",
        "",
        *_evidence_lines(decision),
        *_check_table(decision),
    ]
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """E.g. ``12 h``, ``1.5 h``, ``10 min``, ``45 s``."""
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


def _check_table(decision: Decision) -> list[str]:
    lines = ["| Check | Result | Value | Required |", "|---|---|---|---|"]
    for check in decision.checks:
        result = "pass" if check.passed else "**FAIL**"
        if check.name == "approval":
            figures = f"{check.detail} | a person's approval"
        else:
            figures = f"{check.value:.4g} | {check.relation} {check.threshold:.4g}"
        lines.append(f"| {check.name} | {result} | {figures} |")
    return lines


def _evidence_note(decision: Decision, sentence: str) -> str:
    """The paired test's figures, where the sentence does not say them yet."""
    paired = decision.paired
    if paired is None or f"(c={paired.c}, b={paired.b})" in sentence:
        return ""
    return f"; against the champion: {paired.describe()}"


def _evidence_lines(decision: Decision) -> list[str]:
    """The paired test's figures and a release's reason, as paragraphs."""
    lines = []
    paired = decision.paired
    if paired is not None:
        lines += [
            "Paired test (McNemar, exact, one-sided) on the same test images: "
            f"only this version right **c = {paired.c}**, only the champion right "
            f"**b = {paired.b}**, **p = {paired.p_value:.2g}** (the chance of a "
            "gain this large if neither model were better).",
            "",
        ]
    if decision.release_reason:
        lines += [
            f"A release that need not be better: {decision.release_reason}. It "
            "must not be significantly worse: the same test the other way gives "
            f"p = {format_p(paired.p_worse) if paired else 'n/a'} for a loss this "
            "large.",
            "",
        ]
    return lines


def drift_markdown(report: DriftReport, model_name: str, version: str) -> str:
    """A batch's drift verdict, per-feature figures and flagged images as markdown."""
    verdict = (
        f"**drift detected** in {', '.join(f'`{n}`' for n in report.drifting)}"
        if report.drift_detected
        else "**no drift**"
    )
    flagged = report.ood_images
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


def prediction_note(
    drift: DriftReport | None,
    *,
    images: int,
    failed: int,
    source: str,
    model: str,
    output: str,
) -> tuple[str, str]:
    """A prediction run's drift verdict (a tag's value) and its page's description."""
    if drift is None:
        verdict, words = (
            "unchecked",
            "not checked (the version has no reference profile)",
        )
    elif drift.drift_detected:
        verdict = "drift"
        names = ", ".join(f"`{n}`" for n in drift.drifting)
        words = f"**drift detected** in {names}"
    else:
        verdict, words = "none", "**no drift**"
    ood = (
        f" {drift.ood_images} image(s) ({drift.ood_share:.1%}) out of distribution."
        if drift is not None
        else ""
    )
    skipped = f"; {failed} file(s) unreadable, skipped" if failed else ""
    note = code_aliases(
        f"Predicted {images} image(s) of `{source}` with {model}{skipped}. "
        f"Input drift: {words}.{ood}\n\nPredictions: `{output}`; per-feature "
        "figures: the `drift_*` metrics and `drift/`."
    )
    return verdict, note


def _figure(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)

"""The markdown table of a benchmark run's results."""

from __future__ import annotations

import statistics


def markdown(results: dict) -> str:
    """Headline table, then what ran where (the sections that ran)."""
    machine, plan = results["machine"], results["plan"]
    sections = (
        ("throughput", _throughput_rows),
        ("end_to_end", _end_to_end_rows),
        ("validation", _validation_rows),
        ("rerun", _rerun_rows),
        ("serving", _serving_rows),
        ("batch", _batch_rows),
    )
    rows = [
        "| Benchmark | Pipeline | Baseline | Pipeline vs baseline |",
        "|---|---:|---:|---:|",
    ]
    for key, render in sections:
        if key in results:
            rows += render(results[key])
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    load = "/".join(f"{x:.1f}" for x in machine["load_average_start"][:1])
    load_end = "/".join(f"{x:.1f}" for x in machine["load_average_end"][:1])
    notes = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores; Python "
        f"{machine['python']}; {packages}.",
        f"Date: {machine['date']}; commit {machine['commit']}; {plan['name']} run "
        f"({results['minutes']:.0f} min). 1-minute load average {load} at the start "
        f"and {load_end} at the end (the machine is shared: compare ratios only).",
    ]
    if "throughput" in results:
        notes.append(
            f"Throughput data: {results['throughput']['data']}; "
            f"{results['throughput']['epochs_per_run']} epochs per run, "
            f"{plan['throughput_runs']} run(s) per side."
        )
    if "serving" in results:
        notes.append(
            f"Serving: {plan['serving_rounds']} round(s) per side (order reversed "
            "every other round), each at most 4,000 requests or 8 s per "
            "concurrency; medians over rounds. Pipeline = `mnist-pipeline "
            "serve-model`, baseline = `mlflow models serve --workers 1` with the "
            "wrapper calling `keras.Model.predict` (the path before this change)."
        )
    return "\n".join(rows) + "\n\n" + "\n\n".join(notes) + "\n"


def _throughput_rows(result: dict) -> list[str]:
    sides = result["sides"]
    pipeline = sides["pipeline"]["median_images_per_s"]
    baseline = sides["baseline"]["median_images_per_s"]
    paired = ", ".join(f"{r:.2f}" for r in result["paired_ratios"])
    rows = [
        f"| Training throughput, images/s (median over runs of the median epoch "
        f"after the first) | {pipeline:,.0f} | {baseline:,.0f} | "
        f"**{result['ratio']:.2f}×** (per pair: {paired}) |"
    ]
    if "baseline_tf_settings" in sides:
        control = sides["baseline_tf_settings"]["median_images_per_s"]
        settings = ", ".join(
            f"`{k}={v}`" for k, v in result["tensorflow_settings"].items()
        )
        rows.append(
            f"| ↳ control: the baseline script with the pipeline's TensorFlow settings "
            f"({settings}) | | {control:,.0f} | {pipeline / control:.2f}× |"
        )
    return rows


def _end_to_end_rows(result: dict) -> list[str]:
    pipeline, running = result["pipeline"], result["pipeline_running_server"]
    baseline = result["baseline"]
    seeds = ", ".join(map(str, result["seeds"]))
    accuracy = [statistics.mean(s["test_accuracy"]) for s in (pipeline, baseline)]
    first = result["first_run_in_new_folder"]
    return [
        f"| Test accuracy on the sample's 1,000 test images (mean of seeds {seeds}) "
        f"| {accuracy[0]:.4f} | {accuracy[1]:.4f} | "
        f"{100 * (accuracy[0] - accuracy[1]):+.2f} points |",
        f"| End to end on the sample, wall s: `mnist-pipeline train --data sample` "
        f"(Prefect's temporary server) vs the script's load, scale, fit, evaluate "
        f"| {pipeline['median_wall_s']:.1f} | {baseline['median_wall_s']:.1f} "
        f"| **{pipeline['overhead_s']:+.1f} s** |",
        f"| ↳ the same with a running Prefect server (`PREFECT_API_URL`) "
        f"| {running['median_wall_s']:.1f} | {baseline['median_wall_s']:.1f} "
        f"| **{running['overhead_s']:+.1f} s** |",
        f"| ↳ first pipeline run in a new folder (creates the MLflow and Prefect "
        f"databases; temporary server) | {first['median_wall_s']:.1f} | | |",
        f"| Peak RSS, MB, largest process (temporary server) "
        f"| {pipeline['median_peak_rss_mb']:,.0f} | "
        f"{baseline['median_peak_rss_mb']:,.0f} | "
        f"**{pipeline['peak_rss_mb_ratio']:.2f}×** |",
        f"| ↳ whole process tree, the temporary Prefect server included "
        f"| {pipeline['median_peak_tree_rss_mb']:,.0f} | "
        f"{baseline['median_peak_tree_rss_mb']:,.0f} | "
        f"{pipeline['peak_tree_rss_mb_ratio']:.2f}× |",
        f"| ↳ largest process, with a running Prefect server "
        f"| {running['median_peak_rss_mb']:,.0f} | "
        f"{baseline['median_peak_rss_mb']:,.0f} | "
        f"{running['peak_rss_mb_ratio']:.2f}× |",
    ]


def _validation_rows(result: dict) -> list[str]:
    pipeline, numpy = result["pipeline"], result["numpy"]
    return [
        f"| Validation of 70,000 images, s (pipeline stage vs plain numpy asserts) "
        f"| {pipeline['median_seconds']:.3f} | {numpy['median_seconds']:.3f} | "
        f"{pipeline['median_seconds'] - numpy['median_seconds']:+.3f} s |",
        f"| Validation of 70,000 images, extra memory, MB "
        f"| {pipeline['median_extra_mb']:.1f} | {numpy['median_extra_mb']:.1f} | |",
    ]


def _rerun_rows(results: dict) -> list[str]:
    rows = []
    for result in results.values():
        first, second = result["first"], result["second"]
        states = ", ".join(
            f"{stage} {second['stages'][stage]['state']}" for stage in second["stages"]
        )
        stage_seconds = sum(s["run_time_s"] for s in first["stages"].values())
        rows += [
            f"| Re-run of an identical run ({result['data']}, {result['epochs']} "
            f"epoch(s), running Prefect server): flow start to training start, s "
            f"(second run: {states}) | {first['before_training_s']:.1f} → "
            f"{second['before_training_s']:.1f} | | "
            f"**{result['saved_before_training_s']:.1f} s saved** |",
            f"| ↳ the four data stages' run time in the first run, s; whole run, "
            f"wall s (first → second) | {stage_seconds:.1f}; "
            f"{first['median_wall_s']:.1f} → {second['median_wall_s']:.1f} | | "
            f"{result['saved_wall_s']:+.1f} s |",
        ]
        if "unchanged" in result:
            rows.append(
                f"| ↳ a third, unchanged run (no --retrain: trains and registers "
                f"nothing), wall s | {result['unchanged_wall_s']:.1f} | | "
                f"{result['unchanged_wall_s'] - first['median_wall_s']:+.1f} s "
                "vs the first |"
            )
    return rows


def _median(values) -> float:
    return float(statistics.median(values))


def _load(runs: list[dict]) -> str:
    rps = _median(r["requests_per_s"] for r in runs)
    p50 = _median(r["p50_ms"] for r in runs)
    p99 = _median(r["p99_ms"] for r in runs)
    return f"{rps:,.0f} ({p50:.1f} / {p99:.1f})"


def _serving_rows(result: dict) -> list[str]:
    sides = result["sides"]
    after, before, plain = sides["after"], sides["before"], sides["mlflow_workers_2"]
    rows = []
    for level in ("c1", "c8"):
        concurrency = level[1:]
        ratio = _median(r["requests_per_s"] for r in after[level]) / _median(
            r["requests_per_s"] for r in before[level]
        )
        rows.append(
            f"| Serving, 1-image requests over loopback, {concurrency} concurrent "
            f"client(s): req/s (p50 / p99 ms) | {_load(after[level])} | "
            f"{_load(before[level])} | **{ratio:.1f}×** |"
        )
        rows.append(
            f"| ↳ {plain['label']}, {concurrency} client(s) | "
            f"{_load(plain[level])} | | |"
        )
    size = result["over_limit_bytes"] / 1e6
    cost = {
        name: (
            _median(r["seconds"] for r in sides[name]["over_limit"]),
            _median(r["server_cpu_s"] for r in sides[name]["over_limit"]),
            sides[name]["over_limit"][0]["status"],
        )
        for name in ("after", "before")
    }
    rows.append(
        f"| One 20,000-image request ({size:.0f} MB of JSON): s until the answer; "
        f"server CPU s (HTTP status) | {cost['after'][0]:.2f}; "
        f"{cost['after'][1]:.2f} ({cost['after'][2]}) | {cost['before'][0]:.1f}; "
        f"{cost['before'][1]:.1f} ({cost['before'][2]}) | "
        f"{cost['before'][1] / max(cost['after'][1], 0.01):,.0f}× less CPU |"
    )
    return rows + _follow_rows(result)


def _follow_rows(result: dict) -> list[str]:
    """The huge picture and the alias moves (``serve-model`` only)."""
    after = result["sides"]["after"]
    if not after.get("follow"):
        return []
    pictures = after["huge_picture"]
    rows = [
        f"| One {result['huge_picture_bytes'] / 1e3:.0f} KB PNG of 7000×7000 RGBA "
        f"pixels to /predict-image: s until the answer; server CPU s; largest rise "
        f"of a worker's peak RSS, MB (HTTP status) | "
        f"{_median(p['seconds'] for p in pictures):.2f}; "
        f"{_median(p['server_cpu_s'] for p in pictures):.2f}; "
        f"{_median(p['peak_rise_mb'] for p in pictures):.0f} "
        f"({pictures[0]['status']}) | | |"
    ]
    runs = after["follow"]
    for label, words in (("still", "alias still"), ("moved", "two alias moves")):
        rows.append(
            f"| Serving under 8 clients for 16 s, {words}: req/s (p50 / p99 ms); "
            f"errors | {_load([r[label] for r in runs])}; "
            f"{sum(r[label]['errors'] + r[label]['probe_errors'] for r in runs)} "
            "| | |"
        )
    delays = [d for r in runs for d in r["moved"]["to_new_version_s"]]
    shown = ", ".join("never" if d is None else f"{d:.1f}" for d in delays)
    rows.append(
        f"| ↳ s from a move to the first answer from the new version (watch "
        f"interval {runs[0]['moved']['watch_interval_s']:g} s) | {shown} | | |"
    )
    return rows


def _batch_rows(result: dict) -> list[str]:
    sizes = result["sizes"]
    rows = []
    for size, side in sizes.items():
        rows.append(
            f"| Batch predict (`mnist-pipeline predict`, .npz) of {int(size):,} "
            f"images: images/s; peak RSS MB | "
            f"{_median(side['images_per_s']):,.0f}; "
            f"{_median(side['peak_rss_mb']):,.0f} | | |"
        )
    small, large = (sizes[str(n)] for n in sorted(map(int, sizes)))
    ratio = _median(large["peak_rss_mb"]) / _median(small["peak_rss_mb"])
    rows.append(f"| ↳ peak RSS, largest input / smallest | | | **{ratio:.2f}×** |")
    return rows

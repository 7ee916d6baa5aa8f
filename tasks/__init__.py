"""Prefect tasks: each wraps one stage of ``mnist_pipeline`` with orchestration."""

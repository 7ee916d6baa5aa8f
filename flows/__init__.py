"""Prefect flows: recipes that chain the tasks in ``tasks/``."""

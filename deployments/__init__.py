"""Deployments of the flows: ``prefect.yaml`` for work pools, ``serve`` without one."""

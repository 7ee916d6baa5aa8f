# The project image: flow runs of a Docker or Kubernetes work pool and the Dask
# workers of a sweep run it (docs/production.md). Build from the project root.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/mnist-pipeline

COPY pyproject.toml requirements.lock README.md ./
COPY mnist_pipeline mnist_pipeline
COPY flows flows
COPY tasks tasks
COPY deployments deployments
COPY configs configs
RUN pip install -c requirements.lock .

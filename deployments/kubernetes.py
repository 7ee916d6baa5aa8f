"""The Kubernetes work pool's base job template: Prefect's, plus the work volume.

Flow runs keep their work folder (datasets, stage cache, checkpoints, models)
and Keras's MNIST cache on a persistent volume mounted at ``/mnt/mnist``, shared
by the nightly, the sweeps and their Dask workers. Prefect's default Kubernetes
job template has no volume variables, so the pool is created from this one::

    prefect work-pool create mnist-k8s --type kubernetes \\
        --base-job-template deployments/kubernetes-job-template.json

``python -m deployments.kubernetes`` rewrites that file from the installed
prefect-kubernetes (``tests/unit/test_production.py`` keeps it in step).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

TEMPLATE_FILE = Path(__file__).with_name("kubernetes-job-template.json")
VOLUME = "mnist-work"
#: Where every flow run and Dask worker sees the work volume.
MOUNT_PATH = "/mnt/mnist"
_VARIABLES = {
    "work_volume_claim": {
        "title": "Work volume claim",
        "description": (
            "PersistentVolumeClaim (ReadWriteMany) holding the work folder and "
            f"Keras's dataset cache, mounted at {MOUNT_PATH}."
        ),
        "type": "string",
        "default": "mnist-work",
    },
}


def job_template() -> dict:
    """Prefect's default Kubernetes base job template with the work volume."""
    from prefect_kubernetes.worker import KubernetesWorker

    template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    template["variables"]["properties"].update(_VARIABLES)
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    pod["volumes"] = [
        {
            "name": VOLUME,
            "persistentVolumeClaim": {"claimName": "{{ work_volume_claim }}"},
        }
    ]
    (container,) = pod["containers"]
    container["volumeMounts"] = [{"name": VOLUME, "mountPath": MOUNT_PATH}]
    return template


if __name__ == "__main__":
    TEMPLATE_FILE.write_text(json.dumps(job_template(), indent=2) + "\n")
    print(f"Wrote {TEMPLATE_FILE}")

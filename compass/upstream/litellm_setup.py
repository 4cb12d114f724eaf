"""LiteLLM imported once, lazily, and set up for a gateway.

Its own module so that both the LiteLLM client and the direct path (which asks LiteLLM how to
read an unusual model name) can load it without importing each other.
"""

from __future__ import annotations

import functools
import os
from typing import Any


@functools.cache
def configured_litellm() -> Any:
    """LiteLLM, imported once and set up for a gateway (no telemetry, callbacks or logging)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    litellm.drop_params = True  # a parameter one provider lacks must not fail the call
    litellm.turn_off_message_logging = True
    litellm.disable_streaming_logging = True
    litellm.callbacks = []
    litellm.success_callback = []
    litellm.failure_callback = []
    litellm._async_success_callback = []
    litellm._async_failure_callback = []
    return litellm

"""Provider clients: the interface and registry (``base``), LiteLLM, the direct path, breakers, demo."""

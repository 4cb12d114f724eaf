"""LLM Compass: an OpenAI-compatible gateway that routes each chat request to a just-right model.

Importing this package stays cheap: torch, faiss and litellm are imported lazily by the
implementations that need them.
"""

__version__ = "0.1.0"

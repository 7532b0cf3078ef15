"""soulstone: local LLM engines behind one secure OpenAI-compatible gateway."""

__version__ = "0.1.0"

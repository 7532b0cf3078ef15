"""The gateway (SPEC C4): one OpenAI-compatible door to every engine."""

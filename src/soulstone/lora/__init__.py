"""LoRA adapters (SPEC C7): cold in ZODB, warm on disk, hot in the engine."""

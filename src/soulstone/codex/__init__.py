"""The codex (SPEC C1): soulstone declarations, their validation and conflict graph."""

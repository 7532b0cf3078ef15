"""The tool-calling contract (SPEC C6): pinned schemas, validated calls."""

"""Observability (SPEC C9): metrics and logs."""

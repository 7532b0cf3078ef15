"""Councils (SPEC C8): many personas asked at once, routed, aggregated, vetoed."""

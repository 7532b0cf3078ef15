"""The supervisor (SPEC C3): manifest soulstones, swapping out what conflicts."""

"""The forge (SPEC C2): soulstones compiled into Podman Quadlet and systemd units."""

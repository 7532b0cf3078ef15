"""Guard rails (SPEC C5): who may call, how much, and what the gateway keeps to itself."""

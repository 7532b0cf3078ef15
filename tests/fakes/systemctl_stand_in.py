"""A stand-in for `systemctl --user` (systemd cannot run here): records every call.

Keeps the set of active units in STATE.json beside the call log CALLS; `start`
honours the Conflicts= of the forged unit by stopping conflicting services,
as systemd would.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path

here = Path(os.environ["SYSTEMCTL_STAND_IN_DIR"])
calls, state_file = here / "calls", here / "state.json"
lock = (here / "lock").open("w")
fcntl.flock(lock, fcntl.LOCK_EX)  # callers run it concurrently
with calls.open("a") as log:
    log.write(" ".join(sys.argv[1:]) + "\n")
active: list[str] = json.loads(state_file.read_text()) if state_file.exists() else []
args = [a for a in sys.argv[1:] if not a.startswith("-")]
verb, units = args[0], args[1:]
if verb == "start":
    for unit in units:
        conflicts = json.loads(os.environ.get("SYSTEMCTL_CONFLICTS", "{}")).get(unit, [])
        active = [a for a in active if a not in conflicts]
        if unit not in active:
            active.append(unit)
elif verb == "stop":
    active = [a for a in active if a not in units]
elif verb == "show":
    state = "active" if units[0] in active else "inactive"
    pid = 4242 if state == "active" else 0
    print(f"ActiveState={state}\nMainPID={pid}\nExecMainStatus=0\nStateChangeTimestamp=@1700000000")
if verb in ("start", "stop"):
    state_file.write_text(json.dumps(active))

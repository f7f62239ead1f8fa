"""Worker identities: ``host:pid:random``, so a worker can tell that another on its own host
has died (its process is gone) and take over its requests without waiting for the lease."""

from __future__ import annotations

import os
import secrets
import socket


def new_owner_id() -> str:
    """A fresh identity for this worker process."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def is_dead_here(owner: str) -> bool:
    """True if ``owner`` names a process on this host that no longer exists. Unknown
    formats, other hosts and live (or unknowable) processes are not dead: their leases
    simply run out."""
    host, _, rest = owner.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False

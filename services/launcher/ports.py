"""Is every fixed port of the fleet free? Checked before anything starts, so that a taken port
stops the launcher with a message naming it (and how to choose others), not a fleet half up."""

from __future__ import annotations

import errno
import socket

from services.launcher.topology import MIN_PORT_BASE, PORT_OFFSETS, PORT_SPAN

# Where `make run PORT_BASE=...` suggestions start looking (above the default ports' 50000-50002).
SUGGESTED_BASES = range(51000, 60000, 1000)


def is_taken(port: int, host: str = "127.0.0.1") -> bool:
    """True when a listening socket on `host:port` cannot be bound (another process holds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers do: a port only in TIME_WAIT after a stopped fleet is not "taken".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def taken_ports(planned: list[tuple[str, int]], host: str = "127.0.0.1") -> list[tuple[str, int]]:
    """The (what, port) of `planned` that are taken on `host`."""
    return [(what, port) for what, port in planned if is_taken(port, host)]


def free_base(host: str = "127.0.0.1") -> int | None:
    """A port base whose whole block of ports is free now (a suggestion; None if none found)."""
    offsets = sorted({o for pair in PORT_OFFSETS.values() for o in pair if o is not None})
    for base in SUGGESTED_BASES:
        if base >= MIN_PORT_BASE and base + PORT_SPAN <= 65536 and \
                not any(is_taken(base + offset, host) for offset in offsets):
            return base
    return None


def taken_message(taken: list[tuple[str, int]], host: str = "127.0.0.1") -> str:
    """What to tell the person: which ports are taken, and the two ways to choose others."""
    listed = ", ".join(f"{port} ({what})" for what, port in taken)
    base = free_base(host) or SUGGESTED_BASES[0]
    return (f"port{'s' if len(taken) > 1 else ''} {listed} {'are' if len(taken) > 1 else 'is'} taken on "
            f"{host}, so nothing was started. Choose other ports: `make run PORT_BASE={base}` "
            f"(`--port-base {base}`: gRPC at {base}-{base + 2}, metrics at {base + 10}-{base + 16}, "
            f"dashboard at {base + 20}), or `make run PORTS=free` (`--free-ports`: every service "
            f"picks a free port; the dashboard's address is printed)")

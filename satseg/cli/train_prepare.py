"""``satseg train prepare``."""

from __future__ import annotations

HELP = "satseg train prepare (not available yet in this build)."


def command() -> None:
    from satseg.errors import SatsegError

    raise SatsegError("satseg train prepare is not available yet in this build")

"""``satseg train evaluate``."""

from __future__ import annotations

HELP = "satseg train evaluate (not available yet in this build)."


def command() -> None:
    from satseg.errors import SatsegError

    raise SatsegError("satseg train evaluate is not available yet in this build")

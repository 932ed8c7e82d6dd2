"""``satseg train fit``."""

from __future__ import annotations

HELP = "satseg train fit (not available yet in this build)."


def command() -> None:
    from satseg.errors import SatsegError

    raise SatsegError("satseg train fit is not available yet in this build")

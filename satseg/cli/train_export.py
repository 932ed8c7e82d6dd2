"""``satseg train export``."""

from __future__ import annotations

HELP = "satseg train export (not available yet in this build)."


def command() -> None:
    from satseg.errors import SatsegError

    raise SatsegError("satseg train export is not available yet in this build")

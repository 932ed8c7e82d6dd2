"""``satseg train text``."""

from __future__ import annotations

HELP = "satseg train text (not available yet in this build)."


def command() -> None:
    from satseg.errors import SatsegError

    raise SatsegError("satseg train text is not available yet in this build")

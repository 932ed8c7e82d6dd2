"""A read-ahead reader whose worker process dies, as one killed for memory does (tests/test_read_ahead.py)."""

from __future__ import annotations

import os

from satseg.inference.read_ahead import ReadJob, read_case


def read_or_die(job: ReadJob):
    """:func:`read_case`, except that a scan whose file name starts with ``die`` ends the worker process at once."""
    if job.path.name.startswith("die"):
        os._exit(137)
    return read_case(job)

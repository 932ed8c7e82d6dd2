"""The read-ahead pool outlives a worker that dies (killed for memory, a crashing decoder): that case fails with a
one-line reason, the cases queued behind it are read again by a new worker, and the cohort goes on.

The worker really dies (``os._exit`` in the spawned process, as a kill leaves it): ``crashing_reader.read_or_die``
reads scans normally and ends its process on a scan whose file name starts with ``die``.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from crashing_reader import read_or_die
from satseg.inference.options import PromptOptions, ScanOptions
from satseg.inference.read_ahead import ReadAhead, ReadJob, read_case


def job(path) -> ReadJob:
    return ReadJob(path=path, prompts=("liver",), scan_options=ScanOptions(), prompt_options=PromptOptions(),
                   spacing=(1.0, 1.0, 3.0))


@pytest.fixture(scope="module")
def scans(small_scan, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    names = ["a", "b", "die_c", "d", "e", "die_f", "g"]
    for name in names:
        shutil.copy(small_scan, folder / f"{name}.nii.gz")
    return [folder / f"{name}.nii.gz" for name in names]


@pytest.mark.parametrize("workers, ahead, model_s", [(1, 1, 0.0), (1, 3, 0.0), (1, 2, 1.5), (2, 3, 0.0)])
def test_a_dead_worker_fails_its_case_only_and_the_others_are_read_as_in_this_process(scans, workers, ahead,
                                                                                       model_s):
    # model_s: time between taking an answer and topping the queue up (the model at work), long enough for the
    # worker to die meanwhile, so the pool is found broken by submit(), not by next(). With two workers the oldest
    # job is not necessarily the one whose worker died: no innocent case may fail.
    answers = {}
    with ReadAhead(workers=workers, ahead=ahead, reader=read_or_die) as reads:
        pending = list(scans)
        while pending or len(reads):
            while pending and not reads.full():
                path = pending.pop(0)
                reads.submit(path.name, job(path))
                if not pending:
                    reads.finish()
            key, answer = reads.next()
            answers[key] = answer
            time.sleep(model_s)
    assert list(answers) == [p.name for p in scans]  # in order, each once
    for path in scans:
        answer = answers[path.name]
        if path.name.startswith("die"):
            assert answer.case is None and "worker process reading it died" in answer.error
            assert "\n" not in answer.error
            continue
        assert answer.error is None, (path.name, answer.error)
        here = read_case(job(path)).case
        np.testing.assert_array_equal(answer.case.model_grid[0], here.model_grid[0])

"""`torchrun --nproc_per_node=2` on CPU (gloo): DDP keeps both ranks' weights identical."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

from test_train_fit import FAST, TINY, build_example_cache

DRIVER = textwrap.dedent('''
    """One rank: train a few steps with satseg's Trainer, then write a hash of its weights."""
    import hashlib, json, os, sys
    from pathlib import Path

    import torch

    from satseg.training import distributed
    from satseg.training.fit import FitOptions, Trainer, load_config

    def digest(module):
        h = hashlib.sha256()
        for key, tensor in sorted(module.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
        return h.hexdigest()

    config_path, cache, out, tokenizer, steps, *overrides = sys.argv[1:]
    torch.set_num_threads(1)
    options = FitOptions(cache=Path(cache), out=Path(out), tokenizer=Path(tokenizer), stop_at=int(steps),
                         device="cpu")
    trainer = Trainer(load_config(config_path, overrides), options)
    before = digest(trainer.module)
    result = trainer.run()
    rank = trainer.dist.rank
    report = {"rank": rank, "world_size": trainer.dist.world_size, "before": before,
              "after": digest(trainer.module), "first_crop": list(trainer.sampler.draw(0).start),
              "step": result.step}
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    distributed.cleanup()
''')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_cpu_ranks_under_torchrun_end_with_identical_weights(reference_files, mpnet_dir, tmp_path):
    cache = build_example_cache(reference_files, tmp_path / "cache")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    run = tmp_path / "run"
    overrides = [value for flag, value in zip(FAST[::2], FAST[1::2])]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(driver),
               str(TINY), str(cache), str(run), str(mpnet_dir), "3", *overrides,
               "batch.accumulate=2"]  # also exercises no_sync on the first micro-batch
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2] and [r["step"] for r in reports] == [3, 3]
    assert reports[0]["before"] == reports[1]["before"]
    assert reports[0]["after"] == reports[1]["after"]
    assert reports[0]["after"] != reports[0]["before"]  # they did train
    assert reports[0]["first_crop"] != reports[1]["first_crop"]  # on different patches
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]  # rank 0 alone writes the metrics
    assert (run / "checkpoints" / "latest.pt").is_file()


def test_a_single_plain_process_needs_no_process_group(monkeypatch):
    from satseg.training import distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = distributed.init_from_env("cpu")
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (0, 1, True, False)
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]

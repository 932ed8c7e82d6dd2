"""``satseg info``: versions, devices, cache folders and the models present, as text and as JSON."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata


import satseg
from satseg.cli.main import main


def info_json(capsys) -> dict:
    assert main(["info", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_info_json_reports_the_installed_versions(isolated_home, capsys):
    report = info_json(capsys)

    versions = report["versions"]
    assert versions["satseg"] == satseg.__version__ == metadata.version("satseg-medical")  # the distribution's name
    assert versions["python"] == platform.python_version()
    for package in ("torch", "transformers", "huggingface_hub"):
        assert versions[package] == metadata.version(package)


def test_info_json_lists_the_devices_torch_sees(isolated_home, capsys):
    import torch

    devices = info_json(capsys)["devices"]

    assert devices[0]["type"] == "cpu"
    cuda = [d for d in devices if d["type"] == "cuda"]
    assert len(cuda) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert all(d["memory_gib"] > 0 for d in cuda)


def test_info_json_reports_the_cache_folders_from_the_environment(isolated_home, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    report = info_json(capsys)

    assert report["folders"] == {"hf_cache": str(isolated_home / "hf" / "hub"), "satseg_home": str(isolated_home / "satseg")}
    assert report["hub"]["offline"] is True


def test_info_json_shows_which_models_are_present(isolated_home, capsys, mpnet_dir):
    from satseg import weights
    from satseg.model import build_sat, build_text_encoder
    from satseg.model.checkpoint import write_official_checkpoint

    seg = write_official_checkpoint(build_sat("tiny"), isolated_home / "tiny.pth")
    text = write_official_checkpoint(build_text_encoder("tiny"), isolated_home / "tiny_text.pth", text=True)
    weights.import_model("local-tiny", "tiny", seg, text, mpnet_dir)

    models = {m["name"]: m for m in info_json(capsys)["models"]}

    assert models["sat-nano"]["downloaded"] == "no" and models["sat-pro"]["downloaded"] == "no"
    assert models["local-tiny"] == {"name": "local-tiny", "variant": "tiny", "origin": "imported",
                                    "downloaded": "yes", "verified": "yes"}


def test_info_text_names_versions_folders_and_models(isolated_home, capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out

    assert f"satseg          {satseg.__version__}" in out
    assert str(isolated_home / "satseg") in out and str(isolated_home / "hf" / "hub") in out
    assert "sat-nano" in out and "sat-pro" in out


def test_info_loads_no_model_code(isolated_home):
    # `satseg info` must stay fast: it reports on files, it does not build or load a network. A fresh
    # interpreter, because other tests in this process have imported the model code already.
    probe = ("import sys; from satseg.cli.main import main; code = main(['info', '--json']); "
             "print([m for m in sys.modules if m.startswith(('satseg.model', 'transformers'))], file=sys.stderr); "
             "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["versions"]["satseg"] == satseg.__version__
    assert done.stderr.strip().splitlines()[-1] == "[]"

"""``satseg info``: versions, devices, cache folders and the models present.

It loads no model and hashes no file (verification states come from remembered hashes), so it stays fast.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata

import typer

HELP = "Show versions, devices, the cache folder and which models are present (--json for scripts)."

_PACKAGES = ("satseg", "torch", "transformers", "huggingface_hub", "numpy", "SimpleITK", "nibabel")


def _version(package: str) -> str | None:
    if package == "satseg":  # this package's own version (its distribution is called satseg-medical)
        from satseg import __version__

        return __version__
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _devices() -> list[dict]:
    devices = [{"type": "cpu", "name": platform.processor() or platform.machine(), "cores": os.cpu_count()}]
    try:
        import torch
    except ImportError:
        return devices
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append({"type": "cuda", "index": index, "name": props.name,
                            "memory_gib": round(props.total_memory / 2**30, 1),
                            "capability": f"{props.major}.{props.minor}"})
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append({"type": "mps", "name": "Apple Metal"})
    return devices


def _models() -> list[dict]:
    from satseg import weights
    from satseg.cli.weights import summarize

    models = []
    for entry in weights.list_models():
        downloaded, verified = summarize(weights.verify(entry.name, rehash=False))
        models.append({"name": entry.name, "variant": entry.variant, "origin": entry.origin,
                       "downloaded": downloaded, "verified": verified})
    return models


def collect() -> dict:
    """Everything ``satseg info`` reports, as plain data."""
    from satseg import weights

    return {
        "versions": {"python": platform.python_version(), **{p: _version(p) for p in _PACKAGES}},
        "platform": platform.platform(),
        "executable": sys.executable,
        "devices": _devices(),
        "folders": {"hf_cache": str(weights.hf_cache_dir()), "satseg_home": str(weights.satseg_home())},
        "hub": {"endpoint": os.environ.get("HF_ENDPOINT") or "https://huggingface.co",
                "offline": weights.hf_offline()},
        "models": _models(),
    }


def info(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    report = collect()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    lines = ["versions"]
    lines += [f"  {name:<16}{version or 'not installed'}" for name, version in report["versions"].items()]
    lines += [f"platform          {report['platform']}", "devices"]
    for device in report["devices"]:
        if device["type"] == "cuda":
            lines.append(f"  cuda:{device['index']:<11}{device['name']}, {device['memory_gib']} GiB")
        elif device["type"] == "cpu":
            lines.append(f"  cpu             {device['cores']} cores")
        else:
            lines.append(f"  {device['type']:<16}{device['name']}")
    lines += ["folders"] + [f"  {key:<16}{value}" for key, value in report["folders"].items()]
    lines.append(f"hub               {report['hub']['endpoint']}" + (" (offline)" if report["hub"]["offline"] else ""))
    lines.append("models")
    for model in report["models"]:
        lines.append(f"  {model['name']:<16}{model['variant']:<6}downloaded: {model['downloaded']:<8}"
                     f"verified: {model['verified']}")
    typer.echo("\n".join(lines))

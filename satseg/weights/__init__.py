"""Named model weights: the manifest, hub download into the Hugging Face cache, sha256 checks, local import.

Where a model's files come from:

* ``satseg/weights_manifest.json`` (shipped with the package) and the optional ``$SATSEG_MANIFEST`` name the
  published models: hub repo, revision, file paths, sizes and sha256, architecture variant, paired text
  checkpoint, tokenizer (:mod:`satseg.weights.manifest`).
* ``$SATSEG_HOME/models.json`` is the local registry written by :func:`import_model` and
  :func:`import_satseg_weights`: files already on disk, referenced by absolute path and sha256
  (:mod:`satseg.weights.registry`).

Hub files are downloaded into the Hugging Face cache (:mod:`satseg.weights.hub`); before first use every file
is checked against its recorded size and sha256, a mismatch is deleted from the HF cache and refused, and
computed hashes are remembered under a threat model spelled out in :mod:`satseg.weights.verification`.
:func:`resolve_model` (:mod:`satseg.weights.resolve`) ties these together: a name in, verified local paths out.
"""

from satseg.errors import InputError, WeightsError  # raised here; importable from here as before
from satseg.weights.hub import hf_cache_dir, hf_offline
from satseg.weights.manifest import (FILE_ROLES, FORMATS, MANIFEST_PATH, SCHEMA_VERSION, VARIANTS, ModelEntry,
                                     TokenizerSource, UnknownModelError, WeightFile, get_model, list_models,
                                     parse_manifest, satseg_home)
from satseg.weights.registry import (check_new_model_name, check_tokenizer_dir, import_model,
                                     import_satseg_weights, satseg_file_config, validate_satseg_file)
from satseg.weights.resolve import ModelFiles, resolve_model
from satseg.weights.verification import (FileCheck, cached_sha256, file_identity, file_sha256, sha256_file,
                                         verify)

__all__ = [
    "FILE_ROLES", "FORMATS", "MANIFEST_PATH", "SCHEMA_VERSION", "VARIANTS",
    "FileCheck", "InputError", "ModelEntry", "ModelFiles", "TokenizerSource", "UnknownModelError", "WeightFile",
    "WeightsError",
    "cached_sha256", "check_new_model_name", "check_tokenizer_dir", "file_identity", "file_sha256", "get_model",
    "hf_cache_dir", "hf_offline", "import_model", "import_satseg_weights", "list_models", "parse_manifest",
    "resolve_model", "satseg_file_config", "satseg_home", "sha256_file", "validate_satseg_file", "verify",
]

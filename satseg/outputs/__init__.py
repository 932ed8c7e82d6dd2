"""What a run leaves on disk: masks, the multilabel image and its legend, statistics, preview, report.

Every writer is atomic (temporary file beside the target, then a rename): a failure leaves the earlier
file, if any, untouched and no partial file behind.
"""

from satseg.outputs.masks import write_mask, write_probability
from satseg.outputs.multilabel import legend_sidecar_path, read_legend, resolve_labels, write_multilabel
from satseg.outputs.names import output_names, snake_case
from satseg.outputs.preview import write_preview
from satseg.outputs.report import to_jsonable, write_json, write_report
from satseg.outputs.statistics import compute_statistics, write_statistics

__all__ = [
    "compute_statistics",
    "legend_sidecar_path",
    "output_names",
    "read_legend",
    "resolve_labels",
    "snake_case",
    "to_jsonable",
    "write_json",
    "write_mask",
    "write_multilabel",
    "write_preview",
    "write_probability",
    "write_report",
    "write_statistics",
]

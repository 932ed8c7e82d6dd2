"""How fast prompts resolve (issue 15: 1,000 prompts ≤ 1 s after the vocabulary is loaded; ``satseg terms
--explain X`` ≤ 0.3 s wall).

    python benchmarks/resolve_speed.py [--prompts 1000] [--no-cli]

Builds 1,000 distinct prompts deterministically from the vocabulary in six styles (trained terms as written;
descriptive sentences around them; TotalSegmentator word order; one-letter misspellings; findings and prompts
that are refused; named groups), loads the vocabulary, then times one pass over them in a fresh process (nothing
cached but the vocabulary). Prints the load time, the total and per-style times, and the wall time of ``satseg
terms --explain`` for four prompts. CPU only; no torch.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time

TEMPLATES = (
    "segment the {t} on CT", "{t} in contrast-enhanced abdominal CT", "delineation of the {t}",
    "please contour the {t} on this scan", "mask of the {t}", "the {t} visualized in MR images",
    "boundaries of the {t}", "segmentation target: {t}",
)
REFUSED = ("banana", "kidney stone", "thoracic aorta", "liver fat fraction", "segment everything", "left spleen",
           "thyroid nodule", "bone metastases", "hepatic vein", "liver volume")
GROUPS = ("left heart", "heart chambers on cardiac CT", "lobes of the right lung", "left gluteal muscles",
          "abdominal veins", "liver segments", "liver lobes", "left cerebrum", "inner ears", "right internal jugular")
FINDINGS = ("renal mass", "hepatic metastases", "focal liver lesion", "pancreatic adenocarcinoma",
            "lung nodules", "brain metastases", "myocardial lesions", "colon carcinoma", "tumour lesions",
            "cyst of the right kidney")


def prompts(n: int) -> list[tuple[str, str, str | None]]:
    """(style, prompt, modality) × n, distinct, the same on every run."""
    from satseg.vocabulary.catalog import load

    vocabulary = load()
    rng = random.Random(15)
    names = sorted(vocabulary.terms)
    ts_names = sorted(vocabulary.totalseg)
    out: list[tuple[str, str, str | None]] = []
    seen: set[str] = set()

    def add(style: str, prompt: str, modality: str | None) -> None:
        if prompt not in seen:
            seen.add(prompt)
            out.append((style, prompt, modality))

    for name in names:
        add("exact", name, vocabulary.terms[name].modalities[0])
    for name in rng.sample(names, len(names)):
        template = rng.choice(TEMPLATES)
        modality = vocabulary.terms[name].modalities[0]
        if ("CT" in template and modality != "ct") or ("MR" in template and modality != "mri"):
            template = "delineation of the {t}"
        add("descriptive", template.format(t=name), modality)
    for ts_name in ts_names:
        add("word-order", ts_name.replace("_", " "), None)
    for name in rng.sample(names, len(names)):
        words = name.split()
        longest = max(range(len(words)), key=lambda i: len(words[i]))
        word = words[longest]
        if len(word) >= 5:
            i = rng.randrange(1, len(word) - 1)
            words[longest] = word[:i] + word[i + 1:]
            add("misspelling", " ".join(words), None)
    for prompt in FINDINGS + REFUSED:
        add("finding/refused", prompt, "ct")
    for prompt in GROUPS:
        add("group", prompt, "ct")
    rng.shuffle(out)
    while len(out) < n:  # more than enough in practice; repeat with a suffix if a vocabulary is small
        style, prompt, modality = out[len(out) % len(seen)]
        add(style, f"{prompt} ", modality)
    return out[:n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--no-cli", action="store_true", help="skip the `satseg terms --explain` wall times")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    from satseg.errors import PromptError
    from satseg.vocabulary import resolve
    from satseg.vocabulary.catalog import load

    load()
    loaded = time.perf_counter() - start
    batch = prompts(args.prompts)
    per_style: dict[str, list[float]] = {}
    refused = 0
    start = time.perf_counter()
    for style, prompt, modality in batch:
        t0 = time.perf_counter()
        try:
            resolve(prompt, modality)
        except PromptError:
            refused += 1
        per_style.setdefault(style, []).append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    print(f"vocabulary load: {loaded * 1000:.0f} ms")
    print(f"{len(batch)} prompts: {total:.3f} s ({refused} refused)  [target ≤ 1 s]")
    for style, times in sorted(per_style.items()):
        print(f"  {style:16} {len(times):4d} prompts  {sum(times) * 1000:7.1f} ms  "
              f"(mean {sum(times) / len(times) * 1000:.2f} ms, max {max(times) * 1000:.1f} ms)")
    if not args.no_cli:
        for prompt in ("Pancreas in contrast-enhanced abdominal CT", "renal masses", "splen", "left gluteal muscels"):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "satseg.cli.main", "terms", "--explain", prompt, "-m", "ct"],
                           capture_output=True, check=False)
            print(f"satseg terms --explain {prompt!r}: {time.perf_counter() - t0:.2f} s wall  [target ≤ 0.3 s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``edgebind labels``: embed text labels once with the bundle's text tower and save a label bank."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "embed text labels with the bundle's text tower into a label bank (zero-shot on devices without the text tower)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("labels", nargs="*", help="labels, e.g. 'a dog barking' 'a car engine'")
    parser.add_argument("--file", help="a text file with one label per line ('#' comments)")
    parser.add_argument("--bundle", default="export/imagebind_tiny", help="bundle folder with a text tower")
    parser.add_argument("--out", help="output file (default: <bundle>/labels.json, recorded in the manifest)")
    parser.add_argument("--template", default="{}", help="prompt template, e.g. 'a photo of {}.'")
    parser.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..labels import embed_labels, read_label_file, register_in_manifest

    labels = list(args.labels) + (read_label_file(args.file) if args.file else [])
    if not labels:
        raise ConfigError("no labels given: pass them as arguments or with --file")
    out = Path(args.out) if args.out else Path(args.bundle) / "labels.json"
    bank = embed_labels(args.bundle, labels, template=args.template)
    bank.save(out)
    register_in_manifest(args.bundle, out, bank)
    if args.json:
        print(json.dumps({"path": str(out), "n_labels": len(bank.labels), "embed_dim": bank.embed_dim,
                          "logit_scale": bank.logit_scale, "model": bank.model}))
    else:
        print(f"{out}: {len(bank.labels)} labels, {bank.embed_dim}-d, logit scale {bank.logit_scale:.2f}")
    return 0

"""``edgebind download``: fetch the ImageBind checkpoint into the cache (or to ``--dest``)."""

from __future__ import annotations

import argparse
import json

HELP = "download the imagebind_huge checkpoint (resumable, verified); prints its path"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="where to download from (default: Meta's official imagebind_huge.pth)")
    parser.add_argument("--dest", default=None, help="file to write (default: $EDGEBIND_CACHE/checkpoints/imagebind_huge.pth)")
    parser.add_argument("--name", default="imagebind_huge", help="checkpoint name, used for the default --dest")
    parser.add_argument("--sha256", default=None, metavar="HEX", help="expected sha256 of the file; a mismatch is an error")
    parser.add_argument("--force", action="store_true", help="download again even if the file already exists")
    parser.add_argument("--json", action="store_true", help="print a JSON object with path, size and sha256")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    # Imported here so that `edgebind --help` stays fast.
    from .._io import sha256_file
    from ..models.download import OFFICIAL_URL, fetch_checkpoint

    path = fetch_checkpoint(
        args.name,
        dest=args.dest,
        url=args.url or OFFICIAL_URL,
        sha256=args.sha256,
        force=args.force,
        progress=not args.no_progress,
    )
    if args.json:
        digest = args.sha256.lower() if args.sha256 else sha256_file(path)
        print(json.dumps({"path": str(path), "size": path.stat().st_size, "sha256": digest}))
    else:
        print(path)
    return 0

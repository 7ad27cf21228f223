"""Download the Penn-Fudan pedestrian dataset (170 photos, 345 pedestrians with masks, ~51 MB).

    python data_scripts/download_pennfudan.py            # -> data/PennFudanPed
    python data_scripts/download_pennfudan.py --dest D   # -> D

The dataset is optional: every lesson runs on synthetic data without it. Run this once, with a
network; a second run checks the folder and does nothing. An interrupted download resumes where
it stopped. The zip is checked (MD5) before it is extracted and kept next to the folder.

No network on this machine? Download the zip with a browser from the URL below, save it as
``data/PennFudanPed.zip`` (beside the destination folder) and run this script: it checks and
extracts the file without going online.

Exit status: 0 ready, 1 failed (the message says what to do), 2 wrong command-line arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from _download import (
    CorruptArchiveError,
    DownloadError,
    Opener,
    download,
    extract_zip,
    is_extracted,
    move_aside,
)

URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"
# No SHA-256 of this zip is published (not on the dataset's page, nor in any loader we could
# find). The MD5 below is the one the Avalanche library checks when it downloads the dataset:
# github.com/ContinualAI/avalanche, avalanche/benchmarks/datasets/penn_fudan/penn_fudan_data.py
# (commit e0a4029181f41e2c2381448ad153f9b825f9aaf7). Once you have a verified copy, its SHA-256
# is recorded in PennFudanPed/.download.json; "sha256:<hex>" here would pin that instead.
KNOWN_HASH = "md5:5aaa3dee905cef73325923716e38fc6d"
TOP_LEVEL = "PennFudanPed"  # the zip's top folder
OPTIONAL = "Penn-Fudan is optional: every lesson runs on synthetic data without it."


def default_dest() -> Path:
    """``$COURSE_DATA_DIR/PennFudanPed`` if that variable is set, else ``<repo>/data/...``."""
    data_dir = os.environ.get("COURSE_DATA_DIR")
    base = Path(data_dir) if data_dir else Path(__file__).resolve().parents[1] / "data"
    return base / TOP_LEVEL


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="download_pennfudan.py",
        description="Download and extract the Penn-Fudan pedestrian dataset (optional: every "
                    "lesson runs on synthetic data without it).",
        epilog="Exit status: 0 ready, 1 failed, 2 bad arguments.")
    parser.add_argument("--dest", type=Path, metavar="DIR",
                        help="the dataset folder to create (default: $COURSE_DATA_DIR/"
                             "PennFudanPed, else data/PennFudanPed in the repository); the zip "
                             "is kept beside it")
    parser.add_argument("--url", default=URL, help=f"where to fetch the zip (default: {URL})")
    parser.add_argument("--no-verify", action="store_true",
                        help="accept the zip even if its checksum differs from the expected one")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if urlsplit(args.url).scheme not in ("http", "https"):
        parser.error(f"--url must be an http:// or https:// address, got {args.url!r}")
    return args


def fail(err: DownloadError, manual_download: str = "") -> int:
    """Print what failed, what to do, and that the dataset is optional; return exit status 1."""
    lines = [f"error: {err}"]
    for paragraph in (err.hint, manual_download, OPTIONAL):
        if paragraph:
            lines.append(textwrap.fill(paragraph, width=96, initial_indent="  ",
                                       subsequent_indent="  ", break_long_words=False,
                                       break_on_hyphens=False))
    print("\n".join(lines), file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None, opener: Opener | None = None) -> int:
    """Run the script; ``opener`` replaces ``urllib.request.urlopen`` (for tests)."""
    args = parse_args(argv)
    dest = (args.dest or default_dest()).expanduser().absolute()
    archive = dest.parent / f"{TOP_LEVEL}.zip"
    known_hash = None if args.no_verify else KNOWN_HASH

    if is_extracted(dest, known_hash):
        print(f"Penn-Fudan is already in {dest}; nothing to do.")
        return 0
    manual = (f"Or download {args.url} with a browser, save it as {archive} and run this "
              "script again: it checks and extracts that file.")
    try:
        download(args.url, archive, known_hash, opener=opener, progress=not args.quiet)
    except DownloadError as err:
        return fail(err, manual)
    except KeyboardInterrupt:
        print("\ninterrupted: run this script again to resume the download.", file=sys.stderr)
        return 130

    try:
        extract_zip(archive, dest, TOP_LEVEL, info={"url": args.url})
    except CorruptArchiveError as err:
        bad = move_aside(archive)
        err.hint = f"The file was moved to {bad}. Run this script again to download it afresh."
        return fail(err)
    except DownloadError as err:
        return fail(err)

    images = len(list((dest / "PNGImages").glob("*.png")))
    masks = len(list((dest / "PedMasks").glob("*.png")))
    checked = "checksum not checked: --no-verify" if known_hash is None else "MD5 checked"
    print(f"Penn-Fudan is ready in {dest}: {images} images, {masks} masks ({checked}).\n"
          f"The zip is kept as {archive}; you may delete it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

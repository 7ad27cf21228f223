"""Fetch the JavaScript and CSS the slide decks load (reveal.js, MathJax, ...) from npm, once.

    python data_scripts/fetch_slide_vendor.py            # -> build/vendor/<package>-<version>/
    python data_scripts/fetch_slide_vendor.py --cache D  # -> D/<package>-<version>/

``make slides`` runs this before building the decks. The packages, their exact versions, the
SHA-256 of each tarball and the files kept are the table ``VENDOR`` in ``course_lib/slides.py``.
Each tarball is downloaded from the npm registry into ``<cache>/tarballs/`` (an interrupted
download resumes), checked, and the files the decks need are extracted next to it (~5 MB of the
~30 MB downloaded). A second run checks the cache and does nothing.

No network on this machine? On one that has it, run ``npm pack <name>@<version>`` for each package
of the table (or download the URLs this script prints), copy the ``.tgz`` files into
``build/vendor/tarballs/`` and run this script: it checks and extracts them without going online.

Exit status: 0 ready, 1 failed (the message says what to do), 2 wrong command-line arguments.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from _download import DownloadError, Opener, download

from course_lib.slides import VENDOR, SlidesError, default_cache, extract_package, is_vendored


def fail(message: str, hint: str = "") -> int:
    """Print what failed and what to do; return exit status 1."""
    lines = [f"error: {message}"]
    if hint:
        lines.append(textwrap.fill(hint, width=96, initial_indent="  ", subsequent_indent="  ",
                                   break_long_words=False, break_on_hyphens=False))
    print("\n".join(lines), file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None, opener: Opener | None = None) -> int:
    """Run the script; ``opener`` replaces ``urllib.request.urlopen`` (for tests)."""
    parser = argparse.ArgumentParser(
        prog="fetch_slide_vendor.py",
        description="Download the slide decks' JavaScript and CSS from the npm registry into a "
                    "checked, versioned cache.",
        epilog="Exit status: 0 ready, 1 failed, 2 bad arguments.")
    parser.add_argument("--cache", type=Path, metavar="DIR",
                        help="the cache folder (default: $COURSE_VENDOR_DIR, else build/vendor "
                             "in the repository)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    cache = (args.cache or default_cache()).expanduser().absolute()

    todo = [package for package in VENDOR if not is_vendored(package, cache)]
    if not todo:
        print(f"The slides' assets are already in {cache}; nothing to do.")
        return 0
    for package in todo:
        tarball = cache / "tarballs" / package.tarball
        try:
            download(package.url, tarball, f"sha256:{package.sha256}", opener=opener,
                     progress=not args.quiet)
        except DownloadError as err:
            manual = (f"Without a network here: on another machine run `npm pack "
                      f"{package.name}@{package.version}` (or download {package.url}), copy "
                      f"{package.tarball} into {tarball.parent}/ and run this script again.")
            return fail(str(err), " ".join(filter(None, [err.hint, manual])))
        except KeyboardInterrupt:
            print("\ninterrupted: run this script again to resume.", file=sys.stderr)
            return 130
        try:
            folder = extract_package(package, tarball, cache)
        except SlidesError as err:
            return fail(str(err), err.hint)
        print(f"{package.name}@{package.version}: checked (SHA-256) and extracted to {folder}")
    print(f"The slides' assets are ready in {cache}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

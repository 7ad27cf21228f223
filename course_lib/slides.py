"""Slide decks for instructors: reveal.js HTML built from the executed solution notebooks.

``solutions/NN_topic.ipynb`` is stored executed, with every output and figure and the state of
its widgets (``metadata.widgets``), and each cell carries its slide type
(``metadata.slideshow.slide_type``: ``slide``, ``subslide``, ``fragment``, ``-``, ``skip`` or
``notes``). ``course-slides`` converts each of them with nbconvert's reveal.js exporter into
``slides/NN_topic.slides.html``, a 1280 x 720 page that reveal.js scales to the screen (a slide
taller than that scrolls); the notebooks are not re-run, and the slide types are used as they
are (``notes`` cells go to the speaker view). Widgets are drawn from the saved
state, so sliders show and move, but nothing is computed (there is no kernel behind a deck).

The decks work offline, opened from ``file://`` or served. nbconvert's template loads reveal.js,
require.js, jQuery, MathJax and the widget renderer from CDNs by default; here every one of those
URLs points at ``slides/vendor/<package>-<version>/``, a copy of the files listed in
:data:`VENDOR`. ``data_scripts/fetch_slide_vendor.py`` (run by ``make slides``) downloads those
npm packages once into ``build/vendor/`` and checks each tarball's SHA-256; the build copies
what a deck needs from there. The theme is reveal's ``white`` without its ``@import`` of the
Source Sans Pro font files: text uses the system's sans-serif, no web font is loaded. Any
``http://`` or ``https://`` script, stylesheet, ``@import`` or ``url(...)`` left in a deck is an
error (:func:`remote_references`).

Command line (``make slides`` and ``make present LESSON=05`` run these)::

    course-slides                    # every lesson -> slides/NN_topic.slides.html
    course-slides 05 07              # some lessons (a number, a name or a path)
    course-slides --present 05       # build lesson 05 and serve it on http://127.0.0.1:8000

In a deck: arrows or space move on, ``s`` opens the speaker view (the cells of type ``notes``),
``f`` full screen, ``o`` the overview, ``?`` the list of keys.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import nbformat

REGISTRY = "https://registry.npmjs.org"
MARKER = ".vendor.json"  # written into a vendored package's folder once it is complete
TEMPLATE_DIR = Path(__file__).resolve().parent / "slide_template"
TEMPLATE_NAME = "course_reveal"  # slide_template/course_reveal/: nbconvert's reveal, offline
THEME = "white"
DECK_SUFFIX = ".slides.html"
SLIDE_SIZE = (1280, 720)  # reveal.js scales this 16:9 page to the screen


class SlidesError(Exception):
    """A deck cannot be built; ``str(err)`` says why, ``err.hint`` what to do."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


# ----------------------------------------------------------------------------- vendored assets

@dataclass(frozen=True)
class VendorPackage:
    """One npm package whose files the decks load, pinned by version and tarball checksum.

    Attributes:
        name: the npm name, e.g. ``"@jupyter-widgets/html-manager"``.
        version: the exact version.
        sha256: SHA-256 of the registry's tarball (what ``npm pack name@version`` downloads).
        files: the files kept, relative to the tarball's ``package/`` folder: a path, a pattern
            whose ``*`` stays within one folder (``"dist/*.woff2"``) or ``"folder/**"`` for a
            whole folder.
    """

    name: str
    version: str
    sha256: str
    files: tuple[str, ...]

    @property
    def folder(self) -> str:
        """The folder name in the cache and in ``slides/vendor/``: ``html-manager-1.0.15``."""
        return f"{self.name.rsplit('/', 1)[-1]}-{self.version}"

    @property
    def tarball(self) -> str:
        """The tarball's file name, as npm names it: ``html-manager-1.0.15.tgz``."""
        return f"{self.folder}.tgz"

    @property
    def url(self) -> str:
        """Where the npm registry serves the tarball."""
        return f"{REGISTRY}/{self.name}/-/{self.tarball}"

    def keeps(self, path: str) -> bool:
        """Whether ``path`` (relative to ``package/``) is one of the files the decks need."""
        path = PurePosixPath(path)
        for pattern in self.files:
            if pattern.endswith("/**"):  # the whole folder
                folder = PurePosixPath(pattern[:-3])
                if path.parts[:len(folder.parts)] == folder.parts:
                    return True
            elif len(path.parts) == len(PurePosixPath(pattern).parts) and path.match(pattern):
                return True
        return False


# reveal.js: 5.x is the series nbconvert 7's reveal template works with (6.x breaks it).
# MathJax: version 2, because the template configures and re-renders through MathJax 2's API
# (MathJax.Hub); only the TeX input, the CommonHTML output and its woff fonts are kept.
# html-manager: the widget renderer matching ipywidgets 8.1 (jupyterlab_widgets 3.0.17 uses
# @jupyter-widgets/base 6.0.12 and controls 5.0.13, as html-manager 1.0.15 does); its
# Font Awesome files sit next to embed-amd.js, which loads them from there.
VENDOR: tuple[VendorPackage, ...] = (
    VendorPackage(
        "reveal.js", "5.2.1",
        "359b575dd51bbda32f89b2fd4c7dc46ad7389a805572158916c29252f7a27333",
        ("LICENSE", "dist/reveal.js", "dist/reveal.css", f"dist/theme/{THEME}.css",
         "plugin/notes/notes.js")),
    VendorPackage(
        "requirejs", "2.3.8",
        "777158e89275e16bd51aec3ef714fbcb5dc45789e7078659933bc814916d7dec",
        ("require.js", "README.md")),
    VendorPackage(
        "jquery", "3.7.1",
        "68a9f787516da47c680e09c187bcbac4536b6f85d90eb882844e12919e583f53",
        ("LICENSE.txt", "dist/jquery.min.js")),
    VendorPackage(
        "mathjax", "2.7.9",
        "7131e739848edc14aa661a5516995866b81a477fab8b039d7cc324930e71f786",
        ("LICENSE", "MathJax.js", "config/TeX-AMS_CHTML-full.js", "config/Safe.js",
         "extensions/*.js", "extensions/TeX/**", "jax/input/TeX/**", "jax/output/CommonHTML/**",
         "jax/element/**", "fonts/HTML-CSS/TeX/woff/**", "localization/en/**")),
    VendorPackage(
        "@jupyter-widgets/html-manager", "1.0.15",
        "2b9d65cb7913e1c7d671757a10008b32c9c2448d4429513371e55c07d6107638",
        ("dist/embed-amd.js", "dist/*.woff2", "dist/*.woff", "dist/*.ttf")),
)
VENDOR_BY_NAME = {package.name: package for package in VENDOR}


def find_repo_root(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: this file) with ``pyproject.toml``."""
    start = (start or Path(__file__)).resolve()
    return next((d for d in (start, *start.parents) if (d / "pyproject.toml").is_file()),
                Path.cwd())


def default_cache() -> Path:
    """``$COURSE_VENDOR_DIR`` if set, else ``build/vendor/`` in the repository."""
    env = os.environ.get("COURSE_VENDOR_DIR")
    return Path(env) if env else find_repo_root() / "build" / "vendor"


def read_marker(folder: Path) -> dict | None:
    """The marker :func:`extract_package` left in ``folder``, or None if there is none."""
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_vendored(package: VendorPackage, cache: Path) -> bool:
    """Whether ``cache/<package.folder>`` holds this exact package's files, all of them.

    The marker must name the same tarball checksum and the same ``files`` patterns (a table
    that now keeps more files makes the package be extracted again).
    """
    folder = cache / package.folder
    marker = read_marker(folder)
    return (marker is not None and marker.get("sha256") == package.sha256
            and marker.get("patterns") == list(package.files)
            and all((folder / f).is_file() for f in marker.get("files", [None])))


def missing_vendor(cache: Path | None = None) -> list[VendorPackage]:
    """The packages of :data:`VENDOR` that are not (completely) in ``cache`` yet."""
    cache = cache or default_cache()
    return [package for package in VENDOR if not is_vendored(package, cache)]


def extract_package(package: VendorPackage, tarball: Path, cache: Path) -> Path:
    """Extract the files the decks need from an npm tarball into ``cache/<package.folder>``.

    The caller has checked the tarball's SHA-256. Extraction goes to a temporary folder that is
    renamed into place once the marker (``.vendor.json``: name, version, checksum, file list) is
    written, so a half-extracted folder never counts as vendored.

    Raises:
        SlidesError: the tarball cannot be read, or lacks a file the package table names.
    """
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{package.folder}-", dir=cache))
    try:
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                members = [m for m in tar.getmembers() if m.isfile()
                           and m.name.startswith("package/") and package.keeps(m.name[8:])]
                # filter="data": no absolute paths, no "..", no links out of tmp.
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, OSError, EOFError) as err:
            raise SlidesError(f"{tarball} is not a readable npm tarball ({err})",
                              "Delete it and run data_scripts/fetch_slide_vendor.py "
                              "again.") from None
        files = sorted(m.name[8:] for m in members)
        plain = [f for f in package.files if "*" not in f]
        absent = [f for f in plain if f not in files]
        if absent or not files:
            raise SlidesError(f"{tarball.name} lacks {', '.join(absent) or 'every file'} "
                              f"that the decks need")
        marker = {"name": package.name, "version": package.version, "sha256": package.sha256,
                  "url": package.url, "patterns": list(package.files), "files": files}
        (tmp / "package" / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        dest = cache / package.folder
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp / "package", dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _without_web_fonts(css: str) -> str:
    """A reveal theme without its ``@import`` of font files (the system sans-serif is used)."""
    return re.sub(r"@import url\(\./fonts/[^)]*\);\s*", "", css)


def copy_vendor(cache: Path, dest: Path) -> None:
    """Copy every vendored package from ``cache`` into ``dest`` (``slides/vendor/``).

    Packages already there with the same marker are left alone; folders of other packages or
    versions (an older build) are removed. The theme loses its font ``@import`` on the way.

    Raises:
        SlidesError: a package is missing from the cache (the hint says how to fetch it).
    """
    missing = missing_vendor(cache)
    if missing:
        names = ", ".join(f"{p.name}@{p.version}" for p in missing)
        raise SlidesError(
            f"the slides' JavaScript and CSS are not in {cache} yet ({names})",
            "Run `make slides` (or `.venv/bin/python data_scripts/fetch_slide_vendor.py`) once "
            "with a network: it downloads them from the npm registry (~30 MB) and checks them.")
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {package.folder for package in VENDOR}
    for old in dest.iterdir():
        if old.name not in wanted:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    for package in VENDOR:
        target = dest / package.folder
        if read_marker(target) == read_marker(cache / package.folder):
            continue
        if target.exists():
            shutil.rmtree(target)
        tmp = dest / f".{package.folder}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(cache / package.folder, tmp)
        theme = tmp / "dist" / "theme" / f"{THEME}.css"
        if theme.is_file():
            theme.write_text(_without_web_fonts(theme.read_text()))
        os.replace(tmp, target)


# ----------------------------------------------------------------------------- offline check

_REMOTE = r"(?:https?:)?//"
REMOTE_PATTERNS = {
    "script": re.compile(rf"<script\b[^>]*?\bsrc\s*=\s*[\"']?\s*({_REMOTE}[^\"'\s>]*)", re.I),
    "link": re.compile(rf"<link\b[^>]*?\bhref\s*=\s*[\"']?\s*({_REMOTE}[^\"'\s>]*)", re.I),
    "@import": re.compile(rf"@import\s+(?:url\()?\s*[\"']?\s*({_REMOTE}[^\"')\s;]*)", re.I),
    "url()": re.compile(rf"\burl\(\s*[\"']?\s*({_REMOTE}[^\"')\s]*)", re.I),
    "import": re.compile(rf"(?<![@\w])import\b[^;\n]*?[\"']({_REMOTE}[^\"']*)[\"']"),
}


def remote_references(text: str) -> list[str]:
    """Every script, stylesheet, ``@import``, ``url(...)`` or ES import of ``text`` that is remote.

    Remote means ``http://``, ``https://`` or protocol-relative ``//``. Plain links (``<a href>``)
    do not count: a deck may link to a paper.

    Returns:
        ``"<kind> <url>"`` strings, in the order found (empty when the text is offline-safe).
    """
    return [f"{kind} {match.group(1)}" for kind, pattern in REMOTE_PATTERNS.items()
            for match in pattern.finditer(text)]


# ----------------------------------------------------------------------------- decks

def exporter_config(vendor: str = "vendor"):
    """The nbconvert configuration of the decks; asset URLs are relative to the deck.

    Args:
        vendor: the folder holding the vendored packages, relative to the deck's folder.
    """
    from traitlets.config import Config

    def url(name: str, path: str) -> str:
        return f"{vendor}/{VENDOR_BY_NAME[name].folder}/{path}"

    c = Config()
    c.SlidesExporter.extra_template_basedirs = [str(TEMPLATE_DIR)]
    c.SlidesExporter.template_name = TEMPLATE_NAME
    c.SlidesExporter.reveal_url_prefix = url("reveal.js", "").rstrip("/")
    c.SlidesExporter.reveal_theme = THEME
    c.SlidesExporter.reveal_transition = "fade"
    c.SlidesExporter.reveal_number = "c/t"
    c.SlidesExporter.reveal_width = str(SLIDE_SIZE[0])
    c.SlidesExporter.reveal_height = str(SLIDE_SIZE[1])
    # A slide taller than 720 px scrolls: the template does it; nbconvert's reveal_scroll would
    # also clip slides of 684 to 720 px (95 % of the window) that fit.
    c.SlidesExporter.reveal_scroll = False
    c.SlidesExporter.require_js_url = url("requirejs", "require.js")
    c.SlidesExporter.jquery_url = url("jquery", "dist/jquery.min.js")
    c.SlidesExporter.mathjax_url = url("mathjax", "MathJax.js?config=TeX-AMS_CHTML-full,Safe")
    c.SlidesExporter.widget_renderer_url = url("@jupyter-widgets/html-manager",
                                               "dist/embed-amd.js")
    # Not used by the template (Mermaid is left out of it); set so no CDN address remains.
    c.SlidesExporter.mermaid_js_url = ""
    c.SlidesExporter.mermaid_layout_elk_js_url = ""
    c.SlidesExporter.font_awesome_url = ""
    c.SlidesExporter.exclude_input_prompt = True  # no "In [3]:": the code gets the width
    c.SlidesExporter.exclude_output_prompt = True
    return c


def find_lessons(solutions: Path, only: Iterable[str] | None = None) -> list[Path]:
    """The solution notebooks to turn into decks.

    Args:
        solutions: the folder of ``NN_topic.ipynb``.
        only: lesson numbers (``"05"``, ``"5"``), names (``05_iou_nms_map``) or paths; all when
            None or empty.

    Raises:
        SlidesError: a requested lesson matches no notebook, or several.
    """
    notebooks = sorted(solutions.glob("[0-9][0-9]_*.ipynb"))
    if not only:
        if not notebooks:
            raise SlidesError(f"no lesson notebooks (NN_topic.ipynb) in {solutions}")
        return notebooks
    chosen = []
    for item in only:
        if item.endswith(".ipynb") and Path(item).is_file():
            chosen.append(Path(item))
            continue
        key = f"{int(item):02d}_" if item.isdigit() else Path(item).stem
        matches = [p for p in notebooks if p.stem == key or p.name.startswith(key)]
        if len(matches) != 1:
            known = ", ".join(p.stem for p in notebooks)
            raise SlidesError(f"lesson {item!r} matches {len(matches)} notebooks in {solutions}",
                              f"Name one of: {known}.")
        chosen.append(matches[0])
    return chosen


def deck_path(notebook: Path, out_dir: Path) -> Path:
    """``out_dir/NN_topic.slides.html`` for ``solutions/NN_topic.ipynb``."""
    return out_dir / f"{Path(notebook).stem}{DECK_SUFFIX}"


def build_decks(notebooks: Sequence[Path], out_dir: Path, cache: Path | None = None,
                log=print) -> list[Path]:
    """Write one deck per notebook into ``out_dir``, with the vendored assets beside them.

    Args:
        notebooks: executed ``.ipynb`` files (their outputs and widget state are used as
            stored; nothing is executed).
        out_dir: where ``NN_topic.slides.html`` and ``vendor/`` go.
        cache: the vendored packages (default: :func:`default_cache`).
        log: called with one line per deck.

    Returns:
        The decks' paths.

    Raises:
        SlidesError: the vendored assets are missing, a notebook cannot be read, or a deck
            would load something from the network.
    """
    from nbconvert.exporters import SlidesExporter

    cache = cache or default_cache()
    out_dir.mkdir(parents=True, exist_ok=True)
    copy_vendor(cache, out_dir / "vendor")
    exporter = SlidesExporter(config=exporter_config("vendor"))
    decks = []
    for notebook in notebooks:
        start = time.perf_counter()
        try:
            nb = nbformat.read(notebook, as_version=4)
        except (OSError, ValueError) as err:
            raise SlidesError(f"{notebook} is not a readable notebook: {err}") from None
        title = nb.metadata.get("course", {}).get("title") or Path(notebook).stem
        html, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
        remote = remote_references(html)
        if remote:
            raise SlidesError(f"the deck of {notebook} would load from the network: "
                              f"{'; '.join(remote[:5])}",
                              "Point that asset at slides/vendor/ in exporter_config().")
        deck = deck_path(notebook, out_dir)
        deck.write_text(html, encoding="utf-8")
        if log:
            counts = slide_counts(nb)
            log(f"{_show(deck)}: {counts['slides']} slides, {counts['subslides']} sub-slides, "
                f"{counts['fragments']} fragments, {counts['notes']} speaker notes, "
                f"{deck.stat().st_size / 2**20:.1f} MB ({time.perf_counter() - start:.1f} s)")
        decks.append(deck)
    return decks


def slide_counts(nb: nbformat.NotebookNode) -> dict[str, int]:
    """How many cells of a notebook start a slide, a sub-slide or a fragment, or are notes."""
    kinds = [cell.metadata.get("slideshow", {}).get("slide_type", "-") for cell in nb.cells]
    return {"slides": kinds.count("slide"), "subslides": kinds.count("subslide"),
            "fragments": kinds.count("fragment"), "notes": kinds.count("notes")}


def present(deck: Path, port: int = 8000, open_browser: bool = True) -> None:
    """Serve ``deck``'s folder on ``http://127.0.0.1:<port>/`` until Control-C.

    nbconvert's ``--post serve`` (its ``ServePostProcessor``); the vendored reveal.js is served
    from the same folder, so nothing is proxied to a CDN.
    """
    from nbconvert.postprocessors import ServePostProcessor

    prefix = f"vendor/{VENDOR_BY_NAME['reveal.js'].folder}"
    server = ServePostProcessor(ip="127.0.0.1", port=port, open_in_browser=open_browser,
                                reveal_prefix=prefix)
    server(str(deck))


def _show(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``course-slides``; returns the exit status (0 built, 1 failed)."""
    parser = argparse.ArgumentParser(
        prog="course-slides",
        description="Build reveal.js slide decks (slides/NN_topic.slides.html) from the executed "
                    "solution notebooks; they work offline.",
        epilog="In a deck: s speaker view, f full screen, o overview, ? keys.")
    parser.add_argument("lessons", nargs="*", metavar="LESSON",
                        help="lesson numbers (05), names (05_iou_nms_map) or notebook paths; "
                             "default: every solutions/NN_*.ipynb")
    parser.add_argument("--present", action="store_true",
                        help="build one lesson's deck and serve it on 127.0.0.1 (Control-C "
                             "stops)")
    parser.add_argument("--port", type=int, default=8000, help="with --present (default: 8000)")
    parser.add_argument("--no-browser", action="store_true",
                        help="with --present: do not open a browser")
    parser.add_argument("--solutions", type=Path, metavar="DIR",
                        help="the executed lessons (default: solutions/ in the repository)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where the decks go (default: slides/ in the repository)")
    args = parser.parse_args(argv)
    if args.present and len(args.lessons) != 1:
        parser.error("--present takes exactly one lesson, e.g. --present 05")
    root = find_repo_root()
    try:
        notebooks = find_lessons(args.solutions or root / "solutions", args.lessons)
        start = time.perf_counter()
        decks = build_decks(notebooks, args.out or root / "slides")
    except SlidesError as err:
        print(f"course-slides: {err}", file=sys.stderr)
        if err.hint:
            print(f"  {err.hint}", file=sys.stderr)
        return 1
    if args.present:
        present(decks[0], port=args.port, open_browser=not args.no_browser)
        return 0
    print(f"{len(decks)} deck(s) in {time.perf_counter() - start:.1f} s; open one in a browser "
          f"(file:// works) or `make present LESSON=NN`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

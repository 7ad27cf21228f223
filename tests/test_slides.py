"""The instructors' slide decks (course_lib/slides.py): built offline, opened in a real browser.

Three groups:

* the vendoring and offline checks on fakes, without network or browser;
* every lesson's deck, built once from the stored executed notebooks (nothing is re-run, ~8 s)
  with the assets of ``build/vendor/`` (``data_scripts/fetch_slide_vendor.py`` fills it; the
  tests skip without it): no remote script, stylesheet, ``@import`` or ``url()`` in a deck or in
  the CSS it loads, and every local file it names exists;
* each deck opened from ``file://`` in headless Chromium (tests/browser/chromium.py; skipped
  without playwright or Chromium): reveal.js ready, one slide per ``slide``/``subslide`` cell,
  formulas typeset by MathJax, every widget drawn from its saved state, no request leaving the
  machine, no JavaScript error, and every slide (all its fragments shown) fits the 1280 x 720
  page unless one cell on it is taller than the page by itself (:func:`too_tall`). Lesson 05's
  test saves screenshots to ``slides/screenshots/`` (the README shows one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import re
import tarfile
import urllib.error
from pathlib import Path

import nbformat
import pytest
from browser import chromium

from course_lib import slides
from course_lib.slides import VENDOR, SlidesError, VendorPackage

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
SCREENSHOTS = ROOT / "slides" / "screenshots"
VIEWPORT = {"width": 1280, "height": 720}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
CURRENT_SLIDE = ".reveal .slides section.present:not(.stack)"  # a .stack holds sub-slides
FIT_TOLERANCE = 10  # px over the page's 720 that still count as fitting
SHORT = 180  # px: a short intro or caption (a heading and a few lines) beside an oversized cell


# ----------------------------------------------------------------------------- without network

def fake_tarball(files: dict[str, bytes]) -> bytes:
    """An npm-style .tgz: every file under ``package/``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


FAKE_FILES = {"dist/app.js": b"var app;", "dist/a.woff2": b"w2", "dist/sub/b.woff2": b"deep",
              "css/theme/x.css": b"x{}", "LICENSE": b"MIT", "README.md": b"# not kept"}


def fake_package(sha256: str = "0" * 64) -> VendorPackage:
    return VendorPackage("@scope/fake-lib", "1.2.3", sha256,
                         ("LICENSE", "dist/app.js", "dist/*.woff2", "css/**"))


def test_package_names_urls_and_patterns():
    package = fake_package()
    assert package.folder == "fake-lib-1.2.3"
    assert package.url == "https://registry.npmjs.org/@scope/fake-lib/-/fake-lib-1.2.3.tgz"
    kept = [name for name in FAKE_FILES if package.keeps(name)]
    # "*" stays within its folder; "css/**" takes the whole folder
    assert kept == ["dist/app.js", "dist/a.woff2", "css/theme/x.css", "LICENSE"]


def test_every_vendored_package_is_pinned_to_a_version_and_a_sha256():
    for package in VENDOR:
        assert re.fullmatch(r"\d+\.\d+\.\d+", package.version), package
        assert re.fullmatch(r"[0-9a-f]{64}", package.sha256), package
    reveal = slides.VENDOR_BY_NAME["reveal.js"]
    assert reveal.version.startswith("5."), "nbconvert's reveal template needs reveal.js 5.x"
    assert slides.VENDOR_BY_NAME["mathjax"].version.startswith("2."), \
        "the template drives MathJax through version 2's API (MathJax.Hub)"


def test_extract_keeps_the_listed_files_and_writes_a_marker(tmp_path):
    tarball = tmp_path / "fake-lib-1.2.3.tgz"
    tarball.write_bytes(fake_tarball(FAKE_FILES))
    package = fake_package()
    cache = tmp_path / "cache"
    assert not slides.is_vendored(package, cache)
    folder = slides.extract_package(package, tarball, cache)
    assert folder == cache / "fake-lib-1.2.3"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) \
        == [".vendor.json", "LICENSE", "css/theme/x.css", "dist/a.woff2", "dist/app.js"]
    assert slides.is_vendored(package, cache)
    (folder / "dist" / "app.js").unlink()  # a damaged cache is no longer vendored
    assert not slides.is_vendored(package, cache)
    # a table that keeps more files than the cache holds: extracted again
    assert not slides.is_vendored(dataclasses.replace(package, files=("LICENSE",)), cache)


def test_extract_names_a_listed_file_the_tarball_lacks(tmp_path):
    tarball = tmp_path / "fake.tgz"
    tarball.write_bytes(fake_tarball({"LICENSE": b"MIT"}))
    with pytest.raises(SlidesError, match="lacks dist/app.js"):
        slides.extract_package(fake_package(), tarball, tmp_path / "cache")
    assert not (tmp_path / "cache" / "fake-lib-1.2.3").exists()
    tarball.write_bytes(b"not a tarball")
    with pytest.raises(SlidesError, match="not a readable npm tarball"):
        slides.extract_package(fake_package(), tarball, tmp_path / "cache")


@pytest.mark.parametrize("html, found", [
    ('<script src="https://unpkg.com/x.js"></script>', ["script https://unpkg.com/x.js"]),
    ("<script type='text/javascript' src='//cdn.example/y.js'>", ["script //cdn.example/y.js"]),
    ('<link rel="stylesheet" href="http://cdn.example/t.css">', ["link http://cdn.example/t.css"]),
    ("@import url(https://fonts.googleapis.com/css?family=Lato);",
     ["@import https://fonts.googleapis.com/css?family=Lato", "url() "
      "https://fonts.googleapis.com/css?family=Lato"]),
    ('@import "https://x.example/a.css";', ["@import https://x.example/a.css"]),
    ("src: url('https://x.example/f.woff2') format('woff2')", ["url() https://x.example/f.woff2"]),
    ("import mermaid from 'https://cdn.example/mermaid.mjs';",
     ["import https://cdn.example/mermaid.mjs"]),
    # offline-safe: relative files, data: URLs, plain links to read elsewhere
    ('<script src="vendor/require.js"></script><link href="vendor/r.css" rel="stylesheet">', []),
    ("background: url(data:image/png;base64,AAAA); @import url(./fonts/f.css);", []),
    ('<a href="https://arxiv.org/abs/1506.01497">Faster R-CNN</a>', []),
])
def test_remote_references(html, found):
    assert slides.remote_references(html) == found


def test_the_theme_loses_its_font_import():
    css = "/* theme */\n@import url(./fonts/source-sans-pro/source-sans-pro.css);\n.reveal{}\n"
    assert slides._without_web_fonts(css) == "/* theme */\n.reveal{}\n"


def test_find_lessons(tmp_path):
    for name in ("01_intro.ipynb", "05_iou_nms_map.ipynb", "notes.ipynb"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in slides.find_lessons(tmp_path)] == ["01_intro.ipynb",
                                                               "05_iou_nms_map.ipynb"]
    for key in ("05", "5", "05_iou_nms_map", "05_iou_nms_map.ipynb"):
        assert [p.name for p in slides.find_lessons(tmp_path, [key])] == ["05_iou_nms_map.ipynb"]
    with pytest.raises(SlidesError, match="'09' matches 0 notebooks") as err:
        slides.find_lessons(tmp_path, ["09"])
    assert "01_intro, 05_iou_nms_map" in err.value.hint


@pytest.fixture
def fetch_script(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "data_scripts"))
    return importlib.import_module("fetch_slide_vendor")


class FakeResponse(io.BytesIO):
    status = 200

    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def test_fetch_downloads_checks_and_extracts_then_does_nothing(fetch_script, monkeypatch,
                                                               tmp_path, capsys):
    data = fake_tarball(FAKE_FILES)
    package = fake_package(hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(fetch_script, "VENDOR", (package,))
    urls = []

    def opener(request, timeout):
        urls.append(request.full_url)
        return FakeResponse(data)

    assert fetch_script.main(["--cache", str(tmp_path), "--quiet"], opener=opener) == 0
    assert urls == [package.url]
    assert slides.is_vendored(package, tmp_path)
    assert (tmp_path / "tarballs" / "fake-lib-1.2.3.tgz").read_bytes() == data
    assert fetch_script.main(["--cache", str(tmp_path)], opener=opener) == 0
    assert urls == [package.url], "a second run must not download again"
    assert "nothing to do" in capsys.readouterr().out


def test_fetch_refuses_a_tarball_with_the_wrong_checksum(fetch_script, monkeypatch, tmp_path,
                                                         capsys):
    monkeypatch.setattr(fetch_script, "VENDOR", (fake_package("f" * 64),))
    status = fetch_script.main(["--cache", str(tmp_path), "--quiet"],
                               opener=lambda request, timeout: FakeResponse(b"tampered"))
    assert status == 1
    assert "wrong sha256 checksum" in capsys.readouterr().err
    assert not (tmp_path / "fake-lib-1.2.3").exists()


def test_fetch_offline_says_what_to_do(fetch_script, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(fetch_script, "VENDOR", (fake_package(),))

    def offline(request, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    assert fetch_script.main(["--cache", str(tmp_path), "--quiet"], opener=offline) == 1
    err = capsys.readouterr().err
    assert "could not reach registry.npmjs.org" in err
    assert "npm pack @scope/fake-lib@1.2.3" in err and str(tmp_path / "tarballs") in err


def test_building_without_the_vendored_assets_says_how_to_get_them(tmp_path):
    with pytest.raises(SlidesError, match="not in .* yet") as err:
        slides.build_decks(LESSONS[:1], tmp_path / "slides", cache=tmp_path / "empty")
    assert "fetch_slide_vendor.py" in err.value.hint


# ----------------------------------------------------------------------------- the real decks

@pytest.fixture(scope="module")
def decks(tmp_path_factory) -> dict[str, Path]:
    """Every lesson's deck, built once into a temporary slides/ folder."""
    missing = slides.missing_vendor()
    if missing:
        pytest.skip(f"the slides' assets are not in {slides.default_cache()}: run "
                    f"`python data_scripts/fetch_slide_vendor.py` (make slides does) with a "
                    f"network ({', '.join(p.name for p in missing)} missing)")
    out = tmp_path_factory.mktemp("slides")
    built = slides.build_decks(LESSONS, out, log=None)
    return {deck.name.split("_")[0]: deck for deck in built}


def lesson_ids():
    return [p.name.split("_")[0] for p in LESSONS]


def local_references(text: str) -> list[str]:
    """The relative script, stylesheet, ``@import`` and ``url()`` targets of an HTML/CSS text."""
    patterns = [r"<script\b[^>]*?\bsrc=[\"']([^\"']+)", r"<link\b[^>]*?\bhref=[\"']([^\"']+)",
                r"@import\s+url\(\s*[\"']?([^\"')]+)", r"\burl\(\s*[\"']?([^\"')]+)",
                r"widgetRendererSrc = '([^']+)'"]
    found = [m.group(1) for pattern in patterns for m in re.finditer(pattern, text)]
    return [ref for ref in found if not ref.startswith(("data:", "#", "http:", "https:", "//"))]


def test_every_deck_loads_nothing_from_the_network(decks):
    assert sorted(decks) == lesson_ids()
    for deck in decks.values():
        html = deck.read_text(encoding="utf-8")
        assert slides.remote_references(html) == [], deck.name
        for host in ("unpkg.com", "cdnjs.cloudflare.com", "cdn.jsdelivr.net", "googleapis"):
            assert host not in html, f"{deck.name} names {host}"
        refs = local_references(html)
        assert len(refs) >= 6, refs  # jQuery, require.js, MathJax, widgets, 2 stylesheets
        for ref in refs:
            target = deck.parent / ref.split("?")[0]
            assert target.is_file(), f"{deck.name} loads {ref}, which the build did not copy"
            if target.suffix == ".css":  # and what its stylesheets load in turn
                css = target.read_text(encoding="utf-8")
                assert slides.remote_references(css) == [], f"{ref} loads remote files"
                for inner in local_references(css):
                    assert (target.parent / inner).is_file(), f"{ref} loads missing {inner}"


def test_the_vendored_theme_uses_no_web_font(decks):
    theme = next(decks.values().__iter__()).parent.glob("vendor/reveal.js-*/dist/theme/*.css")
    for css in theme:
        text = css.read_text(encoding="utf-8")
        assert "@import" not in text and "@font-face" not in text, css.name


# ----------------------------------------------------------------------------- in a browser

@pytest.fixture(scope="module")
def browser():
    with chromium.launch() as browser:  # skips the module without a browser
        yield browser


def expected(notebook: Path) -> dict[str, int]:
    """What the deck of a notebook must show: slides, widget views and formulas."""
    nb = nbformat.read(notebook, as_version=4)
    counts = slides.slide_counts(nb)
    views = sum(WIDGET_VIEW in out.get("data", {}) for cell in nb.cells
                for out in cell.get("outputs", []))
    formulas = sum(len(re.findall(r"\$[^$\n]+\$", cell.source)) for cell in nb.cells
                   if cell.cell_type == "markdown")
    return {"slides": counts["slides"] + counts["subslides"], "widgets": views,
            "formulas": formulas}


def open_deck(browser, deck: Path):
    """Open a deck from file:// and wait until reveal.js, MathJax and the widgets are done."""
    page = browser.new_page(viewport=VIEWPORT)
    problems = chromium.watch(page)
    page.goto(deck.as_uri())
    page.wait_for_function("window.Reveal !== undefined && Reveal.isReady()", timeout=30_000)
    # MathJax 2 typesets through a queue: a callback queued now runs once it is done.
    page.evaluate("() => new Promise(done => MathJax.Hub.Queue(done))")
    page.wait_for_function(  # the widget renderer replaces each saved view with its drawing
        """() => document.querySelectorAll('.widget-subarea').length >=
                 document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')
                 .length""", timeout=30_000)
    return page, problems


SLIDE_HEIGHTS = """() => {
    const found = Reveal.getSlides().map((slide, n) => {
        const i = Reveal.getIndices(slide);
        Reveal.slide(i.h, i.v, 1000);  // displayed, every fragment shown
        const cells = [...slide.querySelectorAll('.jp-Cell')]
            .filter(cell => !cell.closest('aside.notes')).map(cell => cell.offsetHeight);
        return {number: n + 1, height: slide.scrollHeight, cells,
                text: slide.innerText.trim().replace(/\\s+/g, ' ').slice(0, 60)};
    });
    Reveal.slide(0, 0, 0);
    return found; }"""


def too_tall(page) -> list[str]:
    """The slides of the open deck that are taller than the page and should not be.

    A slide taller than 720 px (all its fragments shown) is accepted only when no slide type can
    make it fit: one cell on it is taller than the page by itself (an exercise's code with its
    docstring, a code cell with its figure; a cell cannot be split without changing the
    notebook), and what shares the slide with it is at most a short intro before it and a short
    caption after it (``SHORT`` px each). Anything more goes to a sub-slide of its own.
    """
    limit = VIEWPORT["height"] + FIT_TOLERANCE
    wrong = []
    for slide in page.evaluate(SLIDE_HEIGHTS):
        if slide["height"] <= limit:
            continue
        cells = slide["cells"]
        big = [k for k, height in enumerate(cells) if height > limit]
        if len(big) == 1 and sum(cells[:big[0]]) <= SHORT and sum(cells[big[0] + 1:]) <= SHORT:
            continue
        wrong.append(f"slide {slide['number']} is {slide['height']} px (cells {cells}): "
                     f"{slide['text']!r}")
    return wrong


def show(page, section_text: str) -> None:
    """Go to the first slide whose text contains ``section_text``, all fragments shown."""
    found = page.evaluate("""(text) => {
        const slide = Reveal.getSlides().find(s => s.textContent.includes(text));
        if (!slide) return false;
        const i = Reveal.getIndices(slide);
        Reveal.slide(i.h, i.v, 1000);
        return true; }""", section_text)
    assert found, f"no slide shows {section_text!r}"
    page.evaluate("() => new Promise(done => MathJax.Hub.Queue(done))")
    page.wait_for_timeout(900)  # the fade transition


@pytest.mark.slow
@pytest.mark.parametrize("lesson", lesson_ids())
def test_deck_opens_offline_with_slides_formulas_and_widgets(decks, browser, lesson):
    want = expected(next(p for p in LESSONS if p.name.startswith(lesson + "_")))
    page, problems = open_deck(browser, decks[lesson])
    try:
        assert page.evaluate("Reveal.getTotalSlides()") == want["slides"]
        typeset = page.evaluate("document.querySelectorAll('.MathJax_CHTML').length")
        assert typeset >= want["formulas"] > 0, "MathJax did not typeset the formulas"
        assert page.evaluate("document.querySelectorAll('.mjx-merror').length") == 0
        drawn = page.evaluate("document.querySelectorAll('.widget-subarea').length")
        assert drawn == want["widgets"]
        assert page.evaluate("document.querySelectorAll('.jupyter-widgets').length") \
            >= want["widgets"]
        assert "Error displaying widget" not in page.inner_text("body")
        assert problems == []
        # Split with slide types: e.g. an exercise's code starts a sub-slide when the exercise
        # does not fit on one, and its check(...) follows on the code's sub-slide if it fits.
        assert too_tall(page) == [], f"slides taller than {VIEWPORT['height']} px"
    finally:
        page.close()


@pytest.mark.slow
def test_lesson_05_widgets_render_and_screenshots(decks, browser):
    page, problems = open_deck(browser, decks["05"])
    try:
        chromium.screenshot(page, SCREENSHOTS / "05_title.png")
        show(page, "Move the second box around")  # the iou_explorer slide
        slide = page.locator(CURRENT_SLIDE)
        sliders = slide.locator(".widget-slider")
        assert sliders.count() == 4 and all(sliders.nth(i).is_visible() for i in range(4))
        assert re.search(r"IoU = 0\.\d{3}", slide.inner_text())
        # the figure and the controls beside it both fit on the slide
        box = slide.locator(".widget-hbox").first.bounding_box()
        assert box is not None and box["x"] + box["width"] <= VIEWPORT["width"]
        chromium.screenshot(page, SCREENSHOTS / "05_iou_explorer.png")
        show(page, "The raw curve zig-zags")  # interpolated precision, typeset
        assert page.locator(f"{CURRENT_SLIDE} .MathJax_CHTML").count() >= 4
        chromium.screenshot(page, SCREENSHOTS / "05_average_precision.png")
        assert problems == []
    finally:
        page.close()


@pytest.mark.slow
def test_speaker_view_shows_the_lessons_notes_offline(decks, browser):
    nb = nbformat.read(LESSONS[lesson_ids().index("05")], as_version=4)
    notes = [cell.source for cell in nb.cells
             if cell.metadata.get("slideshow", {}).get("slide_type") == "notes"]
    assert len(notes) >= 3 and nb.cells[1].source == notes[0]  # the title slide's notes
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        problems = chromium.watch(page)
        page.goto(decks["05"].as_uri())
        page.wait_for_function("window.Reveal !== undefined && Reveal.isReady()")
        assert page.locator("aside.notes").count() == len(notes)
        with context.expect_page() as speaker_view:
            page.keyboard.press("s")  # reveal.js's notes plugin opens the speaker view
        shown = speaker_view.value.locator(".speaker-controls-notes")
        shown.wait_for()
        assert "Timing (~90 min):" in shown.inner_text()  # rendered markdown, on slide 1
        assert problems == []
    finally:
        context.close()

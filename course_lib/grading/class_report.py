"""Class-wide reports from the per-student grading reports: Gradescope, JUnit and Markdown.

:func:`write_class_reports` takes the reports of
:func:`course_lib.grading.runner.grade_notebook` and writes, each file atomically
(:func:`course_lib.grading.report.write_atomic`):

* ``OUT/gradescope/<student>/results.json``: one Gradescope autograder result per submission
  (`specification <https://gradescope-autograders.readthedocs.io/en/latest/specs/>`_): the
  total ``score``, ``execution_time`` (whole seconds), ``output`` (a summary, or why the notebook
  could not be graded) and one entry of ``tests`` per exercise with ``name``, ``score``,
  ``max_score``, ``status`` (``passed``/``failed``), ``output`` (the grader's feedback, plain
  text), ``output_format`` and ``visibility``. The maximum, lesson, device and versions go
  into ``extra_data``: the documented top level has no ``max_score``.
* ``OUT/junit.xml``: one ``<testsuite>`` per student, one ``<testcase>`` per exercise; a wrong
  answer (``failed``, ``not_implemented``, ``review``) is a ``<failure>``, a crash (``error``,
  ``timeout``, ``memory``) an ``<error>``, both carrying the feedback. A notebook that could
  not be graded is one ``<testcase name="notebook">`` with an ``<error>``.
* ``OUT/class_report.md`` and ``OUT/class_histogram.png``: per-exercise pass rates and mean
  scores, a histogram of the students' scores (in % of the maximum, so that lessons mix), the
  most common failing cases of each exercise, the exercises flagged for review and the
  notebooks that could not be graded.

Student-derived text (student ids, feedback, error messages) is hostile: it is escaped for the
format it lands in, and characters XML cannot hold are replaced.

Feedback never reveals hidden inputs or expected values (the runner writes it that way), so the
Gradescope tests are ``visible`` by default.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from course_lib.grading.report import library_versions, write_atomic

GRADESCOPE_VISIBILITY = ("hidden", "after_due_date", "after_published", "visible")
FAILURE_STATUSES = ("failed", "not_implemented", "review")  # JUnit <failure>; the rest <error>
HISTOGRAM = "class_histogram.png"


def write_class_reports(out_dir: Path, reports: list[dict[str, Any]],
                        visibility: str = "visible") -> list[Path]:
    """Write the Gradescope results, the JUnit XML and the Markdown class report.

    Args:
        out_dir: where the files go (created when needed).
        reports: per-student reports of :func:`~course_lib.grading.runner.grade_notebook`,
            possibly of several lessons, possibly with ``error`` set; may be empty.
        visibility: Gradescope visibility of each test (``"visible"``, ``"hidden"``,
            ``"after_due_date"`` or ``"after_published"``).

    Returns:
        The paths written: one ``results.json`` per report (in order), ``junit.xml``,
        ``class_report.md`` and ``class_histogram.png``.

    Raises:
        ValueError: if ``visibility`` is not one of Gradescope's.
    """
    if visibility not in GRADESCOPE_VISIBILITY:
        raise ValueError(f"visibility must be one of {GRADESCOPE_VISIBILITY}, got {visibility!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for report, folder in zip(reports, _folder_names(reports), strict=True):
        path = out_dir / "gradescope" / folder / "results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(gradescope_results(report, visibility), indent=2) + "\n")
        paths.append(path)
    write_atomic(out_dir / "junit.xml", junit_xml(reports))
    write_atomic(out_dir / HISTOGRAM, histogram_png(reports))
    write_atomic(out_dir / "class_report.md", class_markdown(reports, HISTOGRAM))
    return [*paths, out_dir / "junit.xml", out_dir / "class_report.md", out_dir / HISTOGRAM]


# ---------------------------------------------------------------------------------------------
# Gradescope
# ---------------------------------------------------------------------------------------------


def gradescope_results(report: dict[str, Any], visibility: str = "visible") -> dict[str, Any]:
    """One submission's Gradescope ``results.json`` (as a dict) from its grading report."""
    tests = [{
        "name": e["name"],
        "number": str(i),
        "score": float(e["score"]),
        "max_score": float(e["max_score"]),
        "status": "passed" if e["status"] == "passed" else "failed",
        "output": f"{e['status']}: {e.get('feedback', '')}",
        "output_format": "text",
        "tags": [e["status"]],
        "visibility": visibility,
    } for i, e in enumerate(report["exercises"], start=1)]
    if report["error"]:
        output = f"This notebook could not be graded: {report['error']}"
    else:
        output = (f"Lesson {report['lesson']}: {_short(report['score'])}/"
                  f"{_short(report['max_score'])} points on {report.get('device', '?')}.")
    return {
        "score": float(report["score"]),
        "execution_time": math.ceil(float(report.get("seconds", 0.0))),
        "output": output,
        "output_format": "text",
        "tests": tests,
        "extra_data": {
            "student": report["student"], "lesson": report["lesson"],
            "max_score": float(report["max_score"]), "device": report.get("device"),
            "grader_version": report.get("grader_version"),
            "versions": report.get("versions") or dict(library_versions()),
        },
    }


def _folder_names(reports: list[dict[str, Any]]) -> list[str]:
    """A safe, distinct directory name per report (student ids come from file names)."""
    names, seen = [], set()
    for report in reports:
        base = re.sub(r"[^\w.-]", "_", str(report["student"]))
        base = "_" + base if base.startswith(".") or not base else base
        name, k = base, 2
        while name in seen:
            name, k = f"{base}-{k}", k + 1
        seen.add(name)
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------------
# JUnit XML
# ---------------------------------------------------------------------------------------------

# Characters XML 1.0 cannot hold at all, even escaped (controls other than tab, LF, CR; lone
# surrogates; U+FFFE/U+FFFF).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: Any) -> str:
    r"""``text`` with the characters XML cannot hold replaced by ``\xNN`` (or ``\uNNNN``).

    ``<``, ``&`` and quotes are left alone: :mod:`xml.etree` escapes them when it writes.
    """
    return _NOT_XML.sub(lambda m: ascii(m.group())[1:-1], str(text))


def junit_xml(reports: list[dict[str, Any]]) -> str:
    """The JUnit XML of the class: one testsuite per student, one testcase per exercise."""
    root = ET.Element("testsuites", name="course-grade")
    totals = Counter()
    for report in reports:
        student = xml_text(report["student"])
        classname = f"{student}.lesson{report['lesson']}" if report["lesson"] else student
        suite = ET.SubElement(root, "testsuite", name=student)
        props = ET.SubElement(suite, "properties")
        for key in ("lesson", "notebook", "device", "score", "max_score", "grader_version"):
            value = "" if report.get(key) is None else report[key]
            ET.SubElement(props, "property", name=key, value=xml_text(value))
        counts = Counter(tests=0, failures=0, errors=0)
        cases = [(e["name"], e["status"], e.get("feedback", ""), e.get("seconds", 0.0))
                 for e in report["exercises"]]
        if report["error"]:
            cases.append(("notebook", "error", report["error"], report.get("seconds", 0.0)))
        for name, status, feedback, seconds in cases:
            case = ET.SubElement(suite, "testcase", name=xml_text(name),
                                 classname=xml_text(classname),
                                 time=f"{float(seconds):.3f}")
            counts["tests"] += 1
            if status == "passed":
                continue
            tag = "failure" if status in FAILURE_STATUSES else "error"
            counts["failures" if tag == "failure" else "errors"] += 1
            first = str(feedback).strip().split("\n")[0][:200]
            element = ET.SubElement(case, tag, type=status, message=xml_text(first))
            element.text = xml_text(feedback)
        suite.set("time", f"{float(report.get('seconds', 0.0)):.3f}")
        for key in ("tests", "failures", "errors"):
            suite.set(key, str(counts[key]))
        suite.set("skipped", "0")
        totals.update(counts)
    for key in ("tests", "failures", "errors"):
        root.set(key, str(totals[key]))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode") + "\n"


# ---------------------------------------------------------------------------------------------
# Markdown class report and histogram
# ---------------------------------------------------------------------------------------------

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]{}()#+!|~$])")


def md_text(text: Any, limit: int = 200) -> str:
    r"""``text`` as one line of literal Markdown, safe inside a table cell.

    Newlines become spaces, HTML is escaped (``<`` -> ``&lt;``) and Markdown's special
    characters are backslash-escaped (``|`` -> ``\|``); cut to ``limit`` characters first.
    """
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    text = _NOT_XML.sub("\N{REPLACEMENT CHARACTER}", text)
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def failing_case(exercise: dict[str, Any]) -> str:
    """What an exercise that did not pass failed on, in a form that aggregates across students.

    The case title for a wrong value or an exception (``failed: case 'two boxes'``, ``error: a
    hidden random case``), else the reason without the student-specific details.
    """
    status = exercise["status"]
    if status == "not_implemented":
        return "not_implemented: raises NotImplementedError"
    if status == "review":
        return "review: the visible cases pass, no hidden case does"
    first = str(exercise.get("feedback", "")).strip().split("\n")[0]
    first = re.sub(r"^\d+/\d+ cases passed\.\s*", "", first)
    match = re.match(r"(case '[^']*'|a hidden random case)", first)
    if match:
        return f"{status}: {match.group(1)}"
    if status == "timeout":
        return "timeout: stopped by the time limit"
    if status == "memory":
        return "memory: the memory limit was reached"
    first = re.sub(r"\s*\(.*", "", first)  # drop details: codes, signals, cell lines
    return f"{status}: {first[:80] or 'no feedback'}"


def class_markdown(reports: list[dict[str, Any]], histogram: str = HISTOGRAM) -> str:
    """The Markdown class report (see the module docstring); links the histogram image."""
    graded = [r for r in reports if not r["error"]]
    ungraded = [r for r in reports if r["error"]]
    lessons = sorted({str(r["lesson"]) for r in graded})
    lines = ["# Class report", "",
             f"{len(reports)} submission(s): {len(graded)} graded, {len(ungraded)} not graded"
             + (f"; lesson(s) {', '.join(md_text(x) for x in lessons)}." if lessons else "."),
             ""]

    lines += ["## Scores", ""]
    if graded:
        lines += ["| lesson | graded | mean score | max score | full marks |",
                  "|---|---:|---:|---:|---:|"]
        for lesson in lessons:
            group = [r for r in graded if str(r["lesson"]) == lesson]
            mean = sum(r["score"] for r in group) / len(group)
            top = max(r["max_score"] for r in group)
            full = sum(r["max_score"] > 0 and r["score"] >= r["max_score"] for r in group)
            lines.append(f"| {md_text(lesson)} | {len(group)} | {_short(mean)} | {_short(top)} "
                         f"| {_rate(full, len(group))} |")
        lines.append("")
    else:
        lines += ["No submission could be graded.", ""]
    lines += [f"![Histogram of the students' scores, in % of the maximum]({histogram})", ""]

    stats: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for report in graded:
        for e in report["exercises"]:
            stats[str(report["lesson"]), e["name"]].append({**e, "student": report["student"]})
    stats = dict(sorted(stats.items(), key=lambda item: item[0][0]))  # by lesson, stable
    lines += ["## Exercises", ""]
    if stats:
        lines += ["| lesson | exercise | graded | passed | pass rate | mean score |",
                  "|---|---|---:|---:|---:|---:|"]
        for (lesson, name), results in stats.items():
            passed = sum(e["status"] == "passed" for e in results)
            mean = sum(e["score"] for e in results) / len(results)
            lines.append(f"| {md_text(lesson)} | {md_text(name)} | {len(results)} | {passed} | "
                         f"{_percent(passed, len(results))} | {_short(mean)} / "
                         f"{_short(results[0]['max_score'])} |")
        lines.append("")

        lines += ["## Most common failing cases", ""]
        any_failure = False
        for (lesson, name), results in stats.items():
            failing = [e for e in results if e["status"] != "passed"]
            if not failing:
                continue
            any_failure = True
            lines.append(f"### {md_text(name)} (lesson {md_text(lesson)})")
            lines.append("")
            counts = Counter(failing_case(e) for e in failing)
            for key, count in counts.most_common(5):
                who = [str(e["student"]) for e in failing if failing_case(e) == key]
                more = f" and {len(who) - 5} more" if len(who) > 5 else ""
                lines.append(f"- {count} x {md_text(key)} ({md_text(', '.join(who[:5]))}{more})")
            lines.append("")
        if not any_failure:
            lines += ["Every graded exercise passed.", ""]
    else:
        lines += ["No exercise was graded.", ""]

    flagged = [(r, e) for r in graded for e in r["exercises"] if e["status"] == "review"]
    lines += ["## Flagged for review", ""]
    if flagged:
        lines += ["Every visible case passed and no hidden case did: look at the code before "
                  "the grades go out.", "", "| student | exercise | score |", "|---|---|---:|"]
        lines += [f"| {md_text(r['student'])} | {md_text(e['name'])} | {_short(e['score'])} / "
                  f"{_short(e['max_score'])} |" for r, e in flagged]
    else:
        lines.append("Nothing to review.")
    lines.append("")

    lines += ["## Not graded", ""]
    if ungraded:
        lines += ["| student | notebook | error |", "|---|---|---|"]
        lines += [f"| {md_text(r['student'])} | {md_text(r.get('notebook', ''))} | "
                  f"{md_text(r['error'], 400)} |" for r in ungraded]
    else:
        lines.append("Every notebook could be graded.")
    return "\n".join(lines) + "\n"


def histogram_png(reports: list[dict[str, Any]]) -> bytes:
    """A PNG histogram of the graded students' scores in % of the maximum (10 % bins)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global state
    from matplotlib.figure import Figure

    scores = [100.0 * r["score"] / r["max_score"] for r in reports
              if not r["error"] and r["max_score"] > 0]
    fig = Figure(figsize=(5, 3), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.hist(scores, bins=[10.0 * k for k in range(11)], color="tab:blue", edgecolor="white")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, max(1, ax.get_ylim()[1]) if scores else 1)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("score (% of the maximum)")
    ax.set_ylabel("students")
    ax.set_title(f"Scores of {len(scores)} graded submission(s)")
    if not scores:
        ax.text(0.5, 0.5, "no graded submission", ha="center", va="center",
                transform=ax.transAxes)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _rate(k: int, n: int) -> str:
    return f"{k}/{n} ({_percent(k, n)})"


def _percent(k: int, n: int) -> str:
    return f"{100 * k / n:.0f}%" if n else "-"


def _short(x: float) -> str:
    return f"{round(float(x), 2):g}"

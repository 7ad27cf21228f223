"""Tests of the grading reports: per-student JSON versions, Gradescope, JUnit XML, Markdown.

No child process is started: the reports are crafted by hand, shaped like those of
course_lib.grading.runner.grade_notebook.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from course_lib import __version__
from course_lib.grading.class_report import (
    class_markdown,
    failing_case,
    gradescope_results,
    md_text,
    write_class_reports,
    xml_text,
)
from course_lib.grading.report import library_versions, write_atomic, write_student_json

HOSTILE = "</failure><script>alert(1)</script> | pipes | & ]]> \x00\x1b[31m `code` *bold*"


def exercise(name, status, score, max_score, feedback="", seconds=0.5):
    return {"name": name, "score": score, "max_score": max_score, "status": status,
            "passed": 0, "cases": 5, "feedback": feedback, "seconds": seconds}


def report(student, exercises, lesson="99", error=None):
    return {"student": student, "notebook": f"sub/{student}.ipynb", "lesson": lesson,
            "grader_version": "1", "course_lib_version": __version__, "device": "cpu",
            "score": sum(e["score"] for e in exercises),
            "max_score": float(sum(e["max_score"] for e in exercises)),
            "exercises": exercises, "error": error, "seconds": 3.2,
            "limits": {"timeout_s": 30.0, "memory_mb": 2048, "random_cases": 3},
            "graded_at": "2026-01-01T00:00:00+00:00"}


TWO_BOXES = ("1/5 cases passed. case 'two boxes': values differ\ninput:    a=...\n"
             "expected: [[1.]]\ngot:      [[-1.]]")


@pytest.fixture
def three():
    """Three reports of lesson 99: alice all right, bob half, carol's notebook unreadable.

    By hand: add_boxes passed 1 of 2 graded (50%), mean score (2 + 0.4) / 2 = 1.2;
    count_positive passed 2 of 2 (100%), mean 1; one full mark of 2 graded.
    """
    return [
        report("alice", [exercise("add_boxes", "passed", 2.0, 2.0, "all 5 cases passed"),
                         exercise("count_positive", "passed", 1.0, 1.0)]),
        report("bob", [exercise("add_boxes", "failed", 0.4, 2.0, TWO_BOXES),
                       exercise("count_positive", "passed", 1.0, 1.0)]),
        report("carol", [], lesson=None, error="not a readable JSON notebook"),
    ]


# ---------------------------------------------------------------------------------------------
# Per-student JSON
# ---------------------------------------------------------------------------------------------


def test_student_json_records_versions_and_device_without_changing_the_report(tmp_path, three):
    original = json.loads(json.dumps(three[0]))
    data = json.loads(write_student_json(three[0], tmp_path).read_text())
    assert three[0] == original  # the caller's dict is left alone
    assert set(data["versions"]) == {"python", "torch", "torchvision", "numpy", "course_lib"}
    assert data["versions"]["course_lib"] == __version__
    assert data["device"] == "cpu"
    assert {k: v for k, v in data.items() if k != "versions"} == original


def test_student_json_keeps_versions_already_in_the_report(tmp_path, three):
    versions = {"python": "3.11.0", "torch": "x"}
    data = json.loads(write_student_json({**three[0], "versions": versions}, tmp_path)
                      .read_text())
    assert data["versions"] == versions


def test_library_versions_match_the_imported_packages():
    import numpy
    import torch

    versions = library_versions()
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", versions["torchvision"])  # importing it is slow
    assert versions["numpy"] == numpy.__version__
    assert re.fullmatch(r"3\.\d+\.\d+.*", versions["python"])


def test_write_atomic_writes_bytes_and_text(tmp_path):
    write_atomic(tmp_path / "a.bin", b"\x89PNG\x00")
    write_atomic(tmp_path / "a.txt", "é\n")
    assert (tmp_path / "a.bin").read_bytes() == b"\x89PNG\x00"
    assert (tmp_path / "a.txt").read_bytes() == "é\n".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.txt"]


# ---------------------------------------------------------------------------------------------
# The files written
# ---------------------------------------------------------------------------------------------


def test_write_class_reports_writes_every_file(tmp_path, three):
    paths = write_class_reports(tmp_path / "out", three)
    out = tmp_path / "out"
    assert paths == [out / "gradescope" / s / "results.json" for s in ("alice", "bob", "carol")] + [
        out / "junit.xml", out / "class_report.md", out / "class_histogram.png"]
    assert all(p.is_file() for p in paths)
    assert (out / "class_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.tmp"))


def test_gradescope_results_follow_the_documented_schema(tmp_path, three):
    write_class_reports(tmp_path, three)
    bob = json.loads((tmp_path / "gradescope" / "bob" / "results.json").read_text())
    assert bob["score"] == pytest.approx(1.4) and isinstance(bob["execution_time"], int)
    assert bob["execution_time"] == 4  # 3.2 s, rounded up
    assert bob["extra_data"]["max_score"] == 3.0 and bob["extra_data"]["lesson"] == "99"
    assert set(bob["extra_data"]["versions"]) >= {"torch", "torchvision", "numpy", "python"}
    assert [t["name"] for t in bob["tests"]] == ["add_boxes", "count_positive"]
    for test in bob["tests"]:
        assert {"name", "score", "max_score", "output", "visibility", "status"} <= set(test)
        assert test["visibility"] == "visible" and test["output_format"] == "text"
        assert test["status"] in ("passed", "failed")
    add = bob["tests"][0]
    assert (add["score"], add["max_score"], add["status"]) == (0.4, 2.0, "failed")
    assert "case 'two boxes'" in add["output"] and add["output"].startswith("failed: ")
    assert sum(t["score"] for t in bob["tests"]) == pytest.approx(bob["score"])

    carol = json.loads((tmp_path / "gradescope" / "carol" / "results.json").read_text())
    assert carol["score"] == 0.0 and carol["tests"] == []
    assert "not a readable JSON notebook" in carol["output"]


def test_gradescope_visibility_is_checked():
    with pytest.raises(ValueError, match="visibility"):
        write_class_reports(None, [], visibility="students")
    assert gradescope_results(report("a", [exercise("f", "passed", 1.0, 1.0)]),
                              "after_published")["tests"][0]["visibility"] == "after_published"


def test_gradescope_folders_are_safe_and_distinct(tmp_path):
    reports = [report(name, []) for name in ("..", "a b", "a_b", "")]
    paths = write_class_reports(tmp_path, reports)[:4]
    assert [p.parent.name for p in paths] == ["_..", "a_b", "a_b-2", "_"]
    assert all(p.parent.parent == tmp_path / "gradescope" for p in paths)


def test_junit_parses_and_counts(tmp_path, three):
    three[1]["exercises"].append(exercise("third", "timeout", 0.0, 1.0, "0/5 cases passed. "
                                          "stopped by the time limit"))
    three[1]["max_score"] += 1.0
    write_class_reports(tmp_path, three)
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("6", "1", "2")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["alice", "bob", "carol"]
    bob = suites["bob"]
    assert (bob.get("tests"), bob.get("failures"), bob.get("errors")) == ("3", "1", "1")
    cases = {c.get("name"): c for c in bob.findall("testcase")}
    assert list(cases) == ["add_boxes", "count_positive", "third"]
    failure = cases["add_boxes"].find("failure")
    assert failure.get("type") == "failed" and failure.text == TWO_BOXES
    assert failure.get("message") == "1/5 cases passed. case 'two boxes': values differ"
    assert cases["count_positive"].find("failure") is None
    assert cases["third"].find("error").get("type") == "timeout"
    (notebook,) = suites["carol"].findall("testcase")
    assert notebook.get("name") == "notebook"
    assert notebook.find("error").text == "not a readable JSON notebook"
    properties = {p.get("name"): p.get("value") for p in bob.find("properties")}
    assert properties["lesson"] == "99" and properties["device"] == "cpu"


def test_markdown_pass_rates_by_hand(tmp_path, three):
    write_class_reports(tmp_path, three)
    text = (tmp_path / "class_report.md").read_text()
    assert "3 submission(s): 2 graded, 1 not graded" in text
    assert "| 99 | add\\_boxes | 2 | 1 | 50% | 1.2 / 2 |" in text
    assert "| 99 | count\\_positive | 2 | 2 | 100% | 1 / 1 |" in text
    assert "| 99 | 2 | 2.2 | 3 | 1/2 (50%) |" in text  # mean (3 + 1.4) / 2
    assert "](class_histogram.png)" in text
    assert "- 1 x failed: case 'two boxes' (bob)" in text
    assert "| carol | sub/carol.ipynb | not a readable JSON notebook |" in text


def test_most_common_failing_cases_are_counted_across_students():
    def wrong(student, case):
        return report(student, [exercise("nms", "failed", 0.0, 1.0,
                                         f"0/4 cases passed. case '{case}': values differ "
                                         f"(max abs diff {len(student)})")])

    reports = [wrong("a", "ties"), wrong("bb", "ties"), wrong("ccc", "empty"),
               report("d", [exercise("nms", "not_implemented", 0.0, 1.0, "nms is not ...")]),
               report("e", [exercise("nms", "error", 0.0, 1.0,
                                     "0/4 cases passed. a hidden random case (boxes: (7, 4) "
                                     "float32) raised IndexError: x")])]
    text = class_markdown(reports)
    lines = [line for line in text.splitlines() if line.startswith("- ")]
    assert lines[0] == "- 2 x failed: case 'ties' (a, bb)"
    assert {"- 1 x failed: case 'empty' (ccc)", "- 1 x error: a hidden random case (e)",
            "- 1 x not\\_implemented: raises NotImplementedError (d)"} == set(lines[1:])


@pytest.mark.parametrize("feedback, status, key", [
    ("0/3 cases passed. stopped by the time limit (30 s) while ...",
     "timeout", "timeout: stopped by the time limit"),
    ("1/3 cases passed. the process crashed (SIGSEGV) while running case 'x'", "error",
     "error: the process crashed"),
    ("no cell tagged 'exercise' defines nms", "error",
     "error: no cell tagged 'exercise' defines nms"),
    ("", "failed", "failed: no feedback"),
    ("flagged for review: every visible case passed but none of the 3 hidden random cases did.",
     "review", "review: the visible cases pass, no hidden case does"),
])
def test_failing_case_keys(feedback, status, key):
    assert failing_case(exercise("nms", status, 0.0, 1.0, feedback)) == key


def test_exercises_flagged_for_review_are_listed_and_are_junit_failures(tmp_path, three):
    three[1]["exercises"][1] = exercise("count_positive", "review", 0.4, 1.0,
                                        "flagged for review: every visible case passed ...")
    write_class_reports(tmp_path, three)
    text = (tmp_path / "class_report.md").read_text()
    section = text.split("## Flagged for review")[1].split("## Not graded")[0]
    assert "| bob | count\\_positive | 0.4 / 1 |" in section and "alice" not in section
    suites = ET.parse(tmp_path / "junit.xml").getroot()
    bob = next(s for s in suites if s.get("name") == "bob")
    case = next(c for c in bob if c.get("name") == "count_positive")
    assert case.find("failure") is not None and case.find("error") is None


def test_a_class_with_nothing_to_review_says_so(tmp_path, three):
    assert "## Flagged for review\n\nNothing to review." in class_markdown(three)


def test_mixed_lessons_are_reported_per_lesson(tmp_path):
    reports = [report("a", [exercise("nms", "passed", 2.0, 2.0)], lesson="05"),
               report("b", [exercise("box_iou", "failed", 0.0, 1.0, TWO_BOXES)], lesson="01"),
               report("c", [exercise("nms", "failed", 1.0, 2.0, TWO_BOXES)], lesson="05")]
    write_class_reports(tmp_path, reports)
    text = (tmp_path / "class_report.md").read_text()
    assert "lesson(s) 01, 05." in text
    assert "| 01 | 1 | 0 | 1 | 0/1 (0%) |" in text and "| 05 | 2 | 1.5 | 2 | 1/2 (50%) |" in text
    assert "| 05 | nms | 2 | 1 | 50% | 1.5 / 2 |" in text
    assert "| 01 | box\\_iou | 1 | 0 | 0% | 0 / 1 |" in text


# ---------------------------------------------------------------------------------------------
# Hostile text and empty classes
# ---------------------------------------------------------------------------------------------


def test_hostile_feedback_is_escaped_everywhere(tmp_path):
    evil = report("mallory</testsuite>", [exercise("add_boxes", "failed", 0.0, 2.0, HOSTILE),
                                           exercise("count_positive", "error", 0.0, 1.0,
                                                    f"case 'x' raised {HOSTILE}")])
    broken = report("eve|x", [], lesson=None, error=HOSTILE)
    write_class_reports(tmp_path, [evil, broken])

    root = ET.parse(tmp_path / "junit.xml").getroot()  # parses: nothing broke out
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["mallory</testsuite>", "eve|x"]
    failure = suites[0].find("testcase").find("failure")
    assert failure.text.startswith("</failure><script>alert(1)</script> | pipes | & ]]> ")
    assert "\\x00\\x1b[31m" in failure.text  # characters XML cannot hold, spelled out
    raw = (tmp_path / "junit.xml").read_text()
    assert "<script>" not in raw and "</failure><script>" not in raw

    text = (tmp_path / "class_report.md").read_text()
    assert "<script>" not in text and "</failure>" not in text
    assert "&lt;/failure&gt;&lt;script&gt;" in text
    assert "\\| pipes \\|" in text and "eve\\|x" in text
    assert "\x00" not in text and "\x1b" not in text
    for line in text.splitlines():  # every table row keeps its column count
        if line.startswith("| student") or line.startswith("| eve"):
            assert len(re.findall(r"(?<!\\)\|", line)) == 4

    results = json.loads((tmp_path / "gradescope" / "mallory__testsuite_" / "results.json")
                         .read_text())
    assert results["tests"][0]["output"] == f"failed: {HOSTILE}"  # JSON keeps it exactly
    assert results["tests"][0]["output_format"] == "text"  # shown as text, never as HTML


def test_md_and_xml_text_helpers():
    assert md_text("a|b\n*c* <d> [e](f) `g`") == r"a\|b \*c\* &lt;d&gt; \[e\]\(f\) \`g\`"
    assert md_text("x" * 300, limit=10) == "xxxxxxx..."
    assert xml_text("ok\tfine\n\x07\ufffe") == "ok\tfine\n\\x07\\ufffe"


def test_empty_class(tmp_path):
    paths = write_class_reports(tmp_path / "empty", [])
    assert [p.name for p in paths] == ["junit.xml", "class_report.md", "class_histogram.png"]
    root = ET.parse(paths[0]).getroot()
    assert root.findall("testsuite") == [] and root.get("tests") == "0"
    text = paths[1].read_text()
    assert "0 submission(s): 0 graded, 0 not graded." in text
    assert "No submission could be graded." in text and "No exercise was graded." in text
    assert paths[2].read_bytes()[:4] == b"\x89PNG"


def test_class_of_only_ungraded_notebooks(tmp_path):
    reports = [report("x", [], lesson=None, error="no lesson id"),
               report("y", [], lesson="42", error="unknown lesson '42'")]
    write_class_reports(tmp_path, reports)
    text = (tmp_path / "class_report.md").read_text()
    assert "| x | sub/x.ipynb | no lesson id |" in text and "unknown lesson '42'" in text
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert (root.get("tests"), root.get("errors")) == ("2", "2")

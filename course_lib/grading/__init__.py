"""The batch autograder behind ``course-grade``: sandboxed children, verdicts in the parent.

Modules, in the order a submission flows through them:

* :mod:`~course_lib.grading.notebook` reads a ``.ipynb`` and extracts its exercise cells;
* :mod:`~course_lib.grading.runner` draws the cases, runs one child per exercise, compares;
* :mod:`~course_lib.grading.sandbox` starts the child under limits and kills its group;
* :mod:`~course_lib.grading.child` is what runs inside the child (the student's code);
* :mod:`~course_lib.grading.transfer` moves plain data between them (JSON + ``.npy``);
* :mod:`~course_lib.grading.report` writes ``<student>.json`` and ``report.csv``;
* :mod:`~course_lib.grading.batch` finds a class's submissions (files, folders, zips), skips
  those already graded (content hash + grader version) and grades the rest in parallel;
* :mod:`~course_lib.grading.cli` is the ``course-grade`` command.

Library use::

    from course_lib.grading import grade_many, grade_notebook
    report = grade_notebook("alice.ipynb", device="cpu")
    reports = grade_many(["alice.ipynb", "bob.ipynb"], "grades/")  # skips unchanged ones

    from course_lib.grading.batch import find_submissions, grade_submissions
    reports = grade_submissions(find_submissions(["export.zip"], workdir), "grades/", jobs=2)
"""

from course_lib.grading.runner import GRADER_VERSION, grade_many, grade_notebook

__all__ = ["GRADER_VERSION", "grade_many", "grade_notebook"]

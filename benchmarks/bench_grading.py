"""Grading a whole class: submissions per second with every isolation on, and peak memory.

Generates a class of lesson 05 notebooks (200 by default) and grades it with
:func:`course_lib.grading.batch.grade_submissions`, as ``course-grade DIR --jobs 2`` does:

* ``correct``: the solution, each with the student's own comment (distinct files);
* ``partial``: one exercise left as the stub (``NotImplementedError``);
* ``wrong``: ``nms`` keeps every box (right only where no box suppresses another);
* ``unsolved``: the student notebook as handed out;
* ``hostile``: one of each attack of the adversarial battery (``tests/grading/adversarial``):
  lying outputs, monkeypatching, forbidden APIs, reading solutions, ``os._exit``, segfault,
  infinite loop, memory and fork bombs, background processes, huge outputs, broken notebooks.

It prints the wall-clock time, submissions per second (target: **>= 1 on 2 cores**), the peak
memory (resident set of the grader, and the rise of the machine's memory in use while grading:
grader, zygotes and children, shared pages counted once), and per kind whether every
submission got the grade it should (correct: full marks; partial: all but one exercise;
wrong: ``nms`` failed; unsolved: 0; hostile: the attacked exercise ends as the battery
expects) and that a report was written for every student: nothing lost.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_grading.py [--students 200] [--jobs 2]
[--timeout 30] [--spawn]`` (``--spawn``: no zygote, a fresh interpreter per exercise).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "grading" / "adversarial"))

from make_attacks import ATTACKS, NOTEBOOK_ATTACKS, SOURCE, Attack, make  # noqa: E402

from course_lib.grading.batch import find_submissions, grade_submissions  # noqa: E402

STUDENT_VERSION = ROOT / "notebooks" / "05_iou_nms_map.ipynb"
EXERCISES = ("box_iou", "nms", "soft_nms", "average_precision")


def write_class(folder: Path, students: int) -> dict[str, tuple[str, object]]:
    """Write the class into ``folder``; returns ``student -> (kind, detail)``."""
    kinds: dict[str, tuple[str, object]] = {}
    attacks = list(ATTACKS + NOTEBOOK_ATTACKS)
    for attack in attacks:
        make(attack, folder / f"hostile_{attack.name}.ipynb")
        kinds[f"hostile_{attack.name}"] = ("hostile", attack)
    rest = students - len(attacks)
    plain = {"partial": rest // 10, "wrong": rest // 10, "unsolved": rest // 10}
    plain["correct"] = rest - sum(plain.values())
    solution = json.loads(SOURCE.read_text(encoding="utf-8"))
    for k in range(plain["correct"]):
        nb = json.loads(json.dumps(solution))
        nb["cells"][0]["source"] = [f"<!-- student {k} -->\n", *nb["cells"][0]["source"]]
        name = f"correct_{k:03d}"
        (folder / f"{name}.ipynb").write_text(json.dumps(nb), encoding="utf-8")
        kinds[name] = ("correct", None)
    for k in range(plain["partial"]):
        target = EXERCISES[k % len(EXERCISES)]
        attack = Attack(f"partial_{k:03d}", "one exercise left undone", target=target,
                        body="raise NotImplementedError")
        make(attack, folder / f"{attack.name}.ipynb")
        kinds[attack.name] = ("partial", target)
    for k in range(plain["wrong"]):
        attack = Attack(f"wrong_{k:03d}", "nms keeps every box", target="nms",
                        body=f"return torch.arange(len(scores))  # {k}")
        make(attack, folder / f"{attack.name}.ipynb")
        kinds[attack.name] = ("wrong", "nms")
    unsolved = STUDENT_VERSION.read_text(encoding="utf-8")
    for k in range(plain["unsolved"]):
        (folder / f"unsolved_{k:03d}.ipynb").write_text(unsolved, encoding="utf-8")
        kinds[f"unsolved_{k:03d}"] = ("unsolved", None)
    return kinds


def as_expected(kind: str, detail: object, report: dict) -> bool:
    """Whether a report is the grade its kind of submission must get."""
    by_name = {e["name"]: e for e in report["exercises"]}
    if kind == "correct":
        return report["score"] == report["max_score"] == len(EXERCISES)
    if kind in ("partial", "wrong"):
        status = "not_implemented" if kind == "partial" else "failed"
        others = [e for name, e in by_name.items() if name != detail]
        return (by_name[detail]["status"] == status and len(others) == len(EXERCISES) - 1
                and by_name[detail]["score"] < by_name[detail]["max_score"]
                and all(e["status"] == "passed" for e in others))
    if kind == "unsolved":
        return report["score"] == 0 and all(e["status"] == "not_implemented"
                                            for e in report["exercises"])
    attack: Attack = detail
    if not attack.statuses:  # an unreadable notebook: an error report, no exercise
        return bool(report["error"]) and report["score"] == 0
    target = by_name.get(attack.target)
    if target is None or target["status"] not in attack.statuses:
        return False
    return not attack.zero or target["score"] < target["max_score"]


class MemoryPeak:
    """Samples the resident memory of this process and the machine's memory in use."""

    def __init__(self, every_s: float = 0.1):
        self.every_s, self.stop = every_s, threading.Event()
        self.baseline_mb = self.machine_mb = psutil.virtual_memory().used / 2**20
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemoryPeak:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.machine_mb = max(self.machine_mb, psutil.virtual_memory().used / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds per exercise (default: 30, as course-grade)")
    parser.add_argument("--spawn", action="store_true",
                        help="no zygote: a fresh interpreter for every exercise")
    args = parser.parse_args()
    if args.spawn:
        os.environ["COURSE_GRADE_NO_ZYGOTE"] = "1"
    if args.students < len(ATTACKS) + len(NOTEBOOK_ATTACKS) + 10:
        parser.error(f"--students must be at least {len(ATTACKS) + len(NOTEBOOK_ATTACKS) + 10}")

    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        folder, out = Path(tmp) / "submissions", Path(tmp) / "grades"
        folder.mkdir()
        kinds = write_class(folder, args.students)
        submissions = find_submissions([folder], tmp)
        print(f"{len(submissions)} submissions of lesson 05 ({os.cpu_count()} cores, "
              f"--jobs {args.jobs}, --timeout {args.timeout:g} s, "
              f"{'a fresh interpreter per exercise' if args.spawn else 'zygote'}; "
              f"root: {os.geteuid() == 0})")
        start = time.monotonic()
        with MemoryPeak() as peak:
            reports = grade_submissions(submissions, out, device="cpu", timeout=args.timeout,
                                        memory_mb=1024, jobs=args.jobs)
        seconds = time.monotonic() - start
        written = {p.stem for p in out.glob("*.json")}

    rate = len(reports) / seconds
    print(f"graded {len(reports)} in {seconds:.1f} s: {rate:.2f} submissions/s "
          f"(target >= 1: {'PASS' if rate >= 1 else 'FAIL'})")
    grader_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory: grader {grader_mb:.0f} MB resident; the machine's memory in use rose "
          f"by at most {peak.machine_mb - peak.baseline_mb:.0f} MB (grader, zygotes, children)")
    print()
    print("| kind | submissions | as expected | mean score | mean seconds |")
    print("|---|---:|---:|---:|---:|")
    wrong = []
    for kind in ("correct", "partial", "wrong", "unsolved", "hostile"):
        group = [r for r in reports if kinds[r["student"]][0] == kind]
        ok = [as_expected(*kinds[r["student"]], r) for r in group]
        wrong += [r for r, good in zip(group, ok, strict=True) if not good]
        print(f"| {kind} | {len(group)} | {sum(ok)} | "
              f"{sum(r['score'] for r in group) / len(group):.2f} | "
              f"{sum(r['seconds'] for r in group) / len(group):.2f} |")
    lost = sorted(set(kinds) - written)
    print()
    print(f"reports written: {len(written)}/{len(kinds)}; lost: {lost or 'none'}")
    print(f"not as expected: {len(wrong) or 'none'}")
    for report in wrong:
        print(f"  {report['student']}: {report['error'] or ''}")
        for e in report["exercises"]:
            if e["status"] != "passed":
                print(f"    {e['name']} {e['status']}: {e['feedback'].splitlines()[0][:200]}")
    if lost or wrong or rate < 1:
        sys.exit(1)


if __name__ == "__main__":
    main()

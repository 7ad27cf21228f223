"""The exercise protocol: one table of cases drives self-checks, tests and the grader.

An :class:`Exercise` names the function a student writes (the name equals the ``course_lib``
reference it is graded against), the reference itself, a table of small readable
:class:`Case` objects (the lecture's worked examples and the edge cases), and a generator of
fresh random inputs that the grader draws at grading time.

Values that cross the protocol are *plain*: tensors become ``numpy.ndarray``, Python scalars
stay scalars, tuples stay tuples, and a dict becomes the tuple of its ``(key, value)`` pairs in
key order (so a function that returns a dict of metrics can be graded too). Comparison happens on
plain values only, so an object with a rigged ``__eq__`` never takes part in a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from course_lib.device import get_device

Plain = np.ndarray | float | int | bool | str | None | tuple


@dataclass(frozen=True)
class Case:
    """One named input of an exercise.

    Attributes:
        name: short description shown to the student (``"lecture example"``).
        kwargs: keyword arguments of the exercise function; tensors, numbers, strings.
        expected: the hand-worked answer, or ``None`` to ask the reference.
        note: why the case matters, shown when it fails.
    """

    name: str
    kwargs: Mapping[str, Any]
    expected: Any = None
    note: str = ""


@dataclass(frozen=True)
class Exercise:
    """An exercise: the function to write, its reference, its cases and how to compare.

    Attributes:
        name: the function's name, equal to the reference's public name.
        reference: the ``course_lib`` implementation the answer is compared with.
        cases: the visible cases (small, readable, lecture examples and edge cases first).
        random_case: ``rng -> kwargs``; fresh hidden inputs for the grader.
        atol: absolute tolerance for float outputs.
        rtol: relative tolerance for float outputs.
        exact: compare integer outputs (indices) exactly, order included.
        hint: one sentence shown when a case fails.
        points: what the exercise is worth in the grade.
        prepare: ``kwargs -> kwargs`` applied to a case's inputs (already cloned onto the
            device) just before the call, where the function runs; for arguments that are not
            plain data and so cannot be written in a case or cross to the grader's child
            process, e.g. ``model_seed=3`` becoming ``model=tiny_fcn(3)``. Must be a
            module-level function of ``course_lib.exercises`` (the child imports it by name).
        forbidden: dotted names the answer must not use, on top of the reference itself
            (always forbidden): library functions (``"torchvision.ops.nms"``), C++ operators
            (``"torch.ops.torchvision.nms"``) or whole packages (``"pycocotools"``). The grader
            makes them raise inside its sandbox and gives 0 to an answer that uses them.
    """

    name: str
    reference: Callable[..., Any]
    cases: tuple[Case, ...]
    random_case: Callable[[np.random.Generator], dict[str, Any]]
    atol: float = 1e-5
    rtol: float = 1e-5
    exact: bool = False
    hint: str = ""
    points: float = 1.0
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    forbidden: tuple[str, ...] = ()

    @property
    def forbidden_apis(self) -> tuple[str, ...]:
        """Everything the answer must not use: the reference's dotted name, then ``forbidden``."""
        own = f"{self.reference.__module__}.{self.reference.__name__}"
        return (own, *(name for name in self.forbidden if name != own))

    def inputs(self, kwargs: Mapping[str, Any], device: str | torch.device = "cpu"
               ) -> dict[str, Any]:
        """The arguments of one call: ``kwargs`` cloned onto ``device``, then prepared."""
        cloned = clone_kwargs(kwargs, device)
        return cloned if self.prepare is None else self.prepare(cloned)

    def expected(self, case: Case) -> Plain:
        """The plain expected output of ``case`` (hand-worked, or from the reference on CPU)."""
        if case.expected is not None:
            return to_plain(case.expected)
        return to_plain(self.reference(**self.inputs(case.kwargs, "cpu")))


@dataclass
class CaseResult:
    """What happened on one case.

    Attributes:
        case: the case's name.
        status: ``"passed"``, ``"failed"``, ``"error"`` or ``"not_implemented"``.
        message: why it did not pass (empty when passed).
    """

    case: str
    status: str
    message: str = ""

    @property
    def passed(self) -> bool:
        """Whether the case passed."""
        return self.status == "passed"


@dataclass
class CheckReport:
    """The result of :func:`check`: truthy when every case passed."""

    name: str
    results: list[CaseResult] = field(default_factory=list)

    @property
    def num_passed(self) -> int:
        """How many cases passed."""
        return sum(r.passed for r in self.results)

    def __bool__(self) -> bool:
        return bool(self.results) and self.num_passed == len(self.results)

    def __repr__(self) -> str:
        return f"CheckReport({self.name!r}, {self.num_passed}/{len(self.results)} passed)"

    def _ipython_display_(self) -> None:
        """Show nothing in a notebook: :func:`check` has already printed the report."""


# ---------------------------------------------------------------------------------------------
# Plain values
# ---------------------------------------------------------------------------------------------


def clone_kwargs(kwargs: Mapping[str, Any], device: str | torch.device = "cpu") -> dict[str, Any]:
    """Copy the case's inputs (tensors cloned onto ``device``) so a function cannot alter them."""
    dev = get_device(device)
    return {k: v.detach().clone().to(dev) if isinstance(v, torch.Tensor) else v
            for k, v in kwargs.items()}


def to_plain(value: Any) -> Plain:
    """Convert an exercise output to plain data: tensors to NumPy arrays, tuples stay tuples.

    A dict with ``str`` or ``int`` keys becomes the tuple of its ``(key, plain value)`` pairs,
    sorted by key (ints first), so two dicts agree whatever their insertion order, and the
    result crosses to the grader like any tuple: ``{"b": 1, "a": x}`` ->
    ``(("a", plain(x)), ("b", 1))``.

    Raises:
        TypeError: for anything that is not a tensor, array, number, string, ``None``, a
            tuple/list of those or a dict of those with ``str``/``int`` keys, naming the type
            that was found.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().copy()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError("returned an object array; expected a Tensor of numbers")
        return value.copy()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) in (tuple, list):
        return tuple(to_plain(v) for v in value)
    if type(value) is dict:
        items = [(_plain_key(k), to_plain(v)) for k, v in value.items()]
        return tuple(sorted(items, key=lambda item: _key_order(item[0])))
    raise TypeError(
        f"returned a {type(value).__name__}; expected a Tensor, a number or a tuple of those"
    )


def _plain_key(key: Any) -> str | int:
    """A dict key of an output: ``str`` or ``int`` (NumPy integers become ``int``)."""
    if type(key) in (str, int):
        return key
    if isinstance(key, np.integer):
        return int(key)
    raise TypeError(f"returned a dict with a key of type {type(key).__name__}; "
                    "expected str or int keys")


def _key_order(key: str | int) -> tuple[bool, str | int]:
    return isinstance(key, str), key


def _dict_keys(value: Any) -> list[str | int] | None:
    """The keys of a dict made plain by :func:`to_plain`, or ``None`` for any other value."""
    if not isinstance(value, tuple) or not value or not all(
            isinstance(item, tuple) and len(item) == 2 and type(item[0]) in (str, int)
            for item in value):
        return None
    order = [_key_order(k) for k, _ in value]
    if any(a >= b for a, b in zip(order, order[1:], strict=False)):
        return None
    return [k for k, _ in value]


def _type_name(value: Any) -> str:
    return "dict" if _dict_keys(value) is not None else type(value).__name__


def compare(got: Plain, expected: Plain, atol: float = 1e-5, rtol: float = 1e-5,
            exact: bool = False) -> str | None:
    """Compare two plain values.

    Dicts (tuples of ``(key, value)`` pairs, see :func:`to_plain`) agree when they have the
    same keys and their values agree; the reason names the keys (``"['per_class'][3]['FP']:
    1 != expected 0"``).

    Returns:
        ``None`` when they agree, else a short reason (``"shape (3,) != expected (2,)"``).
    """
    keys, got_keys = _dict_keys(expected), _dict_keys(got)
    if keys is not None and got_keys is not None:
        if got_keys != keys:
            missing = [k for k in keys if k not in got_keys]
            unexpected = [k for k in got_keys if k not in keys]
            return "keys differ: " + "; ".join(
                f"{what} {', '.join(map(repr, ks))}" for what, ks in
                (("missing", missing), ("unexpected", unexpected)) if ks)
        for key, (_, g), (_, e) in zip(keys, got, expected, strict=True):
            reason = compare(g, e, atol, rtol, exact)
            if reason is not None:
                return f"[{key!r}]" + (reason if reason.startswith("[") else f": {reason}")
        return None
    if isinstance(expected, tuple):
        if not isinstance(got, tuple):
            if keys is not None:
                return f"returned {_type_name(got)}; expected a dict with keys {keys}"
            return f"returned a single value; expected a tuple of {len(expected)}"
        if len(got) != len(expected):
            return f"returned a tuple of {len(got)}; expected {len(expected)}"
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            reason = compare(g, e, atol, rtol, exact)
            if reason is not None:
                return f"element {i} of the tuple: {reason}"
        return None
    if isinstance(expected, np.ndarray):
        if not isinstance(got, np.ndarray):
            return f"returned {_type_name(got)}; expected a Tensor of shape {expected.shape}"
        if got.shape != expected.shape:
            return f"shape {tuple(got.shape)} != expected {tuple(expected.shape)}"
        if exact or expected.dtype.kind in "iub":
            if got.dtype.kind not in "iub":
                return f"dtype {got.dtype} but expected integers ({expected.dtype})"
            if not np.array_equal(got, expected):
                return "values differ (indices must match exactly, in the same order)"
            return None
        if got.dtype.kind not in "fiub":
            return f"dtype {got.dtype} is not numeric"
        g, e = got.astype(np.float64), expected.astype(np.float64)
        if not np.allclose(g, e, atol=atol, rtol=rtol, equal_nan=True):
            if (np.isnan(g) != np.isnan(e)).any():
                return "values differ (NaN where a number is expected, or the reverse)"
            worst = np.nanmax(np.abs(g - e)) if g.size else 0.0
            return f"values differ (largest difference {worst:.3g})"
        return None
    if isinstance(expected, (bool, int, float)):
        if isinstance(got, np.ndarray) and got.size == 1:
            got = got.item()
        if not isinstance(got, (bool, int, float)):
            return f"returned {_type_name(got)}; expected a number"
        if math.isnan(expected) and math.isnan(got):
            return None
        if not math.isclose(got, expected, rel_tol=rtol, abs_tol=atol):
            return f"{got!r} != expected {expected!r}"
        return None
    if type(got) is not type(expected) or got != expected:  # never `array != str`
        return f"{got!r} != expected {expected!r}"
    return None


def shorten(value: Any, limit: int = 160) -> str:
    """A one-line, shortened text form of a value for feedback."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        with np.printoptions(precision=4, suppress=True, threshold=24, edgeitems=3):
            text = np.array2string(value, separator=", ")
        text = f"{text} (shape {tuple(value.shape)})" if value.ndim > 1 else text
    elif _dict_keys(value) is not None:
        text = "{" + ", ".join(f"{k!r}: {shorten(v, limit)}" for k, v in value) + "}"
    elif isinstance(value, tuple):
        text = "(" + ", ".join(shorten(v, limit) for v in value) + ")"
    else:
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_kwargs(kwargs: Mapping[str, Any]) -> str:
    """Shapes and scalars only, for feedback on hidden cases (never the values of a tensor)."""
    parts = []
    for k, v in kwargs.items():
        if isinstance(v, (torch.Tensor, np.ndarray)):
            parts.append(f"{k}: shape {tuple(v.shape)}")
        else:
            parts.append(f"{k}={v!r}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Running cases
# ---------------------------------------------------------------------------------------------


def run_case(fn: Callable[..., Any], exercise: Exercise, case: Case,
             device: str | torch.device = "cpu") -> CaseResult:
    """Call ``fn`` on one case and compare its output with the expected one."""
    expected = exercise.expected(case)
    try:
        got = to_plain(fn(**exercise.inputs(case.kwargs, device)))
    except NotImplementedError:
        return CaseResult(case.name, "not_implemented", "not implemented yet")
    except Exception as exc:  # the student's code may raise anything
        return CaseResult(case.name, "error", f"{type(exc).__name__}: {exc}")
    reason = compare(got, expected, exercise.atol, exercise.rtol, exercise.exact)
    if reason is None:
        return CaseResult(case.name, "passed")
    inputs = ", ".join(f"{k}={shorten(v, 120)}" for k, v in case.kwargs.items())
    message = f"{reason}\n      input:    {inputs}\n      expected: {shorten(expected)}" \
              f"\n      got:      {shorten(got)}"
    return CaseResult(case.name, "failed", message)


def check(fn: Callable[..., Any], exercise: Exercise, device: str | torch.device = "auto",
          verbose: bool = True) -> CheckReport:
    """Run every visible case of ``exercise`` on ``fn`` and print one line per case.

    The first failing case also shows its input, the expected and the received value. An
    exercise that still raises ``NotImplementedError`` prints a single friendly line.

    Args:
        fn: the student's function.
        exercise: the exercise it answers.
        device: where the inputs live (``"auto"``: CUDA when available).
        verbose: print the report.

    Returns:
        A :class:`CheckReport`, truthy when every case passed.
    """
    report = CheckReport(exercise.name)
    report.results = [run_case(fn, exercise, case, device) for case in exercise.cases]
    if not verbose:
        return report
    if any(r.status == "not_implemented" for r in report.results):
        print(f"{exercise.name}: not implemented yet - replace the `raise NotImplementedError` "
              "line in its cell with your code, run that cell, then run this check again.")
        return report
    shown_failure = False
    for case, r in zip(exercise.cases, report.results, strict=True):
        mark = "\u2713" if r.passed else "\u2717"
        print(f"  {mark} {r.case}")
        if not r.passed and not shown_failure:
            print(f"      {r.message}")
            if case.note:
                print(f"      why it matters: {case.note}")
            if exercise.hint:
                print(f"      hint: {exercise.hint}")
            shown_failure = True
    total = len(report.results)
    verdict = "all passed" if report else "keep going"
    print(f"{exercise.name}: {report.num_passed}/{total} cases passed - {verdict}")
    return report


def solved_or_reference(fn: Callable[..., Any], exercise: Exercise) -> Callable[..., Any]:
    """Return ``fn`` when it passes every visible case, else the reference with a notice.

    Later cells of a lesson call this so that a student notebook runs top to bottom even
    before the exercise is solved.
    """
    report = check(fn, exercise, device="cpu", verbose=False)
    if report:
        return fn
    why = ("is not implemented yet" if any(r.status == "not_implemented" for r in report.results)
           else "does not pass its self-check yet")
    ref = exercise.reference
    print(f"Note: your {exercise.name} {why}; the cells below use the reference "
          f"{ref.__module__}.{ref.__name__} instead.")
    return ref

"""Tests of the exercise protocol (course_lib/exercises/core.py) on a tiny fake exercise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from course_lib.device import available_devices
from course_lib.exercises.core import (
    Case,
    CaseResult,
    CheckReport,
    Exercise,
    check,
    clone_kwargs,
    compare,
    describe_kwargs,
    run_case,
    shorten,
    solved_or_reference,
    to_plain,
)

DEVICES = available_devices()


def double(x):
    """The fake exercise's reference."""
    return x * 2


EXERCISE = Exercise(
    name="double",
    reference=double,
    cases=(
        Case("lecture example", {"x": torch.tensor([1.0, 2.0])}, note="the worked example"),
        Case("empty", {"x": torch.zeros(0)}),
        Case("hand-worked", {"x": torch.tensor([3.0])}, expected=torch.tensor([6.0])),
    ),
    random_case=lambda rng: {"x": torch.from_numpy(rng.random(4))},
    hint="multiply every element by two",
)


def correct(x):
    return x + x


def triple(x):  # wrong, except on the empty case
    return x * 3


def not_implemented(x):
    raise NotImplementedError("double: write your solution here")


def crashes(x):
    raise RuntimeError("boom")


def in_place(x):
    return x.mul_(2)


# ---------------------------------------------------------------------------------------------
# to_plain, compare and friends
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_to_plain_tensor_is_an_independent_numpy_copy(device):
    t = torch.tensor([1.0, 2.0], device=device, requires_grad=True)
    plain = to_plain(t)
    assert isinstance(plain, np.ndarray) and plain.dtype == np.float32
    np.testing.assert_array_equal(plain, [1.0, 2.0])
    with torch.no_grad():
        t.add_(1)
    np.testing.assert_array_equal(plain, [1.0, 2.0])


def test_to_plain_arrays_scalars_and_sequences():
    a = np.arange(3)
    plain = to_plain(a)
    a[0] = 7
    assert plain.tolist() == [0, 1, 2]
    for value, kind in [(np.float32(1.5), float), (np.int64(4), int), (np.bool_(True), bool)]:
        assert type(to_plain(value)) is kind and to_plain(value) == value
    for value in (None, True, 3, 2.5, "text"):
        assert to_plain(value) is value
    nested = to_plain([torch.tensor([1]), (2, torch.tensor(0.5))])
    assert isinstance(nested, tuple) and isinstance(nested[1], tuple)
    assert nested[0].tolist() == [1] and nested[1][0] == 2 and nested[1][1] == 0.5


class RiggedInt(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


@pytest.mark.parametrize("value, word", [
    ({(1, 2): 3}, "key of type tuple"),
    (np.array([1, None], dtype=object), "object array"),
    (RiggedInt(3), "RiggedInt"),
    ((1, {2}), "set"),
])
def test_to_plain_rejects_other_types_naming_them(value, word):
    with pytest.raises(TypeError, match=word):
        to_plain(value)


F = np.array
COMPARE_CASES = [
    # (got, expected, kwargs, reason: None or a fragment of it)
    (F([1.0, 2.0]), F([1.0, 2.0]), {}, None),
    (F([1.0]), F([1.0 + 1e-7]), {}, None),
    (F([1.0]), F([1.1]), {"atol": 0.2}, None),
    (F([1.0, 2.0]), F([1.0, 2.5]), {}, "values differ (largest difference 0.5)"),
    (F([1.0, 2.0, 3.0]), F([1.0, 2.0]), {}, "shape (3,) != expected (2,)"),
    (np.zeros((0,)), np.zeros((0, 4)), {}, "shape (0,) != expected (0, 4)"),
    (np.zeros((0, 4)), np.zeros((0, 4)), {}, None),
    (1.0, F([1.0, 2.0]), {}, "returned float; expected a Tensor of shape (2,)"),
    (F([0.0, 1.0], dtype=np.float32), F([0, 1]), {}, "dtype float32 but expected integers"),
    (F([1, 0]), F([0, 1]), {}, "indices must match exactly, in the same order"),
    (F([0, 1], dtype=np.int32), F([0, 1]), {}, None),
    (F([True, False]), F([True, False]), {}, None),
    (F([1.0, np.nan]), F([1.0, np.nan]), {}, None),
    (F([1.0, np.nan]), F([1.0, 2.0]), {}, "NaN where a number is expected"),
    (F(["a"]), F([1.0]), {}, "is not numeric"),
    (F([1.0]), (F([1.0]), F([2.0])), {}, "returned a single value; expected a tuple of 2"),
    ((F([1.0]),), (F([1.0]), F([2.0])), {}, "returned a tuple of 1; expected 2"),
    ((F([1.0]), F([3.0])), (F([1.0]), F([2.0])), {}, "element 1 of the tuple: values differ"),
    ((F([1.0]), 0.5), (F([1.0]), 0.5), {}, None),
    (0.5, 0.5 + 1e-7, {}, None),
    (0.5, 0.6, {}, "0.5 != expected 0.6"),
    (math.nan, math.nan, {}, None),
    (F([0.5]), 0.5, {}, None),
    (F([0.5, 0.5]), 0.5, {}, "returned ndarray; expected a number"),
    ("0.5", 0.5, {}, "returned str; expected a number"),
    (3, 3, {}, None),
    ("linear", "linear", {}, None),
    ("gaussian", "linear", {}, "'gaussian' != expected 'linear'"),
    (F([1, 2]), "linear", {}, "!= expected 'linear'"),
    (None, None, {}, None),
    (F([1, 2]), None, {}, "!= expected None"),
]


@pytest.mark.parametrize("got, expected, kwargs, reason", COMPARE_CASES)
def test_compare(got, expected, kwargs, reason):
    result = compare(got, expected, **kwargs)
    if reason is None:
        assert result is None
    else:
        assert result is not None and reason in result, result


def test_compare_exact_requires_integer_outputs():
    assert compare(F([0.0, 1.0]), F([0, 1]), exact=True).startswith("dtype float64")
    assert compare(F([0, 1]), F([0, 1]), exact=True) is None


def test_clone_kwargs_copies_tensors_only():
    x, flag = torch.tensor([1.0]), object()
    cloned = clone_kwargs({"x": x, "flag": flag})
    assert cloned["flag"] is flag and cloned["x"] is not x
    cloned["x"].add_(1)
    assert x.item() == 1.0


def test_shorten_and_describe_kwargs():
    assert shorten(torch.tensor([1.0, 2.5])) == "[1. , 2.5]"
    assert shorten("x" * 500, limit=20) == "'" + "x" * 16 + "..."
    assert shorten((1, torch.zeros(2, 2))) == "(1, [[0., 0.], [0., 0.]] (shape (2, 2)))"
    text = describe_kwargs({"boxes": torch.rand(3, 4), "iou_threshold": 0.5})
    assert text == "boxes: shape (3, 4), iou_threshold=0.5"


# ---------------------------------------------------------------------------------------------
# run_case
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_run_case_passes_on_the_requested_device(device):
    seen = []

    def answer(x):
        seen.append(x.device.type)
        return x * 2

    result = run_case(answer, EXERCISE, EXERCISE.cases[0], device=device)
    assert result == CaseResult("lecture example", "passed") and result.passed
    assert seen == [device]


def test_run_case_failure_shows_reason_input_expected_and_got():
    result = run_case(triple, EXERCISE, EXERCISE.cases[0])
    assert result.status == "failed" and not result.passed
    lines = result.message.split("\n")
    assert lines[0] == "values differ (largest difference 2)"
    assert lines[1:] == ["      input:    x=[1., 2.]", "      expected: [2., 4.]",
                         "      got:      [3., 6.]"]


@pytest.mark.parametrize("fn, status, message", [
    (not_implemented, "not_implemented", "not implemented yet"),
    (crashes, "error", "RuntimeError: boom"),
    (lambda x: {"x": {1, 2}}, "error", "TypeError: returned a set"),
])
def test_run_case_not_implemented_and_errors(fn, status, message):
    result = run_case(fn, EXERCISE, EXERCISE.cases[0])
    assert result.status == status and result.message.startswith(message)


def test_run_case_uses_the_hand_worked_answer_and_protects_the_inputs():
    hand_worked = Case("hand", {"x": torch.tensor([1.0])}, expected=torch.tensor([5.0]))
    assert run_case(lambda x: x * 5, EXERCISE, hand_worked).passed
    assert not run_case(double, EXERCISE, hand_worked).passed
    case = EXERCISE.cases[0]
    assert run_case(in_place, EXERCISE, case).passed
    assert case.kwargs["x"].tolist() == [1.0, 2.0]  # the in-place answer changed a copy


# ---------------------------------------------------------------------------------------------
# check: what the student sees
# ---------------------------------------------------------------------------------------------


def test_check_all_passed(capsys):
    report = check(correct, EXERCISE, device="cpu")
    assert capsys.readouterr().out == (
        "  \u2713 lecture example\n  \u2713 empty\n  \u2713 hand-worked\n"
        "double: 3/3 cases passed - all passed\n")
    assert report and report.num_passed == 3
    assert repr(report) == "CheckReport('double', 3/3 passed)"


def test_check_shows_details_of_the_first_failure_only(capsys):
    report = check(triple, EXERCISE, device="cpu")
    out = capsys.readouterr().out
    assert out == (
        "  \u2717 lecture example\n"
        "      values differ (largest difference 2)\n"
        "      input:    x=[1., 2.]\n"
        "      expected: [2., 4.]\n"
        "      got:      [3., 6.]\n"
        "      why it matters: the worked example\n"
        "      hint: multiply every element by two\n"
        "  \u2713 empty\n"
        "  \u2717 hand-worked\n"
        "double: 1/3 cases passed - keep going\n")
    assert not report and [r.status for r in report.results] == ["failed", "passed", "failed"]


def test_check_shows_the_note_of_the_case_that_failed(capsys):
    twins = Exercise("double", double, (
        Case("twin", {"x": torch.tensor([0.0])}, note="first note"),
        Case("twin", {"x": torch.tensor([1.0])}, note="second note"),
    ), random_case=EXERCISE.random_case)
    check(triple, twins, device="cpu")  # 0 * 3 == 0 passes, 1 * 3 fails
    out = capsys.readouterr().out
    assert "why it matters: second note" in out and "first note" not in out


def test_check_not_implemented_prints_one_friendly_line(capsys):
    report = check(not_implemented, EXERCISE, device="cpu")
    assert capsys.readouterr().out == (
        "double: not implemented yet - replace the `raise NotImplementedError` line in its "
        "cell with your code, run that cell, then run this check again.\n")
    assert not report
    assert {r.status for r in report.results} == {"not_implemented"}


def test_check_quiet_and_empty_reports(capsys):
    report = check(crashes, EXERCISE, device="cpu", verbose=False)
    assert capsys.readouterr().out == ""
    assert [r.message for r in report.results] == ["RuntimeError: boom"] * 3
    assert not CheckReport("double")  # no cases run: never a pass


# ---------------------------------------------------------------------------------------------
# solved_or_reference
# ---------------------------------------------------------------------------------------------


def test_solved_or_reference_returns_a_passing_answer_silently(capsys):
    assert solved_or_reference(correct, EXERCISE) is correct
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("fn, why", [
    (not_implemented, "is not implemented yet"),
    (triple, "does not pass its self-check yet"),
    (crashes, "does not pass its self-check yet"),
])
def test_solved_or_reference_falls_back_with_a_notice(capsys, fn, why):
    assert solved_or_reference(fn, EXERCISE) is double
    assert capsys.readouterr().out == (
        f"Note: your double {why}; the cells below use the reference "
        f"{double.__module__}.double instead.\n")


def _scaler_from_seed(kwargs):
    """A fake ``prepare``: a case names a non-plain argument (here a Linear layer) by a seed."""
    kwargs = dict(kwargs)
    torch.manual_seed(kwargs.pop("layer_seed"))
    kwargs["layer"] = torch.nn.Linear(2, 2, bias=False).to(kwargs["x"].device)
    return kwargs


def apply_layer(layer, x):
    with torch.no_grad():
        return layer(x)


@pytest.mark.parametrize("device", DEVICES)
def test_prepare_builds_the_arguments_where_the_function_runs(device):
    ex = Exercise(name="apply_layer", reference=apply_layer, prepare=_scaler_from_seed,
                  cases=(Case("seed 0", {"x": torch.ones(3, 2), "layer_seed": 0}),),
                  random_case=lambda rng: {"x": torch.ones(1, 2), "layer_seed": 1})
    args = ex.inputs(ex.cases[0].kwargs, device)
    assert set(args) == {"layer", "x"} and args["layer"].weight.device == args["x"].device
    assert run_case(apply_layer, ex, ex.cases[0], device).passed

    def transposed(layer, x):  # a wrong answer must still fail
        return x @ layer.weight

    assert not run_case(transposed, ex, ex.cases[0], device).passed
    assert ex.cases[0].kwargs.keys() == {"x", "layer_seed"}  # the case itself is untouched

"""Built-in task ``functions``: procedurally generated small Python functions to write.

A problem is a *family* with its *constants* (its identity, e.g. ``affine`` with a=3, b=2): an
English description with the function's signature, and unit tests ``assert name(arg) ==
expected`` whose expected values come from the family's trusted reference implementation here
(``ref_*``), computed when the task is built; the model never sees that code. Rows have the
columns of :func:`groupwise.tasks.code.benchmarks.mbpp_row` (``prompt`` as chat messages, ``tests``,
``setup``, ``task_id``, plus ``entry_point``), so the sandboxed ``code_tests`` reward and
``code_pass`` correctness (:mod:`groupwise.rewards.code`) score them unchanged.

Families (``n`` an int, ``nums`` a list of ints, ``text`` lowercase words joined by single
spaces; constants in brackets; # is the number of problems):

=================  =========================  ============================================  ==
family             function                   returns                                       #
=================  =========================  ============================================  ==
affine             ``scale_and_add(n)``       ``n * a + b``  [a 2..6, b 1..6]               30
divisible          ``is_divisible(n)``        ``n % a == 0 or n % b == 0``  [2 <= a < b <=  22
                                              9, b not a multiple of a]
clamp              ``clamp(n)``               ``min(max(n, lo), hi)``  [lo 0,1,2,3,5,10;    24
                                              hi - lo 5,10,20,50]
square_plus        ``square_plus(n)``         ``n * n + b`` or ``n * n - b``  [b 1..10]     20
count_digit        ``count_digit(n)``         ``str(n).count(str(d))``, n >= 0  [d 0..9]    10
sum_multiples      ``sum_multiples(n)``       sum of the multiples of k in 1..n  [k 2..9]    8
sum_greater        ``sum_greater(nums)``      ``sum(x for x in nums if x > k)``  [k 0..20]  21
scale_list         ``scale_list(nums)``       ``[x * k for x in nums]``  [k 2..12]          11
add_to_each        ``add_to_each(nums)``      ``[x + k for x in nums]``  [k 1..15]          15
sum_between        ``sum_between(nums)``      sum of the x with lo <= x <= hi  [lo 0..9;    30
                                              hi - lo 5,10,15]
count_divisible    ``count_divisible(nums)``  how many x with ``x % k == 0``  [k 2..11]     10
count_greater      ``count_greater(nums)``    how many x with ``x > k``  [k 0..20]          21
scale_evens        ``scale_evens(nums)``      even x times k, odd x unchanged  [k 2..12]    11
replace_negatives  ``replace_negatives(nums)``  each x < 0 replaced by k  [k 0..15]         16
keep_below         ``keep_below(nums)``       ``[x for x in nums if x < k]``  [k 0..20]     21
sum_remainder      ``sum_remainder(nums)``    sum of the x with ``x % m == r``  [m 2..5,    14
                                              r 0..m-1; m = 2 is said "even"/"odd"]
sum_first          ``sum_first(nums)``        ``sum(nums[:k])``  [k 1..8]                    8
max_plus           ``max_plus(nums)``         ``max(nums) + k``, nums non-empty  [k 1..12]  12
remove_letter      ``remove_letter(text)``    ``text.replace(c, "")``  [c: 20 letters]      20
count_letter       ``count_letter(text)``     ``text.count(c)``  [c: 20 letters]            20
count_long_words   ``count_long_words(text)``  words longer than k letters  [k 2..8]         7
replace_letter     ``replace_letter(text)``   ``text.replace(a, b)``  [a a,e,i,o,u;         25
                                              b x,y,z,*,-]
repeat_text        ``repeat_text(text)``      ``sep.join([text] * k)``  [k 2..4;            15
                                              sep "-", ", ", " ", "+", "|"]
upper_first        ``upper_first(text)``      ``text[:k].upper() + text[k:]``  [k 1..8]      8
ends_with          ``ends_with(text)``        ``text.endswith(c)``  [c: 12 letters]         12
count_ending       ``count_ending(text)``     words ending in c  [c: 12 letters]            12
=================  =========================  ============================================  ==

That is 423 problems. The task seed shuffles them (:func:`groupwise.data.files.split_rows`):
the first ``eval_size`` are held out, at most ``train_size`` of the rest are for training, so
no family+constants pair is in both. Each problem gets ``num_tests`` tests (default 6) on
distinct arguments drawn with a generator seeded by the task seed and the problem's id, drawn
again until they pin the problem down (:func:`make_tests`): varied expected values, the
family's cases covered (below, inside and above a clamp's range; True and False...), and every
other problem of the family and every plausible wrong solution in :data:`MUTANTS` (``<=`` for
``<``, distinct values counted once, the last item for the largest...) failing one of them. The
prompt shows the first ``show_tests`` (default 1), chosen to be telling (not an empty list);
the others stay hidden, so a solution special-casing the shown test or returning one constant
fails most tests. ``demos`` (default 1) worked exchanges on problems of no family come before
the question: they show the expected reply (one short code block).

Difficulty (``examples/code.yaml``: seed 1234, 150 held out, ``max_new_tokens`` 96): greedy
SmolLM2-135M-Instruct fails most of the held-out problems untrained (``groupwise eval
smollm2-135m-instruct examples/code.yaml``; docs/log.md); the affine, square and whole-list
families are mostly solved, the counting ones are often right when sampled (temperature 0.7)
but not greedily, and several string families (``repeat_text``, ``upper_first``...) are near 0.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from groupwise.data.files import split_rows
from groupwise.data.tasks import Row, Task, register_task
from groupwise.rewards.code import code_pass, code_tests
from groupwise.tasks.code.benchmarks import mbpp_row

_VOCABULARY = (
    "apple banana cherry dog cat house tree river stone light green blue happy quick brown fox "
    "jumps over lazy water music paper pencil window garden summer winter yellow orange table "
    "chair book story friend family school teacher little big small moon star sun cloud rain "
    "snow road city forest ocean island bird fish horse mouse king queen castle dream smile "
    "kitchen bread cheese milk egg salt sugar coffee lemon melon pizza robot rocket planet "
    "a an to of is on it my we go up elephant computer mountain chocolate umbrella butterfly "
    "adventure wonderful strawberry beautiful notebook sandwich dinosaur"
)
WORDS = _VOCABULARY.split()
"""The vocabulary of ``text`` arguments."""
LETTERS = "abcdeghiklmnoprstuwy"  # 20 letters that many of the words contain
END_LETTERS = "adeghklnrsty"  # 12 letters that some words end with
TEXT_ARG_NOTE = "(`text` holds lowercase words separated by single spaces)"

DEMOS = (
    (
        "Write a Python function `count_negative(nums)` that returns how many numbers in the "
        "list `nums` are negative.",
        ["assert count_negative([3, -1, 0, -7]) == 2", "assert count_negative([]) == 0"],
        "```python\ndef count_negative(nums):\n    count = 0\n    for x in nums:\n"
        "        if x < 0:\n            count += 1\n    return count\n```",
    ),
    (
        "Write a Python function `shout(text)` that returns the string `text` in upper case "
        "with '!' added at the end.",
        ["assert shout('good dog') == 'GOOD DOG!'", "assert shout('') == '!'"],
        "```python\ndef shout(text):\n    return text.upper() + '!'\n```",
    ),
)
"""Worked exchanges (question, tests, reply) on problems of no family, for ``demos``."""


@dataclass(frozen=True)
class Family:
    """Problems sharing a description template, a function and a reference implementation."""

    name: str
    """Family id (first part of ``task_id``)."""
    function: str
    """The function's name; its one argument is ``arg``."""
    arg: str
    """Argument name: ``n`` (int), ``nums`` (list of ints) or ``text`` (str)."""
    text: str
    """What it returns, a template over the constants' names."""
    keys: tuple[str, ...]
    """Names of the constants, in ``task_id`` order."""
    constants: tuple[tuple[Any, ...], ...]
    """Every tuple of constants: one problem each."""
    reference: Callable[..., Any]
    """``reference(arg, **constants)``: the trusted answer."""
    sample: Callable[..., Any]
    """``sample(rng, **constants)``: one random argument for a test."""
    kind: Callable[..., Any] | None = None
    """``kind(arg, expected, **constants)``: the case's kind; every one of ``kinds`` must be
    among a problem's tests (e.g. below, inside and above a clamp's range)."""
    kinds: tuple[Any, ...] = ()
    """The kinds every problem's tests cover."""

    def describe(self, values: dict[str, Any]) -> str:
        """The problem statement (signature included) for these constants."""
        note = f" {TEXT_ARG_NOTE}" if self.arg == "text" else ""
        what = self.text.format(**values)
        return f"Write a Python function `{self.function}({self.arg})` that returns {what}{note}."


# ---- reference implementations (trusted; never shown to the model) ----


def ref_affine(n: int, a: int, b: int) -> int:
    """``n * a + b``."""
    return n * a + b


def ref_divisible(n: int, a: int, b: int) -> bool:
    """Whether ``n`` is a multiple of ``a`` or of ``b``."""
    return n % a == 0 or n % b == 0


def ref_clamp(n: int, lo: int, hi: int) -> int:
    """``n`` limited to ``lo..hi``."""
    return min(max(n, lo), hi)


def ref_square_plus(n: int, op: str, b: int) -> int:
    """``n * n + b`` (op ``plus``) or ``n * n - b`` (op ``minus``)."""
    return n * n + b if op == "plus" else n * n - b


def ref_count_digit(n: int, d: int) -> int:
    """How often the digit ``d`` occurs in the decimal ``n`` (n >= 0)."""
    return str(n).count(str(d))


def ref_sum_multiples(n: int, k: int) -> int:
    """Sum of the multiples of ``k`` in ``1..n``."""
    return sum(i for i in range(1, n + 1) if i % k == 0)


def ref_sum_greater(nums: list[int], k: int) -> int:
    """Sum of the numbers above ``k``."""
    return sum(x for x in nums if x > k)


def ref_scale_list(nums: list[int], k: int) -> list[int]:
    """Every number times ``k``."""
    return [x * k for x in nums]


def ref_add_to_each(nums: list[int], k: int) -> list[int]:
    """Every number plus ``k``."""
    return [x + k for x in nums]


def ref_sum_between(nums: list[int], lo: int, hi: int) -> int:
    """Sum of the numbers in ``lo..hi``."""
    return sum(x for x in nums if lo <= x <= hi)


def ref_count_greater(nums: list[int], k: int) -> int:
    """How many numbers are above ``k``."""
    return sum(1 for x in nums if x > k)


def ref_count_divisible(nums: list[int], k: int) -> int:
    """How many numbers are multiples of ``k``."""
    return sum(1 for x in nums if x % k == 0)


def ref_scale_evens(nums: list[int], k: int) -> list[int]:
    """Every even number times ``k``, odd ones unchanged."""
    return [x * k if x % 2 == 0 else x for x in nums]


def ref_replace_negatives(nums: list[int], k: int) -> list[int]:
    """Every negative number replaced by ``k``."""
    return [k if x < 0 else x for x in nums]


def ref_keep_below(nums: list[int], k: int) -> list[int]:
    """The numbers below ``k``, in order."""
    return [x for x in nums if x < k]


def ref_sum_remainder(nums: list[int], m: int, r: int) -> int:
    """Sum of the numbers whose remainder modulo ``m`` is ``r`` (Python's ``%``)."""
    return sum(x for x in nums if x % m == r)


def ref_sum_first(nums: list[int], k: int) -> int:
    """Sum of the first ``k`` numbers (all of them if fewer)."""
    return sum(nums[:k])


def ref_max_plus(nums: list[int], k: int) -> int:
    """The largest number plus ``k`` (``nums`` non-empty)."""
    return max(nums) + k


def ref_remove_letter(text: str, c: str) -> str:
    """``text`` without any ``c``."""
    return text.replace(c, "")


def ref_count_letter(text: str, c: str) -> int:
    """How often ``c`` occurs in ``text``."""
    return text.count(c)


def ref_count_long_words(text: str, k: int) -> int:
    """How many space-separated words have more than ``k`` letters."""
    return sum(1 for word in text.split() if len(word) > k)


def ref_replace_letter(text: str, a: str, b: str) -> str:
    """``text`` with every ``a`` replaced by ``b``."""
    return text.replace(a, b)


def ref_repeat_text(text: str, k: int, sep: str) -> str:
    """``k`` copies of ``text`` joined by ``sep``."""
    return sep.join([text] * k)


def ref_upper_first(text: str, k: int) -> str:
    """``text`` with its first ``k`` characters upper-cased."""
    return text[:k].upper() + text[k:]


def ref_ends_with(text: str, c: str) -> bool:
    """Whether ``text`` ends with ``c``."""
    return text.endswith(c)


def ref_count_ending(text: str, c: str) -> int:
    """How many space-separated words end with ``c``."""
    return sum(1 for word in text.split() if word.endswith(c))


# ---- argument samplers ----


def _int(rng: random.Random, **_: Any) -> int:
    return rng.randint(-20, 40)


def _natural(rng: random.Random, **_: Any) -> int:
    return rng.randint(0, 40)


def _multiple(rng: random.Random, k: int) -> int:
    return k * rng.randint(-6, 9) if rng.random() < 0.5 else rng.randint(-30, 60)


def _maybe_multiple(rng: random.Random, a: int, b: int) -> int:
    return _multiple(rng, rng.choice((a, b)))


def _around(rng: random.Random, lo: int, hi: int) -> int:
    return rng.randint(lo - 15, hi + 15)


def _with_digit(rng: random.Random, d: int) -> int:
    digits = [rng.choice([str(d), str(rng.randint(0, 9))]) for _ in range(rng.randint(1, 5))]
    return int("".join(digits))


def _list(
    rng: random.Random, low: int = -10, high: int = 40, min_len: int = 0, max_len: int = 7
) -> list[int]:
    return [rng.randint(low, high) for _ in range(rng.randint(min_len, max_len))]


def _list_around(rng: random.Random, k: int) -> list[int]:
    nums = _list(rng, k - 12, k + 12)
    for edge in (k - 1, k, k + 1):  # the values that tell < from <= and k from k +- 1
        if rng.random() < 0.3:
            nums.insert(rng.randint(0, len(nums)), edge)
    return nums


def _list_between(rng: random.Random, lo: int, hi: int) -> list[int]:
    nums = _list(rng, lo - 8, hi + 8)
    for edge in (lo - 1, lo, hi, hi + 1):
        if rng.random() < 0.3:
            nums.insert(rng.randint(0, len(nums)), edge)
    return nums


def _edges_between(nums: list[int], expected: Any, lo: int, hi: int) -> str:
    return "lo" if lo in nums else "hi" if hi in nums else ""


def _edges_above(nums: list[int], expected: Any, k: int) -> str:
    return "k" if k in nums else "k+1" if k + 1 in nums else ""


def _edges_below(nums: list[int], expected: Any, k: int) -> str:
    return "k" if k in nums else "k-1" if k - 1 in nums else ""


def _list_multiples(rng: random.Random, k: int) -> list[int]:
    return [_multiple(rng, k) for _ in range(rng.randint(0, 7))]


def _any_list(rng: random.Random, **_: Any) -> list[int]:
    return _list(rng)


def _long_list(rng: random.Random, **_: Any) -> list[int]:
    return _list(rng, max_len=10)


def _nonempty_list(rng: random.Random, **_: Any) -> list[int]:
    return _list(rng, min_len=1)


def _text(rng: random.Random, **_: Any) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5)))


def _text_letter(rng: random.Random, c: str = "", a: str = "", **_: Any) -> str:
    having = [w for w in WORDS if (c or a) in w]
    words = [rng.choice(having if rng.random() < 0.6 else WORDS) for _ in range(rng.randint(1, 5))]
    return " ".join(words)


def _text_words(rng: random.Random, k: int) -> str:
    short = [w for w in WORDS if len(w) <= k]
    long = [w for w in WORDS if len(w) > k]
    words = [rng.choice(long if rng.random() < 0.5 else short) for _ in range(rng.randint(1, 5))]
    return " ".join(words)


def _text_ending(rng: random.Random, c: str) -> str:
    ending = [w for w in WORDS if w.endswith(c)]
    words = [rng.choice(ending if rng.random() < 0.4 else WORDS) for _ in range(rng.randint(1, 5))]
    return " ".join(words)


def _is_true(arg: Any, expected: Any, **_: Any) -> bool:
    return bool(expected)


def _clamp_kind(n: int, expected: int, lo: int, hi: int) -> int:
    return 0 if n < lo else 2 if n > hi else 1


def _longer_than(nums: list[int], expected: int, k: int) -> bool:
    return len(nums) > k


def _range(low: int, high: int) -> tuple[tuple[int], ...]:
    return tuple((v,) for v in range(low, high + 1))


def _number_families() -> tuple[Family, ...]:
    """Families of ``f(n)`` with an int ``n``."""
    f, pairs = Family, itertools.product
    clamps = tuple((lo, lo + w) for lo in (0, 1, 2, 3, 5, 10) for w in (5, 10, 20, 50))
    either = tuple((a, b) for a in range(2, 9) for b in range(a + 1, 10) if b % a)
    return (
        f("affine", "scale_and_add", "n", "`n` multiplied by {a}, plus {b}", ("a", "b"),
          tuple(pairs(range(2, 7), range(1, 7))), ref_affine, _int),
        f("divisible", "is_divisible", "n", "True if the integer `n` is divisible by {a} or by "
          "{b}, otherwise False", ("a", "b"), either, ref_divisible, _maybe_multiple, _is_true,
          (False, True)),
        f("clamp", "clamp", "n", "`n` limited to the range {lo} to {hi}: {lo} if `n` is "
          "smaller than {lo}, {hi} if `n` is larger than {hi}, otherwise `n`", ("lo", "hi"),
          clamps, ref_clamp, _around, _clamp_kind, (0, 1, 2)),
        f("square_plus", "square_plus", "n", "`n` squared {op} {b}", ("op", "b"),
          tuple(pairs(("plus", "minus"), range(1, 11))), ref_square_plus, _int),
        f("count_digit", "count_digit", "n", "how many times the digit {d} appears in the "
          "non-negative integer `n`", ("d",), _range(0, 9), ref_count_digit, _with_digit),
        f("sum_multiples", "sum_multiples", "n", "the sum of all multiples of {k} from 1 up to "
          "and including `n`", ("k",), _range(2, 9), ref_sum_multiples, _natural),
    )  # fmt: skip


def _list_families() -> tuple[Family, ...]:
    """Families of ``f(nums)`` with a list of ints ``nums``."""
    f = Family
    betweens = tuple((lo, lo + w) for lo in range(10) for w in (5, 10, 15))
    return (
        f("sum_greater", "sum_greater", "nums", "the sum of the numbers in the list `nums` that "
          "are greater than {k}", ("k",), _range(0, 20), ref_sum_greater, _list_around,
          _edges_above, ("k", "k+1")),
        f("scale_list", "scale_list", "nums", "a new list with every number in the list `nums` "
          "multiplied by {k}", ("k",), _range(2, 12), ref_scale_list, _any_list),
        f("add_to_each", "add_to_each", "nums", "a new list with {k} added to every number in "
          "the list `nums`", ("k",), _range(1, 15), ref_add_to_each, _any_list),
        f("sum_between", "sum_between", "nums", "the sum of the numbers in the list `nums` that "
          "are between {lo} and {hi}, both included", ("lo", "hi"), betweens, ref_sum_between,
          _list_between, _edges_between, ("lo", "hi")),
        f("count_divisible", "count_divisible", "nums", "how many numbers in the list `nums` are "
          "divisible by {k}", ("k",), _range(2, 11), ref_count_divisible, _list_multiples),
        f("count_greater", "count_greater", "nums", "how many numbers in the list `nums` are "
          "greater than {k}", ("k",), _range(0, 20), ref_count_greater, _list_around,
          _edges_above, ("k", "k+1")),
        f("scale_evens", "scale_evens", "nums", "a new list in which every even number of the "
          "list `nums` is multiplied by {k} and every odd number stays the same", ("k",),
          _range(2, 12), ref_scale_evens, _any_list),
        f("replace_negatives", "replace_negatives", "nums", "a new list in which every negative "
          "number of the list `nums` is replaced by {k} and the other numbers stay the same",
          ("k",), _range(0, 15), ref_replace_negatives, _any_list),
        f("keep_below", "keep_below", "nums", "a list of the numbers in the list `nums` that are "
          "smaller than {k}, in their original order", ("k",), _range(0, 20), ref_keep_below,
          _list_around, _edges_below, ("k", "k-1")),
        f("sum_remainder", "sum_remainder", "nums", "the sum of the numbers in the list `nums` "
          "{which}", ("m", "r"), tuple((m, r) for m in range(2, 6) for r in range(m)),
          ref_sum_remainder, _any_list),
        f("sum_first", "sum_first", "nums", "the sum of the first {k} numbers in the list `nums` "
          "(of all of them if it has fewer than {k})", ("k",), _range(1, 8), ref_sum_first,
          _long_list, _longer_than, (False, True)),
        f("max_plus", "max_plus", "nums", "the largest number in the non-empty list `nums` plus "
          "{k}", ("k",), _range(1, 12), ref_max_plus, _nonempty_list),
    )  # fmt: skip


def _text_families() -> tuple[Family, ...]:
    """Families of ``f(text)`` with a string ``text`` of lowercase words."""
    f, pairs = Family, itertools.product
    return (
        f("remove_letter", "remove_letter", "text", "the string `text` with every '{c}' removed",
          ("c",), tuple((c,) for c in LETTERS), ref_remove_letter, _text_letter),
        f("count_letter", "count_letter", "text", "how many times the letter '{c}' appears in "
          "the string `text`", ("c",), tuple((c,) for c in LETTERS), ref_count_letter,
          _text_letter),
        f("count_long_words", "count_long_words", "text", "how many words in the string `text` "
          "have more than {k} letters", ("k",), _range(2, 8), ref_count_long_words, _text_words),
        f("replace_letter", "replace_letter", "text", "the string `text` with every '{a}' "
          "replaced by '{b}'", ("a", "b"), tuple(pairs("aeiou", "xyz*-")), ref_replace_letter,
          _text_letter),
        f("repeat_text", "repeat_text", "text", "the string `text` repeated {k} times, with "
          "'{sep}' between the copies", ("k", "sep"),
          tuple(pairs(range(2, 5), ("-", ", ", " ", "+", "|"))), ref_repeat_text, _text),
        f("upper_first", "upper_first", "text", "the string `text` with its first {k} "
          "characters in upper case and the rest unchanged", ("k",), _range(1, 8),
          ref_upper_first, _text),
        f("ends_with", "ends_with", "text", "True if the string `text` ends with the letter "
          "'{c}', otherwise False", ("c",), tuple((c,) for c in END_LETTERS), ref_ends_with,
          _text_ending, _is_true, (False, True)),
        f("count_ending", "count_ending", "text", "how many words in the string `text` end with "
          "the letter '{c}'", ("c",), tuple((c,) for c in END_LETTERS), ref_count_ending,
          _text_ending),
    )  # fmt: skip


FAMILIES: dict[str, Family] = {
    family.name: family for family in (*_number_families(), *_list_families(), *_text_families())
}
"""Every family by name."""

MUTANTS: dict[str, tuple[Callable[..., Any], ...]] = {
    "affine": (lambda n, a, b: (n + b) * a,),
    "divisible": (
        lambda n, a, b: n % a == 0 and n % b == 0,
        lambda n, a, b: n % a == 0,
        lambda n, a, b: n % b == 0,
    ),
    "clamp": (lambda n, lo, hi: max(n, lo), lambda n, lo, hi: min(n, hi)),
    "sum_multiples": (lambda n, k: sum(i for i in range(1, n) if i % k == 0),),
    "sum_greater": (
        lambda nums, k: sum(x for x in nums if x >= k) if k else None,
        lambda nums, k: sum({x for x in nums if x > k}),
    ),
    "sum_between": (
        lambda nums, lo, hi: sum(x for x in nums if lo < x < hi),
        lambda nums, lo, hi: sum({x for x in nums if lo <= x <= hi}),
    ),
    "count_divisible": (lambda nums, k: len({x for x in nums if x % k == 0}),),
    "count_greater": (
        lambda nums, k: sum(1 for x in nums if x >= k),
        lambda nums, k: len({x for x in nums if x > k}),
    ),
    "keep_below": (
        lambda nums, k: [x for x in nums if x <= k],
        lambda nums, k: sorted(x for x in nums if x < k),
    ),
    "sum_remainder": (lambda nums, m, r: sum({x for x in nums if x % m == r}),),
    "sum_first": (lambda nums, k: sum(nums[: k - 1]), lambda nums, k: sum(nums[: k + 1])),
    "max_plus": (lambda nums, k: nums[-1] + k, lambda nums, k: nums[0] + k),
    "remove_letter": (lambda text, c: text.replace(c, "", 1),),
    "count_long_words": (lambda text, k: sum(1 for w in text.split() if len(w) >= k),),
    "replace_letter": (lambda text, a, b: text.replace(a, b, 1),),
    "upper_first": (lambda text, k: text.upper(), lambda text, k: text[:k].upper()),
    "ends_with": (lambda text, c: c in text,),
    "count_ending": (
        lambda text, c: text.count(c),
        lambda text, c: sum(1 for w in text.split() if w.startswith(c)),
    ),
}
"""Plausible wrong solutions per family (``<=`` for ``<``, counting distinct values, the last
item for the largest...), called like the reference: every problem's tests tell each of them
apart from it (one returning None for some constants, where it would be right, is no test)."""


@dataclass(frozen=True)
class Problem:
    """One family with its constants: the unit of the train/held-out split."""

    family: Family
    values: tuple[Any, ...]

    @property
    def constants(self) -> dict[str, Any]:
        """The constants by name."""
        return dict(zip(self.family.keys, self.values, strict=True))

    @property
    def task_id(self) -> str:
        """``functions/<family>/<constant>/...``: the problem's identity."""
        return "/".join(["functions", self.family.name, *map(str, self.values)])

    def solve(self, arg: Any) -> Any:
        """The reference answer for ``arg``."""
        return self.family.reference(arg, **self.constants)

    def description(self) -> str:
        """The English statement with the signature."""
        values = self.constants
        if self.family.name == "sum_remainder":
            m, r = values["m"], values["r"]
            words = {0: "that are even", 1: "that are odd"}
            values["which"] = (
                words[r] if m == 2 else f"that leave remainder {r} when divided by {m}"
            )
        return self.family.describe(values)


def all_problems(families: Sequence[str] | None = None) -> list[Problem]:
    """Every problem of ``families`` (default: all), in a fixed order."""
    chosen = [FAMILIES[name] for name in families] if families else list(FAMILIES.values())
    return [Problem(family, values) for family in chosen for values in family.constants]


def make_tests(problem: Problem, *, seed: int, count: int) -> list[str]:
    """``count`` tests on distinct random inputs that pin the problem down (see the module doc).

    Draws until the expected values are varied, the family's ``kinds`` are covered and no other
    constants of the family nor any of its :data:`MUTANTS` give the same answers on all the
    inputs (with the default six tests every problem gets there; with fewer, the draw that
    leaves the fewest of them standing is kept).
    """
    rng = random.Random(f"{seed}:{problem.task_id}")
    best: tuple[int, dict[str, Any]] | None = None
    for _ in range(300):
        cases = _draw_cases(problem, rng, count)
        standing = None if cases is None else _standing(problem, cases)
        if cases is not None and standing is not None and (best is None or standing < best[0]):
            best = (standing, cases)
            if standing == 0:
                break
    if best is None:
        raise RuntimeError(f"{problem.task_id}: could not draw {count} varied tests")
    order = sorted(best[1].items(), key=lambda case: not _telling(case[0], case[1][1]))
    name = problem.family.function
    return [f"assert {name}({arg}) == {expected!r}" for arg, (_, expected) in order]


def _draw_cases(problem: Problem, rng: random.Random, count: int) -> dict[str, Any] | None:
    """``{repr(arg): (arg, expected)}`` for ``count`` distinct arguments, or None."""
    cases: dict[str, Any] = {}
    for _ in range(50 * count):
        arg = problem.family.sample(rng, **problem.constants)
        cases.setdefault(repr(arg), (arg, problem.solve(arg)))
        if len(cases) == count:
            return cases
    return None


def _standing(problem: Problem, cases: dict[str, Any]) -> int | None:
    """How many wrong solutions (the family's other problems, its mutants) pass all ``cases``;
    None when the answers are not varied or the family's kinds not covered."""
    family, constants = problem.family, problem.constants
    answers = [repr(expected) for _, expected in cases.values()]
    if len(set(answers)) < min(len(family.kinds) or 3, len(cases)):
        return None
    if family.kind is not None:
        kinds = {family.kind(arg, expected, **constants) for arg, expected in cases.values()}
        if len(kinds & set(family.kinds)) < min(len(family.kinds), len(cases)):
            return None
    wrongs = [Problem(family, v).solve for v in family.constants if v != problem.values]
    wrongs += [functools.partial(m, **constants) for m in MUTANTS.get(family.name, ())]
    return sum(answers == [repr(wrong(arg)) for arg, _ in cases.values()] for wrong in wrongs)


def _telling(arg: str, expected: Any) -> bool:
    """Whether a case shows much: a non-empty answer that is not the argument unchanged."""
    return bool(expected) and arg != repr(expected) and arg not in ("[]", "0", "''")


def problem_row(
    problem: Problem, *, seed: int, num_tests: int, show_tests: int, demos: int,
    system_prompt: str | None,
) -> Row:  # fmt: skip
    """The row of one problem, built by :func:`mbpp_row` (plus ``entry_point``)."""
    record = {
        "prompt": problem.description(),
        "tests": make_tests(problem, seed=seed, count=num_tests),
        "setup": "",
        "task_id": problem.task_id,
        "entry_point": problem.family.function,
    }
    row = mbpp_row(record, where=problem.task_id, show_tests=show_tests, system_prompt=None)
    messages = row["prompt"]
    for text, tests, reply in reversed(DEMOS[:demos]):
        record = {"prompt": text, "tests": tests}
        shown = mbpp_row(record, where="demo", show_tests=show_tests, system_prompt=None)
        messages[:0] = [*shown["prompt"], {"role": "assistant", "content": reply}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return row


def _check_params(
    families: Sequence[str] | None, num_tests: int, show_tests: int, demos: int, eval_size: int
) -> None:
    if families is not None:
        if isinstance(families, str) or not families:
            raise ValueError("data.params.families must be a non-empty list of family names")
        unknown = [name for name in families if name not in FAMILIES]
        if unknown:
            raise ValueError(
                f"data.params.families: unknown family {unknown[0]!r}; valid: {', '.join(FAMILIES)}"
            )
    if num_tests < 2:
        raise ValueError(f"data.params.num_tests must be >= 2, got {num_tests}")
    if not 0 <= show_tests < num_tests:
        raise ValueError(
            f"data.params.show_tests must be in [0, num_tests) = [0, {num_tests}), got "
            f"{show_tests} (hidden tests are what make special-casing fail)"
        )
    if not 0 <= demos <= len(DEMOS):
        raise ValueError(f"data.params.demos must be in [0, {len(DEMOS)}], got {demos}")
    if eval_size < 0:
        raise ValueError(f"data.eval_size must be >= 0, got {eval_size}")


@register_task("functions")
def functions_task(
    *,
    train_size: int,
    eval_size: int,
    seed: int,
    families: Sequence[str] | None = None,
    num_tests: int = 6,
    show_tests: int = 1,
    demos: int = 1,
    system_prompt: str | None = None,
) -> Task:
    """Generated small Python functions (26 families, 423 problems) with hidden unit tests.

    ``families``: a subset of the family names; ``num_tests`` tests per problem, the first
    ``show_tests`` shown in the prompt; ``demos``: worked exchanges before the question (0-2).
    """
    _check_params(families, num_tests, show_tests, demos, eval_size)
    if families is not None:
        families = list(dict.fromkeys(families))
    rows = [
        problem_row(
            problem, seed=seed, num_tests=num_tests, show_tests=show_tests, demos=demos,
            system_prompt=system_prompt,
        )
        for problem in all_problems(families)
    ]  # fmt: skip
    if eval_size >= len(rows):
        raise ValueError(
            f"data.eval_size: {eval_size} held-out problems leave none of the {len(rows)} for "
            "training; lower it (or choose more data.params.families)"
        )
    train, held_out = split_rows(
        rows, seed=seed, train_size=train_size, eval_size=eval_size, source="functions"
    )
    return Task("functions", train, held_out, reward_funcs=[code_tests], correctness=code_pass)

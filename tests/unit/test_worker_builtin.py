"""The built-in handlers: results, exactness, and the messages bad arguments produce."""

from __future__ import annotations

import json
import math
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from worker import builtin, context, handlers
from worker.context import Cancelled, TaskContext


def call(name: str, args: Any) -> bytes:
    """Run a built-in the way the runner does: look it up, call it, convert its result."""
    fn = handlers.get(name)
    assert fn is not None, f"{name} is not registered"
    raw = args if isinstance(args, bytes) else json.dumps(args).encode()
    return handlers.to_bytes(fn(raw))


def iterative_fibonacci(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


@pytest.fixture
def unlimited_int_digits() -> Iterator[None]:
    """Let this test turn huge ints into text (Python caps that at 4,300 digits)."""
    previous = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    yield
    sys.set_int_max_str_digits(previous)


@pytest.fixture
def in_run() -> Iterator[TaskContext]:
    """Make the test thread look like a run, so context.sleep can be cancelled."""
    ctx = TaskContext("t-1", 1)
    token = context.activate(ctx)
    yield ctx
    context.deactivate(token)


# -- registration --------------------------------------------------------------------


def test_builtins_are_registered_on_import() -> None:
    # given the builtin module imported
    # then its handlers are served
    assert {"echo", "sleep", "fibonacci", "prime_factorization"} <= set(handlers.names())


# -- echo -----------------------------------------------------------------------------


@pytest.mark.parametrize("args", [b"", b"hello", bytes(range(256)), b"\x00" * 10_000])
def test_echo_returns_the_args_unchanged(args: bytes) -> None:
    # when echo runs
    result = call("echo", args)
    # then the result is the argument bytes, byte for byte
    assert result == args


# -- sleep ----------------------------------------------------------------------------


def test_sleep_sleeps_and_reports_how_long() -> None:
    # when sleep runs for a short time outside any run
    result = call("sleep", {"seconds": 0.01})
    # then it reports the duration
    assert json.loads(result) == {"slept": 0.01}


def test_sleep_accepts_an_integer_number_of_seconds() -> None:
    assert json.loads(call("sleep", {"seconds": 0})) == {"slept": 0.0}


def test_sleep_stops_early_when_the_run_is_cancelled(in_run: TaskContext) -> None:
    # given a run that is cancelled shortly after sleep starts
    timer = threading.Timer(0.05, in_run.cancelled.set)
    timer.start()
    try:
        # when sleep runs for an hour
        # then it raises Cancelled instead of sleeping on
        with pytest.raises(Cancelled):
            call("sleep", {"seconds": 3600})
    finally:
        timer.cancel()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1]", "must be a JSON object"),
        (b"2.5", "got a JSON number"),
        ({}, "missing field 'seconds'"),
        ({"seconds": "1"}, "'seconds' must be a number, got a JSON string"),
        ({"seconds": True}, "'seconds' must be a number, got a JSON boolean"),
        ({"seconds": None}, "'seconds' must be a number, got a JSON null"),
        ({"seconds": -1}, "'seconds' must be >= 0"),
        ({"seconds": 10**6}, "'seconds' must be at most 86400"),
        (b'{"seconds": NaN}', "'seconds' must be a finite number"),
    ],
)
def test_sleep_rejects_bad_args_naming_the_problem(args: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call("sleep", args)


# -- fibonacci ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"), [(0, 0), (1, 1), (2, 1), (10, 55), (93, 12200160415121876738)]
)
def test_fibonacci_small_values(n: int, expected: int) -> None:
    # when fibonacci runs
    result = json.loads(call("fibonacci", {"n": n}))
    # then it reports n and F(n)
    assert result == {"n": n, "result": expected}


def test_fibonacci_of_ten_thousand_is_exact() -> None:
    # when F(10,000) is computed (2,090 digits)
    result = json.loads(call("fibonacci", {"n": 10_000}))
    # then it matches the plain iterative computation digit for digit
    assert result["result"] == iterative_fibonacci(10_000)


def test_fibonacci_agrees_with_iteration_on_many_values() -> None:
    for n in range(0, 2000, 37):
        assert builtin.fib(n) == iterative_fibonacci(n)


def test_fibonacci_beyond_pythons_int_text_limit(unlimited_int_digits: None) -> None:
    # given n whose F(n) has more digits than Python turns into text by default
    n = 50_000
    # when fibonacci runs
    result = call("fibonacci", {"n": n})
    # then the result is the exact value, as a JSON number
    assert result == b'{"n":%d,"result":%s}' % (n, str(iterative_fibonacci(n)).encode())


def test_decimal_digits_matches_str(unlimited_int_digits: None) -> None:
    for value in [0, 1, 9, 10, 2**64, 10**100 - 1, 10**100, 3**20_000, 7**30_001 + 12345]:
        assert builtin.decimal_digits(value) == str(value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (b"{oops", "not valid JSON"),
        (b'"10"', "must be a JSON object like"),
        (b"null", "got a JSON null"),
        ({"m": 10}, "missing field 'n'"),
        ({"n": "10"}, "'n' must be an integer, got a JSON string"),
        ({"n": 10.0}, "'n' must be an integer, got a JSON number"),
        ({"n": True}, "'n' must be an integer, got a JSON boolean"),
        ({"n": [10]}, "'n' must be an integer, got a JSON array"),
        ({"n": -1}, "'n' must be >= 0, got -1"),
        ({"n": 1_000_001}, "'n' must be at most 1000000"),
    ],
)
def test_fibonacci_rejects_bad_args_naming_the_problem(args: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call("fibonacci", args)


# -- prime_factorization -------------------------------------------------------------


def factors_of(n: int) -> list[int]:
    result = json.loads(call("prime_factorization", {"n": n}))
    assert result["n"] == n
    factors: list[int] = result["factors"]
    return factors


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (2, [2]),
        (3, [3]),
        (4, [2, 2]),
        (12, [2, 2, 3]),
        (360, [2, 2, 2, 3, 3, 5]),
        (997, [997]),
        (1_000_003, [1_000_003]),
        (2**61 - 1, [2**61 - 1]),  # a Mersenne prime
        (18446744073709551557, [18446744073709551557]),  # the largest prime below 2**64
        (2**63, [2] * 63),
        (3**40, [3] * 40),
        (999983**3, [999983] * 3),  # a prime power beyond trial division
        (4294967291**2, [4294967291] * 2),
        (2**64 - 1, [3, 5, 17, 257, 641, 65537, 6700417]),
        (600851475143, [71, 839, 1471, 6857]),
    ],
)
def test_prime_factorization(n: int, expected: list[int]) -> None:
    assert factors_of(n) == expected


def test_prime_factorization_of_a_large_semiprime() -> None:
    # given the product of the two largest primes below 2**32 (the hardest case below 2**64)
    p, q = 4294967279, 4294967291
    # when it is factorized
    # then both primes come back, ascending
    assert factors_of(p * q) == [p, q]


def test_prime_factorization_products_are_prime_and_ascending() -> None:
    for n in [*range(2, 3000), *(2**40 + k for k in range(0, 400, 7))]:
        factors = builtin.factorize(n)
        assert math.prod(factors) == n
        assert factors == sorted(factors)
        assert all(builtin.is_prime(p) for p in factors)


def test_is_prime_agrees_with_trial_division() -> None:
    def by_trial(n: int) -> bool:
        return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))

    assert [n for n in range(5000) if builtin.is_prime(n)] == [
        n for n in range(5000) if by_trial(n)
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (b"", "not valid JSON"),
        (b"[360]", "got a JSON array"),
        ({}, "missing field 'n'"),
        ({"n": "360"}, "'n' must be an integer, got a JSON string"),
        ({"n": False}, "'n' must be an integer, got a JSON boolean"),
        ({"n": 3.5}, "'n' must be an integer, got a JSON number"),
        ({"n": 1}, r"'n' must be >= 2 \(0 and 1 have no prime factorization\), got 1"),
        ({"n": 0}, "'n' must be >= 2"),
        ({"n": -12}, "'n' must be >= 2"),
        ({"n": 2**64}, r"'n' must be less than 2\*\*64"),
    ],
)
def test_prime_factorization_rejects_bad_args_naming_the_problem(args: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call("prime_factorization", args)


def test_bad_args_fail_the_run_with_the_message() -> None:
    # given the error a failed run reports
    describe: Callable[[BaseException], str] = handlers.describe_error
    # when a builtin rejects its args
    with pytest.raises(ValueError) as caught:
        call("fibonacci", {"n": -5})
    # then the run's error names the type and the problem
    assert describe(caught.value) == "ValueError: field 'n' must be >= 0, got -5"

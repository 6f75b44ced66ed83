"""Built-in handlers every worker serves; importing this module registers them.

- ``echo``: the result is the argument bytes, unchanged.
- ``sleep``: ``{"seconds": float}``; sleeps, stopping early when the run is cancelled.
- ``fibonacci``: ``{"n": int}`` → ``{"n": n, "result": F(n)}`` with F(0) = 0, F(1) = 1,
  exact, for 0 ≤ n ≤ ``MAX_FIBONACCI_N``.
- ``prime_factorization``: ``{"n": int}`` → ``{"n": n, "factors": [...]}``, prime
  factors ascending with multiplicity, for 2 ≤ n < ``MAX_FACTORIZATION_N``.

Bad arguments raise ``ValueError`` naming what was wrong, so the task fails with
that message. Every handler here finishes in bounded time (sleep aside, which is
capped): this module must never hold a slot for an unbounded computation.
"""

from __future__ import annotations

import decimal
import json
import math
from typing import Any

from worker import context
from worker.handlers import handler

#: Longest ``sleep`` accepted, in seconds (one day).
MAX_SLEEP_SECONDS = 86_400.0
#: Largest ``n`` for ``fibonacci``: F(1,000,000) has 208,988 digits and takes well under a second.
MAX_FIBONACCI_N = 1_000_000
#: ``prime_factorization`` accepts n below this (2**64): Miller-Rabin with fixed bases is
#: exact there, and Pollard's rho factors any such n in well under a second.
MAX_FACTORIZATION_N = 2**64


# -- argument parsing ------------------------------------------------------------


def _parse_object(args: bytes, example: str) -> dict[str, Any]:
    try:
        value = json.loads(args)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(
            f"args must be a JSON object like {example}; not valid JSON: {exc}"
        ) from None
    if not isinstance(value, dict):
        raise ValueError(
            f"args must be a JSON object like {example}, got a JSON {_json_kind(value)}"
        )
    return value


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _int_field(obj: dict[str, Any], name: str) -> int:
    if name not in obj:
        raise ValueError(f"missing field {name!r}")
    value = obj[name]
    # bool is an int subclass, but {"n": true} is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"field {name!r} must be an integer, got a JSON {_json_kind(value)}")
    return value


def _number_field(obj: dict[str, Any], name: str) -> float:
    if name not in obj:
        raise ValueError(f"missing field {name!r}")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"field {name!r} must be a number, got a JSON {_json_kind(value)}")
    if not math.isfinite(value):
        raise ValueError(f"field {name!r} must be a finite number, got {value}")
    return float(value)


# -- echo and sleep ----------------------------------------------------------------


@handler("echo")
def echo(args: bytes) -> bytes:
    """The argument bytes, unchanged."""
    return args


@handler("sleep")
def sleep(args: bytes) -> dict[str, float]:
    """Sleep ``seconds``; a cancel or timeout stops it at once (it raises ``Cancelled``)."""
    seconds = _number_field(_parse_object(args, '{"seconds": 1.5}'), "seconds")
    if seconds < 0:
        raise ValueError(f"field 'seconds' must be >= 0, got {seconds:g}")
    if seconds > MAX_SLEEP_SECONDS:
        raise ValueError(f"field 'seconds' must be at most {MAX_SLEEP_SECONDS:g}, got {seconds:g}")
    context.sleep(seconds)
    return {"slept": seconds}


# -- fibonacci ---------------------------------------------------------------------


@handler("fibonacci")
def fibonacci(args: bytes) -> bytes:
    """``{"n": n}`` → ``{"n": n, "result": F(n)}``."""
    n = _int_field(_parse_object(args, '{"n": 10}'), "n")
    if n < 0:
        raise ValueError(f"field 'n' must be >= 0, got {n}")
    if n > MAX_FIBONACCI_N:
        raise ValueError(f"field 'n' must be at most {MAX_FIBONACCI_N}, got {n}")
    # Built by hand, not json.dumps: Python refuses to turn ints of more than 4,300
    # digits into decimal text (sys.get_int_max_str_digits), and F(n) has that many
    # digits from n = 20,568 on. The document is exactly what json.dumps would write.
    return b'{"n":%d,"result":%s}' % (n, decimal_digits(fib(n)).encode("ascii"))


def fib(n: int) -> int:
    """F(n) by fast doubling: F(2k) = F(k)(2F(k+1) - F(k)), F(2k+1) = F(k)² + F(k+1)²."""
    a, b = 0, 1  # F(k), F(k+1), with k the bits of n read so far
    for bit in bin(n)[2:]:
        c = a * (2 * b - a)
        d = a * a + b * b
        a, b = (d, c + d) if bit == "1" else (c, d)
    return a


def decimal_digits(value: int) -> str:
    """Decimal text of a non-negative int of any size, in subquadratic time.

    ``str(int)`` is quadratic in Python 3.11 and capped at 4,300 digits. This splits
    the number in halves by bits and joins the halves with ``decimal`` arithmetic,
    whose multiplication is fast for huge operands (the method CPython 3.12 adopted).
    """
    if value < 0:
        raise ValueError("decimal_digits takes a non-negative int")
    small = 512  # bits below which Decimal(int) is quick
    powers: dict[int, decimal.Decimal] = {}

    def pow2(bits: int) -> decimal.Decimal:
        result = powers.get(bits)
        if result is None:
            if bits <= small:
                result = decimal.Decimal(1 << bits)
            else:
                half = bits >> 1
                result = pow2(half) * pow2(bits - half)
            powers[bits] = result
        return result

    def convert(n: int, bits: int) -> decimal.Decimal:
        if bits <= small:
            return decimal.Decimal(n)
        half = bits >> 1
        high = n >> half
        low = n - (high << half)
        return convert(low, half) + convert(high, bits - half) * pow2(half)

    with decimal.localcontext() as ctx:  # thread-local: safe with concurrent runs
        ctx.prec = decimal.MAX_PREC
        ctx.Emax = decimal.MAX_EMAX
        ctx.Emin = decimal.MIN_EMIN
        ctx.traps[decimal.Inexact] = True  # exactness is the point; never round silently
        return str(convert(value, value.bit_length()))


# -- prime factorization -----------------------------------------------------------


def _primes_below(limit: int) -> list[int]:
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(limit - 1) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, limit, i)))
    return [i for i, is_prime in enumerate(sieve) if is_prime]


_TRIAL_LIMIT = 1000
_SMALL_PRIMES = _primes_below(_TRIAL_LIMIT)
# Miller-Rabin with these bases is exact for every n < 3.3 * 10**24, so for all n < 2**64.
_WITNESSES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


@handler("prime_factorization")
def prime_factorization(args: bytes) -> dict[str, Any]:
    """``{"n": n}`` → ``{"n": n, "factors": [...]}``, ascending, with multiplicity."""
    n = _int_field(_parse_object(args, '{"n": 360}'), "n")
    if n < 2:
        raise ValueError(f"field 'n' must be >= 2 (0 and 1 have no prime factorization), got {n}")
    if n >= MAX_FACTORIZATION_N:
        raise ValueError(f"field 'n' must be less than 2**64 = {MAX_FACTORIZATION_N}, got {n}")
    return {"n": n, "factors": factorize(n)}


def factorize(n: int) -> list[int]:
    """Prime factors of ``n`` ≥ 1, ascending with multiplicity (exact for n < 2**64)."""
    factors: list[int] = []
    for p in _SMALL_PRIMES:
        if p * p > n:
            break
        while n % p == 0:
            factors.append(p)
            n //= p
    if n > 1:
        # Any factor left is >= _TRIAL_LIMIT, so a cofactor below its square is prime.
        factors.extend(_split(n) if n >= _TRIAL_LIMIT * _TRIAL_LIMIT else [n])
    factors.sort()
    return factors


def _split(n: int) -> list[int]:
    """Prime factors of ``n``, which has no prime factor below ``_TRIAL_LIMIT``."""
    if is_prime(n):
        return [n]
    d = _pollard_brent(n)
    return _split(d) + _split(n // d)


def is_prime(n: int) -> bool:
    """Miller-Rabin primality test; exact for n < 3.3 * 10**24."""
    if n < 2:
        return False
    for p in _WITNESSES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in _WITNESSES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _pollard_brent(n: int) -> int:
    """A non-trivial factor of the odd composite ``n`` (Brent's variant of Pollard's rho)."""
    batch = 128  # gcds are costly: multiply this many differences together first
    for c in range(1, n):
        y, r, q, g = 2, 1, 1, 1
        x = ys = y
        while g == 1:
            x = y
            for _ in range(r):
                y = (y * y + c) % n
            k = 0
            while k < r and g == 1:
                ys = y
                for _ in range(min(batch, r - k)):
                    y = (y * y + c) % n
                    q = q * abs(x - y) % n
                g = math.gcd(q, n)
                k += batch
            r *= 2
        if g == n:
            # The batch overshot: step again one at a time from the batch's start.
            g = 1
            while g == 1:
                ys = (ys * ys + c) % n
                g = math.gcd(abs(x - ys), n)
        if g != n:
            return g
    raise ArithmeticError(f"no factor found for {n}")  # unreachable for composite n

"""Safe arithmetic: parse with `ast` and walk only whitelisted nodes, never eval.

Every step is bounded (input size, node count, digits, exponents, factorial): `9**9**9`
must be refused up front with a clear message, not computed until the time limit kills it.
"""

import ast
import logging
import math
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Number = int | float

MAX_EXPRESSION_CHARS = 500
MAX_NODES = 200
MAX_DIGITS = 10_000
MAX_BITS = int(MAX_DIGITS / math.log10(2))  # an int no wider has at most MAX_DIGITS digits
MAX_FACTORIAL = 1000
MAX_ROUND_DIGITS = 100
STR_CHUNK_DIGITS = 500  # below the smallest allowed sys.int_max_str_digits (640)

TOO_MANY_DIGITS = f"the result would be too large (about {MAX_DIGITS:,} digits or more)"

CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


class CalculationError(ValueError):
    """The expression is not allowed, or its result would be too large or undefined."""


def _factorial(n: Number) -> int:
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or not 0 <= n <= MAX_FACTORIAL:
        raise CalculationError(f"factorial needs a whole number from 0 to {MAX_FACTORIAL}")
    return math.factorial(n)


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or abs(ndigits) > MAX_ROUND_DIGITS:
        raise CalculationError(
            f"round's second argument must be a whole number from -{MAX_ROUND_DIGITS} "
            f"to {MAX_ROUND_DIGITS}"
        )
    return round(x, ndigits)


# name -> (function, fewest arguments, most arguments)
FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    "sqrt": (math.sqrt, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "log": (math.log, 1, 2),
    "exp": (math.exp, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "factorial": (_factorial, 1, 1),
}

SUPPORTED = "numbers, + - * / // % **, parentheses, pi, e and " + ", ".join(
    f"{name}()" for name in FUNCTIONS
)


def evaluate(expression: str) -> Number:
    """Evaluate an arithmetic expression within fixed bounds; raise CalculationError."""
    text = expression.strip()
    if not text:
        raise CalculationError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CalculationError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise CalculationError(f"invalid expression: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError):
        raise CalculationError("invalid expression") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculationError(f"the expression is too complex (more than {MAX_NODES} parts)")
    return _eval(tree.body)


def format_number(value: Number) -> str:
    """Exact digits for ints (even past Python's str() digit limit), repr for floats."""
    if isinstance(value, float):
        return repr(value)
    try:
        return str(value)
    except ValueError:  # longer than sys.get_int_max_str_digits()
        pass
    high, low = divmod(abs(value), 10**STR_CHUNK_DIGITS)
    sign = "-" if value < 0 else ""
    return sign + format_number(high) + str(low).zfill(STR_CHUNK_DIGITS)


def _eval(node: ast.AST) -> Number:
    """Evaluate one whitelisted node; anything else is refused."""
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):
            raise CalculationError(f"unsupported value {node.value!r}: only numbers are allowed")
        return _bounded(node.value)
    if isinstance(node, ast.Name):
        return _constant(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        operand = _eval(node.operand)
        return _bounded(-operand if isinstance(node.op, ast.USub) else +operand)
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY_OPERATORS:
        return _binary(node.op, _eval(node.left), _eval(node.right))
    if isinstance(node, ast.Call):
        return _call(node)
    raise CalculationError(f"unsupported syntax ({type(node).__name__}); use {SUPPORTED}")


def _constant(name: str) -> Number:
    if name in CONSTANTS:
        return CONSTANTS[name]
    if name in FUNCTIONS:
        raise CalculationError(f"{name} is a function: call it, as in {name}(2)")
    raise CalculationError(f"unknown name {name!r}; use {SUPPORTED}")


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name):
        called = type(node.func).__name__
        raise CalculationError(f"unsupported syntax (calling a {called}); use {SUPPORTED}")
    if node.func.id not in FUNCTIONS:
        raise CalculationError(f"unknown function {node.func.id!r}; use {SUPPORTED}")
    name = node.func.id
    function, fewest, most = FUNCTIONS[name]
    if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
        raise CalculationError(f"{name}() takes plain positional arguments only")
    if not fewest <= len(node.args) <= most:
        wanted = str(fewest) if fewest == most else f"{fewest} or {most}"
        raise CalculationError(f"{name}() takes {wanted} argument(s), not {len(node.args)}")
    args = [_eval(arg) for arg in node.args]
    try:
        result = function(*args)
    except CalculationError:
        raise
    except ZeroDivisionError:
        raise CalculationError(f"{name}(): division by zero") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise CalculationError(f"{name}(): {exc}") from None
    return _bounded(result)


def _binary(op: ast.operator, left: Number, right: Number) -> Number:
    symbol, function = BINARY_OPERATORS[type(op)]
    try:
        result = function(left, right)
    except CalculationError:
        raise
    except ZeroDivisionError:
        raise CalculationError("division by zero") from None
    except OverflowError as exc:
        raise CalculationError(f"{symbol}: number too large ({exc})") from None
    except (ValueError, TypeError) as exc:
        raise CalculationError(f"{symbol}: {exc}") from None
    return _bounded(result)


def _multiply(left: Number, right: Number) -> Number:
    if isinstance(left, int) and isinstance(right, int):
        _refuse_if_wider(left.bit_length() + right.bit_length() - 1)
    return left * right


def _power(base: Number, exponent: Number) -> Number:
    """Estimate the size of an int power with logs before computing it."""
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        try:
            digits = exponent * math.log10(abs(base))
        except OverflowError:
            digits = math.inf
        if digits >= MAX_DIGITS:
            raise CalculationError(TOO_MANY_DIGITS)
    if base == 0 and exponent < 0:
        raise ZeroDivisionError
    return base**exponent


BINARY_OPERATORS: dict[type[ast.operator], tuple[str, Callable[[Any, Any], Number]]] = {
    ast.Add: ("+", lambda a, b: a + b),
    ast.Sub: ("-", lambda a, b: a - b),
    ast.Mult: ("*", _multiply),
    ast.Div: ("/", lambda a, b: a / b),
    ast.FloorDiv: ("//", lambda a, b: a // b),
    ast.Mod: ("%", lambda a, b: a % b),
    ast.Pow: ("**", _power),
}


def _refuse_if_wider(bits: int) -> None:
    if bits > MAX_BITS:
        raise CalculationError(TOO_MANY_DIGITS)


def _bounded(value: object) -> Number:
    """Keep every intermediate result a finite real number of bounded size."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculationError("the result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculationError("the result is out of the range of floating point numbers")
    if isinstance(value, int):
        _refuse_if_wider(value.bit_length())
    return value

"""``make mutate``'s report: a score per module and every surviving mutant with its diff.

Reads what ``mutmut run`` left in ``mutants/`` (the status of each mutant from
``mutmut results``, the mutated copies of the modules) and writes one text file, grouped
by module: for each mutant not killed, where it is in the original file (function and
line) and the change as a unified diff with the original file's line numbers. Prints the
score table. It only reads: it never runs a test, and its exit status says nothing about
the score.

Counting: a mutant is killed when a test failed on it, or ran out of time (an endless loop
is a failure the tests caught), or the test process died of a signal. A "no tests" mutant
(no unit test runs its function) counts as not killed: it is listed with the survivors.
"""

from __future__ import annotations

import ast
import difflib
import re
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

#: mutmut's statuses that count as killed ("segfault" is any test process killed by a signal,
#: such as the SIGKILL of mutmut's CPU-time limit).
KILLED = frozenset({"killed", "timeout", "segfault", "caught by type check"})
#: Separator mutmut puts around the class name in a mutant's name.
CLASS_SEP = "ǁ"
#: Width of the module column of the score table: ``broker/store/__init__.py`` fits.
PATH_WIDTH = 24
_HUNK = re.compile(r"^@@ -(\d+)(,\d+)? \+(\d+)(,\d+)? @@$")


@dataclass(frozen=True)
class Mutant:
    """A mutant as ``mutmut results`` names it: ``broker.core.xǁSchedulerǁtick__mutmut_3``."""

    key: str
    status: str

    @property
    def module(self) -> str:
        return self.key.rsplit(".", 1)[0]

    @property
    def generated(self) -> str:
        """Name of the mutated copy of the function in ``mutants/``."""
        return self.key.rsplit(".", 1)[1]

    @property
    def mangled(self) -> str:
        """The function's name in ``mutants/`` without the mutant suffix."""
        return self.generated.rpartition("__mutmut_")[0]

    @property
    def number(self) -> int:
        return int(self.generated.rpartition("__mutmut_")[2])

    @property
    def qualname(self) -> str:
        """``Class.method`` or ``function`` in the original module."""
        if self.mangled.startswith("x" + CLASS_SEP):
            _, cls, name = self.mangled.split(CLASS_SEP)
            return f"{cls}.{name}"
        return self.mangled.removeprefix("x_")

    def copy_name(self, suffix: str) -> str:
        """``Class.copy`` or ``copy``: a copy of the function in ``mutants/`` (``orig`` or
        the mutant's number)."""
        cls = self.qualname.rpartition(".")[0]
        name = f"{self.mangled}__mutmut_{suffix}"
        return f"{cls}.{name}" if cls else name

    @property
    def path(self) -> Path:
        """The module's file: ``broker/core.py``, or ``broker/core/__init__.py`` (mutmut
        names a package's mutants after the package)."""
        module = Path(*self.module.split("."))
        package = module / "__init__.py"
        return package if package.exists() else module.with_suffix(".py")


@dataclass(frozen=True)
class Located:
    """A mutant placed in its original file."""

    mutant: Mutant
    #: First changed line in the original file (from the function's ``def`` if ``moved``).
    line: int
    #: Unified diff against the original, hunk headers in the original file's lines.
    diff: list[str]
    #: The function is not what the run mutated: the source changed since.
    moved: bool = False

    def one_line(self) -> str:
        """The change on one line: the removed and the added lines, stripped."""
        removed = [d[1:].strip() for d in self.diff if d.startswith("-")]
        added = [d[1:].strip() for d in self.diff if d.startswith("+")]
        before = " / ".join(removed) or "(nothing)"
        after = " / ".join(added) or "(removed)"
        return f"{before}  ->  {after}"


def read_statuses(root: Path) -> list[Mutant]:
    """Every mutant and its status, from ``mutmut results`` run in ``root``."""
    mutmut = Path(sys.executable).parent / "mutmut"
    out = subprocess.run(
        [str(mutmut), "results", "--all", "true"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    mutants = []
    for line in out.splitlines():
        key, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in key:
            mutants.append(Mutant(key, status))
    return mutants


def function_spans(source: str) -> dict[str, tuple[int, int]]:
    """``name`` or ``Class.name`` -> (line of ``def``, last line), for module-level functions
    and the methods of module-level classes (the only ones mutmut mutates)."""
    spans: dict[str, tuple[int, int]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            spans[node.name] = (node.lineno, node.end_lineno or node.lineno)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    end = item.end_lineno or item.lineno
                    spans[f"{node.name}.{item.name}"] = (item.lineno, end)
    return spans


class Module:
    """One mutated module: its original source and its copy in ``mutants/``."""

    def __init__(self, root: Path, path: Path) -> None:
        original = (root / path).read_text()
        mutated = (root / "mutants" / path).read_text()
        self.original_lines = original.splitlines()
        self.mutated_lines = mutated.splitlines()
        self.original_spans = function_spans(original)
        self.mutated_spans = function_spans(mutated)

    def _copy(self, mutant: Mutant, suffix: str) -> list[str]:
        """A copy of the mutant's function in ``mutants/``, under the function's own name."""
        start, end = self.mutated_spans[mutant.copy_name(suffix)]
        lines = self.mutated_lines[start - 1 : end]
        name = mutant.qualname.rpartition(".")[2]
        lines[0] = lines[0].replace(f"def {mutant.mangled}__mutmut_{suffix}(", f"def {name}(", 1)
        return lines

    def locate(self, mutant: Mutant) -> Located:
        start, end = self.original_spans[mutant.qualname]
        copy = self._copy(mutant, "orig")
        changed = self._copy(mutant, str(mutant.number))
        # The unmutated copy is the original function renamed; if it is not (the source
        # changed since the run), lines are counted from the function's ``def``.
        moved = copy != self.original_lines[start - 1 : end]
        offset = 0 if moved else start - 1
        diff = []
        for text in difflib.unified_diff(copy, changed, n=1, lineterm=""):
            hunk = _HUNK.match(text)
            if hunk:
                old, old_n, new, new_n = hunk.groups()
                text = f"@@ -{int(old) + offset}{old_n or ''} +{int(new) + offset}{new_n or ''} @@"
            if not text.startswith(("---", "+++")):
                diff.append(text)
        first_change = next(
            (i for i, (a, b) in enumerate(zip(copy, changed, strict=False)) if a != b),
            min(len(copy), len(changed)),
        )
        return Located(mutant, first_change + 1 + offset, diff, moved)


def score_line(path: str, counts: Counter[str]) -> str:
    """The module's score: killed / total of the mutants this run checked."""
    total = sum(counts.values()) - counts["not checked"]
    killed = sum(n for status, n in counts.items() if status in KILLED)
    score = f"{100.0 * killed / total:5.1f}%" if total else "    -"
    rest = total - killed - counts["survived"] - counts["no tests"]
    return (
        f"{path:<{PATH_WIDTH}} {killed:>5}/{total:<5} {score}   survived {counts['survived']:<4} "
        f"no tests {counts['no tests']:<4} timeout {counts['timeout']:<4} other {rest:<3}"
        + (f" not checked {counts['not checked']}" if counts["not checked"] else "")
    ).rstrip()


def build(root: Path) -> tuple[list[str], list[str]]:
    """The report's lines and the score table's."""
    by_path: dict[Path, list[Mutant]] = defaultdict(list)
    for mutant in read_statuses(root):
        by_path[mutant.path].append(mutant)
    table = [
        f"{'module':<{PATH_WIDTH}} killed/total  score   (timeouts: killed; no tests: not killed)"
    ]
    sections: list[str] = []
    for path in sorted(by_path):
        mutants = sorted(by_path[path], key=lambda m: (m.mangled, m.number))
        counts = Counter(m.status for m in mutants)
        table.append(score_line(str(path), counts))
        left = [m for m in mutants if m.status not in KILLED and m.status != "not checked"]
        module = Module(root, path)
        located = sorted((module.locate(m) for m in left), key=lambda loc: loc.line)
        sections.append("")
        sections.append(f"=== {path}: {len(left)} not killed of {len(mutants)} ===")
        for loc in located:
            sections.append("")
            where = f"{loc.mutant.qualname}+{loc.line}" if loc.moved else str(loc.line)
            sections.append(
                f"{path}:{where}  {loc.mutant.qualname}  [{loc.mutant.status}]  {loc.mutant.key}"
            )
            sections.append(f"    {loc.one_line()}")
            sections.extend("    " + text for text in loc.diff)
    header = [
        "Mutation testing of the broker modules against tests/unit (make mutate).",
        "Each mutant not killed: file:line of its first change, function, status, mutmut's name",
        "(for `mutmut show NAME`), the change on one line, then as a diff.",
        "",
        *table,
    ]
    return header + sections, table


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path("var/mutation-report.txt")
    root = Path.cwd()
    lines, table = build(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(table))
    print(f"survivors and their diffs: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The project's import graph by package, checked against the layer order in docs/architecture.md.

`python tools/import_graph.py` prints modules, imports, upward imports and import circles (exit 1 if any).
Layers run low to high; a module may import only its own layer or lower ones (imports inside functions count:
a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [  # low -> high
    ["harness", "harness.errors", "harness.atomic", "harness.columns"],
    ["harness.task", "harness.attention", "harness.data", "harness.inference", "harness.results"],
    ["harness.models", "harness.plots", "harness.reference"],
    ["harness.runner", "harness.report"],
    ["evals", "harness.lmeval", "harness.benchmarks"],
    ["harness.cli"],
]


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of harness/ and evals/."""
    found = {}
    for top in ("harness", "evals"):
        for path in sorted((ROOT / top).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that `name` imports (at top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def layer_of(name: str) -> int:
    """Index of the layer holding `name` (its longest matching package prefix)."""
    best, level = -1, 0
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), i
    return level


def graph() -> dict[str, set[str]]:
    """Module -> project modules it imports."""
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def upward(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from a lower layer into a higher one (a package's own __init__ re-exports aside)."""
    return sorted((a, b) for a, targets in g.items() for b in targets
                  if layer_of(b) > layer_of(a) and not b.startswith(a + "."))


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    """Print the graph's summary; exit status 1 when an upward import or a circle exists."""
    g = graph()
    up, circ = upward(g), circles(g)
    print(f"{len(g)} modules, {sum(map(len, g.values()))} imports, {len(up)} upward, {len(circ)} circles")
    for a, b in up:
        print(f"  upward: {a} -> {b}")
    for group in circ:
        print(f"  circle: {' <-> '.join(group)}")
    return 1 if up or circ else 0


if __name__ == "__main__":
    sys.exit(main())

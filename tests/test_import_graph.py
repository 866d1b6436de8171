"""The import graph of adjoints/, cutem/ and cli/ (installed as cutem.cli), read with ``ast``.

Every import counts, at module level and inside functions (a function-level import hides an
arrow from a reader, not from the interpreter). The layers: the engine (adjoints) knows
nothing of cutem; the library (cutem) knows nothing of its command line (cutem.cli); neither
knows validation/ or tests/; and cutem's modules import one another without a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
#: source folder -> the package it is installed as (pyproject: package-dir cutem.cli = cli)
PACKAGES = {"adjoints": "adjoints", "cutem": "cutem", "cli": "cutem.cli"}


def _module_name(path: Path) -> tuple[str, bool]:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            name, is_package = _module_name(path)
            out[name] = (path, is_package)
    return out


MODULES = _modules()


def _canonical(name: str) -> str:
    """``cli.x`` (the source folder imported as a top-level package) is ``cutem.cli.x``."""
    return "cutem.cli" + name[3:] if name == "cli" or name.startswith("cli.") else name


def _targets(node, module: str, is_package: bool):
    """Absolute names of what an Import / ImportFrom node imports (submodules resolved)."""
    if isinstance(node, ast.Import):
        return [_canonical(a.name) for a in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = _canonical(node.module)
    # `from package import name` imports the submodule package.name when there is one
    return [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else prefix for a in node.names]


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, (path, is_package) in MODULES.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(t for t in _targets(node, module, is_package) if t != module)
        graph[module] = edges
    return graph


GRAPH = _graph()


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _arrows(src_ok, dst_ok):
    return sorted(f"{a} -> {b}" for a, bs in GRAPH.items() if src_ok(a) for b in bs if dst_ok(b))


def test_the_graph_sees_function_level_and_relative_imports():
    # a check on the reader itself: the CLI's relative import, a function-level import in cutem
    assert "cutem.cli.common" in GRAPH["cutem.cli.fit"]
    assert "cutem.run" in GRAPH["cutem.batch"]  # imported inside run_item
    assert "adjoints.settings" in GRAPH["adjoints"] and "adjoints.ops" in GRAPH["adjoints.nn"]


def test_the_engine_imports_nothing_of_cutem():
    assert _arrows(lambda a: _inside(a, "adjoints"), lambda b: _inside(b, "cutem")) == []


def test_the_library_imports_nothing_of_its_command_line():
    library = lambda a: _inside(a, "cutem") and not _inside(a, "cutem.cli")  # noqa: E731
    assert _arrows(library, lambda b: _inside(b, "cutem.cli")) == []


def test_engine_and_library_import_nothing_of_validation_or_tests():
    src = lambda a: _inside(a, "adjoints") or _inside(a, "cutem")  # noqa: E731
    dst = lambda b: b.split(".")[0] in ("validation", "tests")  # noqa: E731
    assert _arrows(src, dst) == []


def _cycles(nodes):
    """One cycle (as a path) per strongly connected component of more than one module
    (Tarjan's algorithm, iterative), each starting at its smallest name."""
    index, low, on_stack, stack, comps, counter = {}, {}, set(), [], [], [0]
    sub = {a: sorted(b for b in GRAPH[a] if b in nodes) for a in nodes}

    def visit(root):
        work = [(root, iter(sub[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sub[w])))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    comps.append(comp)

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    paths = []
    for comp in comps:
        if len(comp) < 2:
            continue
        start = min(comp)
        # shortest way back to the start inside the component (breadth first)
        prev, frontier, found = {start: None}, [start], None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sub[v]:
                    if w == start and v != start:
                        found = v
                        break
                    if w in comp and w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path, v = [start], found
        while v != start:
            path.insert(1, v)
            v = prev[v]
        paths.append(" -> ".join(path + [start]))
    return sorted(paths)


def test_cycle_finder_reports_a_cycle_as_a_path():
    saved = dict(GRAPH)
    try:
        GRAPH.update({"x.a": {"x.b"}, "x.b": {"x.c"}, "x.c": {"x.a", "x.d"}, "x.d": set()})
        assert _cycles({"x.a", "x.b", "x.c", "x.d"}) == ["x.a -> x.b -> x.c -> x.a"]
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


CUTEM_CYCLES = _cycles({m for m in GRAPH if _inside(m, "cutem")})


def test_cutems_modules_import_one_another_without_a_cycle():
    assert CUTEM_CYCLES == []

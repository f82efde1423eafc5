"""The package layout the architecture doc describes: no upward import, no import circle (tools/import_graph.py)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _graph_tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_upward_imports_and_no_circles():
    tool = _graph_tool()
    graph = tool.graph()
    assert tool.upward(graph) == []
    assert tool.circles(graph) == []


def test_the_checker_finds_an_upward_import_and_a_circle():
    tool = _graph_tool()
    graph = tool.graph()
    graph["harness.errors"] = graph["harness.errors"] | {"harness.cli.app"}  # a leaf importing the top
    assert ("harness.errors", "harness.cli.app") in tool.upward(graph)
    graph["harness.results.tables"] = graph["harness.results.tables"] | {"harness.results.headline"}
    assert ["harness.results.headline", "harness.results.tables"] in tool.circles(graph)


def test_every_module_has_a_layer():
    tool = _graph_tool()
    for name in tool.modules():
        assert any(name == p or name.startswith(p + ".") for layer in tool.LAYERS for p in layer), name

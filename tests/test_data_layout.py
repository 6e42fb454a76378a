"""The code stays readable: no function over 80 lines and no module over 800 anywhere in the package
(migrations aside; docs/architecture.md), and the names callers import from ``data.formats`` and
``data.findings`` stay there."""

from __future__ import annotations

import ast
from pathlib import Path

import tempering

PACKAGE = Path(tempering.__file__).parent


def test_no_function_over_80_lines_or_module_over_800():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        source = path.read_text(encoding="utf-8")
        assert source.count("\n") <= 800, path.name
        for node in ast.walk(ast.parse(source)):
            is_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            if is_function and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    assert not long


def test_public_names_import_from_where_callers_import_them():
    from tempering.data import findings, formats

    for name in (
        "FORMATS",
        "FORMAT_ERROR_CODES",
        "ConversionReport",
        "Example",
        "detect_format",
        "load_examples",
        "parse_template",
        "read_examples",
        "validate_any",
        "write_jsonl",
        "example_record",
    ):
        assert hasattr(formats, name), name
    for name in (
        "Distribution",
        "Finding",
        "IMBALANCE_WARNING",
        "MIN_PER_CLASS",
        "MAX_LABEL_CHARS",
        "MAX_LABEL_WORDS",
        "content_flags",
        "infer_labels",
        "normalize",
        "prompt_key",
        "find_duplicates",
        "label_stats",
        "diversity_stats",
        "content_findings",
        "lines_text",
        "distribution",
    ):
        assert hasattr(findings, name), name


def test_the_benchmarks_parse():
    """The bench scripts are run by hand, so nothing else notices when an edit breaks one (two did)."""
    bench = Path(__file__).resolve().parent.parent / "bench"
    scripts = sorted(bench.glob("*.py"))
    if not scripts:
        import pytest

        pytest.skip("no bench/ beside the tests")
    import importlib

    missing = []
    for path in scripts:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        # and what they import from tempering is there (a moved function broke bench/serve.py once)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tempering"):
                try:
                    module = importlib.import_module(node.module)
                except ImportError:
                    missing.append(f"{path.name}:{node.lineno} {node.module}")
                    continue
                missing += [f"{path.name}:{node.lineno} {node.module}.{alias.name}" for alias in node.names
                            if not hasattr(module, alias.name)
                            and importlib.util.find_spec(f"{node.module}.{alias.name}") is None]
    assert not missing, missing

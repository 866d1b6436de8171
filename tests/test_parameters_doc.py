"""docs/parameters.md is the text that the field declarations of cutem.params generate."""
from pathlib import Path

from cutem.params import SECTIONS, parameters_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "parameters.md"


def test_committed_parameter_doc_equals_the_generated_text():
    assert DOC.read_text(encoding="utf-8") == parameters_markdown(), \
        "docs/parameters.md is stale: run `python -m cutem.params`"


def test_parameter_doc_has_one_row_per_declared_field():
    text = parameters_markdown()
    for cls in SECTIONS.values():
        for name in cls.__dataclass_fields__:
            assert f"| `{name}` |" in text, name

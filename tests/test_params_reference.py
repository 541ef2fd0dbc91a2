"""The README's params reference is generated from the code and params.yaml, and kept current."""

from __future__ import annotations

from pathlib import Path

from cdae.params_reference import END, START, markdown, replace_block, yaml_comments

ROOT = Path(__file__).resolve().parents[1]


def test_readme_reference_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split(START, 1)[1].split(END, 1)[0].strip()
    assert block == markdown((ROOT / "params.yaml").read_text()), (
        "README's params reference is stale: run `python -m cdae.params_reference README.md`")


def test_every_setting_is_explained() -> None:
    table = markdown((ROOT / "params.yaml").read_text()).splitlines()[2:]
    assert len(table) > 60
    unexplained = [row.split("|")[1].strip() for row in table if row.rstrip().endswith("|  |")]
    assert not unexplained, f"params.yaml has no comment for {unexplained}"


def test_comment_parser_paths_and_continuations() -> None:
    text = ("a:\n  b: 1   # first\n                # more\n  c:\n    d: x # deep\n"
            "profiles:\n  tiny: {a: 2}  # skipped\n")
    assert yaml_comments(text) == {"a": "", "a.b": "first more", "a.c": "", "a.c.d": "deep"}
    assert replace_block(f"x\n{START}\nold\n{END}\ny", "new") == f"x\n{START}\nnew\n{END}\ny"

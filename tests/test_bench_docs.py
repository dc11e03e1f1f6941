"""bench scripts write their own section of docs/benchmarks.md and keep every other one."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from benchdocs import write_section  # noqa: E402


def test_a_section_is_replaced_in_place_and_the_others_are_kept(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\nintro\n\n## Training\n\nold table\n### sub\nold sub\n\n"
                    "## Training targets\n\nhand notes\n\n## Generation\n\ngen\n")
    write_section("## Training\n\nnew table\n", path)
    assert path.read_text() == ("# Benchmarks\n\nintro\n\n## Training\n\nnew table\n\n"
                                "## Training targets\n\nhand notes\n\n## Generation\n\ngen\n")


def test_a_missing_section_is_appended_and_a_missing_file_created(tmp_path):
    path = tmp_path / "docs" / "benchmarks.md"
    write_section("## Threads\n\nrows\n", path)
    write_section("## Training\n\ntable\n", path)
    write_section("## Threads\n\nnew rows\n", path)
    text = path.read_text()
    assert text.startswith("# Benchmarks") and text.endswith("## Threads\n\nnew rows\n\n## Training\n\ntable\n")
    assert not list(path.parent.glob("*.tmp"))

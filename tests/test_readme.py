"""The pages (README.md and docs/*.md): their result tables equal what ``python -m nlhf_jax.readme``
renders from ``results/``, their links lead to files that exist, and the files, modules and tests
they name exist."""

from __future__ import annotations

import os
import re

import jax
import numpy as np
import pytest

from nlhf_jax import provenance, readme, tables
from nlhf_jax.errors import exit_on_user_error


def _read(path):
    with open(path) as f:
        return f.read()


def test_pages_tables_are_rendered_from_the_committed_results():
    pages = readme.pages()
    names = [os.path.relpath(p, readme.ROOT) for p in pages]
    assert names[0] == "README.md"
    assert {"docs/algorithms.md", "docs/results.md", "docs/scale.md"} <= set(names)
    assert readme.diff(None, readme.RESULTS) == "", (
        "the pages' tables differ from results/: run `python -m nlhf_jax.readme` (make readme)"
    )
    text = "".join(_read(p) for p in pages)
    for name in readme.RENDERERS:
        assert f"<!-- results:{name} -->" in text, f"no page renders the {name} table"
    assert readme.main(["--check"]) == 0


def _page_with(marker):
    return next(p for p in readme.pages() if marker in _read(p))


def test_a_number_edited_by_hand_fails_the_check(tmp_path, capsys):
    text = _read(_page_with("<!-- results:demo -->"))
    start = text.index("<!-- results:demo -->")
    number = re.compile(r"\d\.\d{3}").search(text, start)
    edited = number.group(0)[:-1] + str((int(number.group(0)[-1]) + 1) % 10)
    path = tmp_path / "page.md"
    path.write_text(text[: number.start()] + edited + text[number.end() :])

    assert readme.diff(str(path), readme.RESULTS) != ""
    assert readme.main(["--check", "--page", str(path)]) == 1
    assert f"-{text[text.rindex(chr(10), 0, number.start()) + 1 : number.start()]}{edited}" in (
        capsys.readouterr().out
    )
    assert readme.main(["--page", str(path)]) == 0  # rewrites the block from results/
    assert path.read_text() == text
    assert readme.main(["--check", "--page", str(path)]) == 0


def test_one_check_covers_readme_and_every_docs_page(tmp_path, monkeypatch, capsys):
    """A hand edit in any docs page fails the one ``--check``; without it every page is
    rewritten."""
    (tmp_path / "docs").mkdir()
    block = "<!-- results:tabular -->\nstale\n<!-- /results:tabular -->\n"
    (tmp_path / "README.md").write_text("# front\n")
    (tmp_path / "docs" / "a.md").write_text("# a\n\n" + block)
    (tmp_path / "docs" / "b.md").write_text("# b\n\n" + block)
    monkeypatch.setattr(readme, "ROOT", str(tmp_path))
    assert [os.path.basename(p) for p in readme.pages()] == ["README.md", "a.md", "b.md"]
    assert readme.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "docs/a.md" in out and "docs/b.md" in out and "-stale" in out
    assert readme.main([]) == 0
    for name in ("a.md", "b.md"):
        page = (tmp_path / "docs" / name).read_text()
        assert "stale" not in page and "From `results/tabular.json`" in page
    assert readme.main(["--check"]) == 0


def test_a_missing_results_file_is_one_error_line(tmp_path, capsys):
    path = tmp_path / "README.md"
    path.write_text("# x\n\n<!-- results:demo -->\nold table\n<!-- /results:demo -->\n")
    empty = tmp_path / "results"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: readme.main(["--page", str(path), "--results", str(empty)]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert os.path.join(str(empty), "demo.json") in err
    assert "old table" in path.read_text()  # nothing written


# --- links and names on the pages ------------------------------------------------------------

_FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
_SPAN = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)
# A repository path: these top-level folders, then path characters.
_PATH = re.compile(
    r"(?<![\w./-])((?:nlhf_jax|configs|tests|benchmarks|colabs|results|docs)/[\w./:<>*-]*)"
)
_MODULE = re.compile(r"(?<![\w./-])(nlhf_jax(?:\.\w+)+)")


def _code(text):
    """The text of every fenced block and inline code span of a page."""
    fences = _FENCE.findall(text)
    return fences + _SPAN.findall(_FENCE.sub("", text))


def _slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return heading.replace(" ", "-")


def _anchors(text):
    seen, anchors = {}, set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        slug = _slug(heading)
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_every_relative_link_leads_to_a_file_and_heading_that_exist():
    for page in readme.pages():
        text = _read(page)
        for target in _LINK.findall(_FENCE.sub("", text)):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            where = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            name = os.path.relpath(page, readme.ROOT)
            assert os.path.exists(where), f"{name}: link to {target}: no such file"
            assert os.path.commonpath([where, readme.ROOT]) == readme.ROOT, (name, target)
            if anchor:
                assert where.endswith(".md"), f"{name}: {target}: an anchor into a non-page"
                assert anchor in _anchors(_read(where)), f"{name}: {target}: no such heading"


def _placeholder(path):
    """``configs/<method>.py``, ``results/NAME.json``, ``runs/*/...``: a pattern, not a file."""
    parts = path.split("/")
    return any(c in path for c in "<>*") or any(
        re.fullmatch(r"[A-Z_]+", p.split(".")[0]) for p in parts if p
    )


def test_files_and_tests_named_in_code_exist():
    """Every repository path in backticks or a code block exists; ``tests/x.py::test_y`` names a
    test function of that file; ``configs/text.py:STAGE`` is the file."""
    for page in readme.pages():
        name = os.path.relpath(page, readme.ROOT)
        for code in _code(_read(page)):
            for path in _PATH.findall(code):
                path = path.rstrip(".:")
                path, _, test = path.partition("::")
                if _placeholder(path):
                    continue
                path = re.sub(r"(\.py):\w+$", r"\1", path)  # configs/text.py:sft
                full = os.path.join(readme.ROOT, path)
                assert os.path.exists(full), f"{name}: `{path}` does not exist"
                if test:
                    assert re.search(rf"^\s*def {test}\(", _read(full), re.MULTILINE), (
                        f"{name}: `{path}::{test}`: no such test"
                    )


def _module_file(dotted):
    base = os.path.join(readme.ROOT, *dotted.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def test_modules_named_in_code_exist():
    """``nlhf_jax.a.b`` (or ``nlhf_jax.a.b.name``) in backticks or a code block: the longest
    prefix that is a module exists, and the next name, if any, occurs in that module."""
    for page in readme.pages():
        name = os.path.relpath(page, readme.ROOT)
        for code in _code(_read(page)):
            for dotted in _MODULE.findall(code):
                parts = dotted.split(".")
                k = max(i for i in range(1, len(parts) + 1) if _module_file(".".join(parts[:i])))
                if k < len(parts):
                    source = _read(_module_file(".".join(parts[:k])))
                    assert re.search(rf"\b{parts[k]}\b", source), (
                        f"{name}: `{dotted}`: {'.'.join(parts[:k])} has no {parts[k]}"
                    )


def test_demo_table_takes_any_methods_and_drops_nash_md_columns_without_it():
    def results(methods):
        m = len(methods)
        return {
            "methods": methods,
            "reference_name": methods[0],
            "win_rate": np.full((m, m), 0.5).tolist(),
            "win_rate_regularized": np.full((m, m), 0.5).tolist(),
            "duality_gap": [0.2] + [0.1] * (m - 1),
            "kl_to_reference": [0.0] + [0.3] * (m - 1),
            "config": {"tau": 0.1},
        }

    with_rlp = tables.render_demo(results(["sft", "nash_md", "rlp_a", "rlp_b"]))
    assert "| rlp_b | 0.100 | 0.300 | 0.500 | 0.500 | 0.500 |" in with_rlp
    without = tables.render_demo(results(["sft", "rlhf"]))
    assert "vs nash_md" not in without and "| rlhf | **0.100** | 0.300 | 0.500 |" in without


def test_environment_records_versions_and_machine():
    env = provenance.environment(seed=3)
    assert env["versions"]["jax"] == jax.__version__
    assert env["versions"]["numpy"] == np.__version__
    assert env["machine"]["cpu_count"] == os.cpu_count() >= 1
    assert env["machine"]["device_count"] == jax.device_count()
    assert env["seed"] == 3 and env["date"].endswith("+00:00")
    assert "seed" not in provenance.environment()

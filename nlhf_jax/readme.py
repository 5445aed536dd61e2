"""The result tables of README.md and docs/*.md, rendered from ``results/``, never by hand.

    python -m nlhf_jax.readme [--collect runs] [--check] [--page PAGE ...] [--results results]

A page holds each generated table between ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->``; ``RENDERERS[NAME]`` (``nlhf_jax.tables``) renders it from
``results/NAME.json``. The pages are README.md and every ``docs/*.md`` (``pages()``), or the
``--page`` files. Without ``--check`` every marked block of every page is rewritten; ``--check``
prints a unified diff and exits 1 when any page differs from what the results render
(``tests/test_readme.py`` runs the same check).
``--collect RUNS_DIR`` first copies each run's results (``SOURCES``) into ``results/``, keeping
only what the table needs (``COMPACT``) of a file larger than ``MAX_BYTES``. A marker whose
results file is missing is one ``error:`` line and exit status 2. ``make readme`` = ``--collect
runs``, after a run.
"""

from __future__ import annotations

import argparse
import difflib
import glob
import json
import os
import re
import sys
from collections.abc import Sequence

from nlhf_jax import benchmark_tables  # noqa: F401  (registers the benchmarks' tables)
from nlhf_jax.errors import MissingInput, UserError, exit_on_user_error
from nlhf_jax.tables import COMPACT, RENDERERS

# results/NAME.json <- RUNS_DIR/PATH, copied by --collect: one line per table.
SOURCES = {
    "tabular": "tabular/results.json",
    "demo": "demo/results.json",
    "demo_since": "demo_since/results.json",
    "reproduce_since": "reproduce_since/results.json",
    "benchmark_sampling": "benchmarks/sampling.json",
    "benchmark_train_step": "benchmarks/train_step.json",
    "real_size": "benchmarks/real_size.json",
    "real_size_tiny": "benchmarks/real_size_tiny.json",
    "benchmark_trl_nash_md": "benchmarks/trl_nash_md.json",
    "trl_nash_md_smollm2": "benchmarks/trl_nash_md_smollm2.json",
    "benchmark_tunix_sampler": "benchmarks/tunix_sampler.json",
    "benchmark_tokenize": "benchmarks/tokenize.json",
    "reproduce": "reproduce/results.json",
    "demo_avx2": "demo_avx2/results.json",
    "text_example": "text/eval/results.json",
    "text_host_judge": "text_host_judge/eval/results.json",
    "text_long_responses": "benchmarks/text_long_responses.json",
    "gguf_smollm2": "benchmarks/gguf_smollm2.json",
    "gguf_gemma3": "benchmarks/gguf_gemma3.json",
    "real_size_smollm2": "benchmarks/real_size_smollm2.json",
    "real_recipe": "benchmarks/real_recipe.json",
}
# A table rendered from another table's results file: NAME -> that file's NAME.
FILE_OF = {
    "demo_rlp": "demo",
    "reproduce_rlp": "reproduce",
    "reproduce_pairs": "reproduce",
    "real_recipe_summary": "real_recipe",
    "reproduce_since_pairs": "reproduce_since",
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
RESULTS = os.path.join(ROOT, "results")
MAX_BYTES = 50_000  # a larger results file keeps only what its table needs

# Markers are whole lines (so prose can name them in backticks).
_BLOCK = re.compile(
    r"^<!-- results:([\w.-]+) -->\n(.*?)^<!-- /results:\1 -->$", re.DOTALL | re.MULTILINE
)
_OPENING = re.compile(r"^<!-- results:([\w.-]+) -->$", re.MULTILINE)


def pages(root: str | None = None) -> list[str]:
    """The pages whose marked blocks are rendered: ``root/README.md``, then every
    ``root/docs/*.md`` in name order (``root``: the repository)."""
    root = ROOT if root is None else root
    docs = sorted(glob.glob(os.path.join(root, "docs", "*.md")))
    return [os.path.join(root, "README.md"), *docs]


def _name(path: str) -> str:
    """``path`` relative to the repository when inside it (for diffs and errors)."""
    rel = os.path.relpath(os.path.abspath(path), ROOT)
    return path if rel.startswith("..") else rel


# --- the command -----------------------------------------------------------------------------


def collect(runs_dir: str, results_dir: str = RESULTS) -> list[str]:
    """Copies each ``RUNS_DIR/SOURCES[name]`` that exists to ``results_dir/name.json``, compacted
    when larger than ``MAX_BYTES``; returns the names copied."""
    copied = []
    os.makedirs(results_dir, exist_ok=True)
    for name, path in SOURCES.items():
        src = os.path.join(runs_dir, path)
        if not os.path.exists(src):
            continue
        with open(src) as f:
            results = json.load(f)
        if os.path.getsize(src) > MAX_BYTES and name in COMPACT:
            results = COMPACT[name](results)
        with open(os.path.join(results_dir, f"{name}.json"), "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
        print(f"{src} -> {os.path.join(results_dir, name + '.json')}")
        copied.append(name)
    return copied


def render(name: str, results_dir: str = RESULTS, page: str = "README.md") -> str:
    """The markdown of table ``name`` from ``results_dir/name.json`` (``page``: for errors)."""
    if name not in RENDERERS:
        raise UserError(
            f"{page}: <!-- results:{name} -->: no such table; known: {', '.join(RENDERERS)}"
        )
    path = os.path.join(results_dir, f"{FILE_OF.get(name, name)}.json")
    if not os.path.exists(path):
        raise MissingInput(
            f"{path}: missing, {page}'s <!-- results:{name} --> table is rendered from it; run "
            f"its job, then `python -m nlhf_jax.readme --collect runs`"
        )
    with open(path) as f:
        return RENDERERS[name](json.load(f))


def rendered(text: str, results_dir: str = RESULTS, page: str = "README.md") -> str:
    """``text`` (a page) with every marked block replaced by its table from ``results_dir``."""
    closed = {m.start() for m in _BLOCK.finditer(text)}
    for m in _OPENING.finditer(text):
        if m.start() not in closed:
            line = text.count("\n", 0, m.start()) + 1
            raise UserError(f"{page}:{line}: {m.group(0)} has no <!-- /results:{m.group(1)} -->")
    block = lambda m: (
        f"<!-- results:{m.group(1)} -->\n{render(m.group(1), results_dir, page)}\n"
        f"<!-- /results:{m.group(1)} -->"
    )
    return _BLOCK.sub(block, text)


def _unified(text: str, new: str, page: str, results_dir: str) -> str:
    lines = difflib.unified_diff(
        text.splitlines(keepends=True),
        new.splitlines(keepends=True),
        page,
        f"{page} (rendered from {results_dir})",
    )
    return "".join(lines)


def _read(path: str) -> str:
    if not os.path.isfile(path):
        raise MissingInput(f"{path}: no such page")
    with open(path) as f:
        return f.read()


def diff(paths: str | Sequence[str] | None = None, results_dir: str = RESULTS) -> str:
    """A unified diff from the pages (``paths``: one, several, or None for ``pages()``) to what
    their marked blocks render to; empty when every page is up to date."""
    paths = pages() if paths is None else [paths] if isinstance(paths, str) else list(paths)
    changes = []
    for path in paths:
        text = _read(path)
        changes.append(
            _unified(text, rendered(text, results_dir, _name(path)), _name(path), results_dir)
        )
    return "".join(changes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nlhf_jax.readme", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if any page differs")
    parser.add_argument("--collect", metavar="RUNS_DIR", help="first copy the runs' results")
    parser.add_argument(
        "--page",
        "--readme",
        dest="pages",
        action="append",
        metavar="PAGE",
        help="a page to render (repeatable; default: README.md and docs/*.md)",
    )
    parser.add_argument("--results", default=RESULTS, help="directory of NAME.json")
    args = parser.parse_args(argv)
    if args.collect:
        if not os.path.isdir(args.collect):
            raise MissingInput(f"{args.collect}: no such runs directory")
        collect(args.collect, args.results)
    paths = args.pages or pages()
    texts = {path: _read(path) for path in paths}  # every page exists before any is written
    new = {path: rendered(text, args.results, _name(path)) for path, text in texts.items()}
    if args.check:
        changes = "".join(_unified(texts[p], new[p], _name(p), args.results) for p in paths)
        sys.stdout.write(changes)
        return 1 if changes else 0
    for path in paths:
        if new[path] != texts[path]:
            with open(path, "w") as f:
                f.write(new[path])
        print(f"{_name(path)}: {'rewritten' if new[path] != texts[path] else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))

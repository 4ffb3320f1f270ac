"""The knowledge benchmark's corpus: real text nobody here wrote, built from what is on the
machine and cached on disk. First the Python standard library's documentation (pydoc's text of
every importable module and submodule), then Debian's man pages (groff's rendering, sections
1-8) until the corpus holds enough passages.

    python -m bench.corpus [--passages 100000]

Each line of the cache is {"title", "text", "passages"}; `passages` is what the service's own
chunker makes of it, so a benchmark can take a prefix of a given size without splitting."""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import pkgutil
import subprocess
import sys
import sysconfig
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CACHE = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "chatsvc-bench"))
CORPUS = CACHE / "knowledge-corpus.jsonl"
MAN = Path("/usr/share/man")
# Modules whose import does something (opens a browser, prints, needs a display) or that are
# the test suite rather than documentation.
SKIP = ("antigravity", "this", "idlelib", "turtledemo", "tkinter", "turtle", "test", "lib2to3")
PYDOC_HEADINGS = (
    "NAME",
    "MODULE REFERENCE",
    "DESCRIPTION",
    "CLASSES",
    "FUNCTIONS",
    "DATA",
    "PACKAGE CONTENTS",
)


def stdlib_modules() -> list[str]:
    """Every public standard-library module and submodule, by name."""
    names = {n for n in sys.stdlib_module_names if not n.startswith("_")}
    stack = [(Path(sysconfig.get_paths()["stdlib"]), "")]
    while stack:  # the packages' directories, read without importing anything
        directory, prefix = stack.pop()
        for info in pkgutil.iter_modules([str(directory)]):
            name = prefix + info.name
            if info.name.startswith("_") or (not prefix and name not in names):
                continue
            names.add(name)
            if info.ispkg:
                stack.append((directory / info.name, name + "."))
    return sorted(
        n
        for n in names
        if n.split(".")[0] not in SKIP and not {"test", "tests"} & set(n.split("."))
    )


def pydoc_text(name: str) -> str | None:
    import pydoc

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            module = pydoc.safeimport(name)
            if module is None:
                return None
            text = pydoc.render_doc(module, renderer=pydoc.plaintext)
    except BaseException:  # noqa: BLE001 - a module that cannot be documented is left out
        return None
    return headings(text, lambda line: line.strip() in PYDOC_HEADINGS and not line[0].isspace())


def man_pages() -> list[Path]:
    pages = []
    for section in range(1, 9):
        pages.extend(sorted((MAN / f"man{section}").glob("*.gz")))
    return pages


def man_text(path: Path) -> tuple[str, str] | None:
    with gzip.open(path, "rb") as source:
        raw = source.read()
    if raw.startswith(b".so ") or len(raw) < 200:  # a link to another page
        return None
    try:
        rendered = subprocess.run(
            ["groff", "-man", "-Tutf8", "-P-cbou", "-rLL=80n"],
            input=raw, capture_output=True, timeout=30, check=False,
        ).stdout.decode("utf-8", "replace")  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    name = path.name.removesuffix(".gz")
    stem, _, section = name.rpartition(".")
    text = headings(rendered, lambda line: bool(line) and line.isupper() and not line[0].isspace())
    return f"{stem}({section})", text


def headings(text: str, is_heading) -> str:
    """The rendered text with its top-level headings made Markdown, so that the chunker
    follows the page's structure as it does a Markdown document's."""
    return "\n".join(
        f"## {line.strip().title()}" if is_heading(line) else line for line in text.splitlines()
    )


def documents(passages: int) -> Iterator[dict]:
    from chatsvc.services import chunking, knowledge

    def entry(title: str, text: str) -> dict:
        parts = chunking.split(title, knowledge.normalise(text))
        return {"title": title, "text": text, "passages": sum(len(p.passages) for p in parts)}

    total = 0
    warnings.simplefilter("ignore")
    for name in stdlib_modules():
        text = pydoc_text(name)
        if text:
            doc = entry(name, text)
            total += doc["passages"]
            yield doc
    with ThreadPoolExecutor(2) as pool:
        for rendered in pool.map(man_text, man_pages()):
            if total >= passages:
                break
            if rendered and rendered[1].strip():
                doc = entry(*rendered)
                total += doc["passages"]
                yield doc


def build(passages: int) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = CORPUS.with_suffix(".partial")
    started, count, total = time.monotonic(), 0, 0
    with partial.open("w") as out:
        for doc in documents(passages):
            out.write(json.dumps(doc) + "\n")
            count, total = count + 1, total + doc["passages"]
    partial.rename(CORPUS)
    print(f"{count} documents, {total} passages in {time.monotonic() - started:.0f} s → {CORPUS}")
    return CORPUS


def load(passages: int) -> list[dict]:
    """The cached corpus (built first if missing or too small)."""
    if not CORPUS.exists() or sum(d["passages"] for d in _read()) < passages:
        build(passages)
    return _read()


def _read() -> list[dict]:
    with CORPUS.open() as source:
        return [json.loads(line) for line in source]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=100_000)
    build(parser.parse_args().passages)

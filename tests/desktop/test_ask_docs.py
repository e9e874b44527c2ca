"""`--ask --docs PATH` and `Asker.ask(documents=...)`: answers from the user's files, with citations, on the real 270M.

The files are made here (a PDF written by Qt with the fact on page 3, Markdown, a malformed PDF);
the index lives in the asker's temporary folder, never in the data folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medgemma_desktop.ask import Asker
from medgemma_desktop.documents.passages import HEADER, NOTHING_FOUND
from medgemma_desktop.engine import Engine
from tests.desktop.test_ask import run_ask
from tests.support.document_files import GUIDE_PAGES, write_malformed_pdf, write_pdf

QUESTION = "Which drug is first-line for a diabetic adult, and at what dose?"
GREEDY = {"temperature": 0.0, "max_tokens": 16}


@pytest.fixture
def docs(tmp_path: Path, qapp: Any) -> Path:
    folder = tmp_path / "guidelines"
    folder.mkdir()
    write_pdf(folder / "guide.pdf", GUIDE_PAGES)
    (folder / "gout.md").write_text("# Gout\n\nAllopurinol lowers serum urate.\n", encoding="utf-8")
    write_malformed_pdf(folder / "broken.pdf")
    return folder


@pytest.fixture(scope="module")
def asker(gemma_270m: Path) -> Iterator[Asker]:
    with Asker(gemma_270m, [], engine_factory=Engine) as asker:
        yield asker



def test_the_answer_cites_the_file_and_page(asker: Asker, docs: Path, medgemma_home: Path) -> None:
    result = asker.ask(QUESTION, think=False, documents=[docs], **GREEDY)
    first = result.citations[0]
    assert (first["source"], first["page"], first["number"]) == ("guide.pdf", 3, 1) and first["score"] > 0
    assert first["path"] == str(docs / "guide.pdf")
    assert "**Diabetes**" in first["snippet"] and "**first**-**line**" in first["snippet"]  # "diabetic" matched
    assert [Path(item["source"]).name for item in result.skipped] == ["broken.pdf"]
    assert result.skipped[0]["reason"].startswith("not a readable PDF")
    # The passages open the question's turn, as text, before the question.
    prompt = result.prompt
    assert prompt.index(HEADER) < prompt.index("[1] guide.pdf, page 3:\n") < prompt.index(QUESTION)
    assert "Metformin is the first-line drug" in prompt and result.answer
    assert not (medgemma_home / "documents").exists()  # the user's data folder is not touched

    # Without documents: a plain prompt; with documents that do not cover it: the prompt says so.
    plain = asker.ask(QUESTION, think=False, **GREEDY)
    assert HEADER not in plain.prompt and plain.citations == [] and plain.skipped == []
    uncovered = asker.ask("How is a fractured wrist splinted?", think=False, documents=[docs / "gout.md"], **GREEDY)
    assert NOTHING_FOUND in uncovered.prompt and uncovered.citations == [] and uncovered.skipped == []
    missing = asker.ask("Allopurinol?", think=False, documents=[docs / "gout.md", docs / "gone"], **GREEDY)
    assert [c["source"] for c in missing.citations] == ["gout.md"]
    assert missing.skipped == [{"source": str(docs / "gone"), "reason": "not found (moved or deleted?)"}]


def test_cli_json_has_citations_and_skipped(gemma_270m: Path, docs: Path, medgemma_home: Path) -> None:
    result = run_ask(QUESTION, "--model", str(gemma_270m), "--docs", str(docs / "guide.pdf"),
                     "--docs", str(docs / "broken.pdf"), "--think", "off", "--temperature", "0", "--max-tokens", "8",
                     "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    citation = answer["citations"][0]
    assert {"source", "page", "snippet", "score"} <= set(citation) and (citation["source"], citation["page"]) == (
        "guide.pdf", 3)
    assert [(Path(item["source"]).name, item["reason"][:18]) for item in answer["skipped"]] == [
        ("broken.pdf", "not a readable PDF")]
    assert not (medgemma_home / "documents").exists()


def test_cli_prints_the_sources_after_the_answer(gemma_270m: Path, docs: Path) -> None:
    result = run_ask("Allopurinol for gout?", "--model", str(gemma_270m), "--docs", str(docs), "--think", "off",
                     "--temperature", "0", "--max-tokens", "8")
    assert result.returncode == 0, result.stderr
    answer, sources = result.stdout.split("\nSources:\n")
    assert answer.strip()
    assert sources.splitlines()[0].startswith("[1] gout.md, page 1 — “") and "**Allopurinol**" in sources
    assert sources.splitlines()[-1].startswith("Skipped ") and "broken.pdf: not a readable PDF" in sources


def test_docs_needs_ask(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "medgemma_desktop", "--docs", str(tmp_path)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 2 and "--docs goes with --ask" in result.stderr

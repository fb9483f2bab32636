"""Read knowledge-base documents and cut them into chunks (paragraph, heading, fixed, semantic).

    weitiao data kb2sft weitiao/demo/kb --chunker heading --out runs/kb

.md/.txt always; .docx with python-docx and .pdf with pypdf when installed. Sizes are in characters
(Chinese has no words to count). Every chunk keeps its document and heading path for provenance.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from weitiao.dataeng.similarity import embed, tfidf
from weitiao.errors import UserError
from weitiao.io import read_text

Chunker = Literal["paragraph", "heading", "fixed", "semantic"]
TEXT_SUFFIXES = (".md", ".markdown", ".txt")
SUFFIXES = TEXT_SUFFIXES + (".docx", ".pdf")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SENTENCE = re.compile(r"[^。！？!?；;\n]+[。！？!?；;]*[”」』）)]*|\n")


@dataclass
class Chunk:
    """A piece of one document: `chunk_id` is `<doc>#<n>`, `heading` the section path ("A > B")."""

    doc: str
    chunk_id: str
    text: str
    heading: str = ""

    def source(self) -> str:
        """Doc name and heading path, as shown to the teacher."""
        return f"{self.doc}" + (f" · {self.heading}" if self.heading else "")


@dataclass
class ChunkSpec:
    """How to cut documents."""

    method: Chunker = "heading"
    max_chars: int = 600  # chunks grow up to this (fixed: the window size)
    min_chars: int = 40  # shorter paragraphs/sections are merged with the next one
    overlap: int = 100  # fixed: characters shared by neighbouring windows
    percentile: float = 20.0  # semantic: break at the lowest `percentile`% adjacent-sentence similarities
    embed_model: str | None = None  # semantic: local encoder dir; default char-bigram TF-IDF cosine


# ---------------------------------------------------------------------------------------------- reading


def _hidden(f: Path, root: Path) -> bool:
    """A dot file, or a file in a dot folder under `root` (.trash/ of a notes app, .github/)."""
    return any(part.startswith(".") for part in f.relative_to(root).parts)


def skipped_docs(paths: list[str | Path]) -> list[Path]:
    """Files under the directories given that `collect_docs` leaves out: unsupported types, and supported ones that
    are hidden (dot files aside: .DS_Store is no document)."""
    return sorted(f for p in map(Path, paths) if p.is_dir() for f in p.rglob("*")
                  if f.is_file() and not f.name.startswith(".")
                  and (f.suffix.lower() not in SUFFIXES or _hidden(f, p)))  # fmt: skip


def collect_docs(paths: list[str | Path]) -> list[Path]:
    """Files given, and supported files under directories given (sorted; none hidden in a dot folder, such as a notes
    app's .trash/); missing paths, and a file reached twice, are errors."""
    out: list[Path] = []
    given: dict[Path, Path] = {}  # each file (resolved) → the argument that named it
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*")
                           if f.is_file() and f.suffix.lower() in SUFFIXES and not _hidden(f, p))  # fmt: skip
            if not found:
                raise UserError(f"{p}: no {'/'.join(SUFFIXES)} files in this directory")
        elif p.is_file():
            if p.suffix.lower() not in SUFFIXES:
                raise UserError(f"{p}: unsupported file type {p.suffix!r}; use {', '.join(SUFFIXES)}")
            found = [p]
        else:
            raise UserError(f"{p}: file not found")
        for f in found:  # a folder and a file in it: the document was read, asked and trained on twice
            if (first := given.setdefault(f.resolve(), p)) is not p:
                raise UserError(f"{f}: named twice, by {first} and by {p}; name each document once")
        out += found
    return out


def _table_row(row: Any) -> str:
    """A python-docx table row as text: its cells' text joined by " | ", a merged cell once (python-docx repeats it)."""
    cells = []
    for cell in row.cells:
        if not cells or cell._tc is not cells[-1]._tc:
            cells.append(cell)
    return " | ".join(" ".join(c.text.split()) for c in cells)


def read_doc(path: Path) -> str:
    """Document text; .docx headings become markdown `#` lines so the heading chunker sees them, and its tables
    (`Document.paragraphs` leaves them out) lines of cells joined by " | "."""
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return read_text(path).replace("\r\n", "\n")  # UTF-8, as every reader; GBK: the iconv line
    if suffix == ".docx":
        try:
            import docx
        except ImportError:
            raise UserError(f"{path}: reading .docx needs python-docx (pip install python-docx)") from None
        try:
            document = docx.Document(str(path))
        except (docx.opc.exceptions.PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as e:
            raise UserError(f"{path}: not a readable .docx ({type(e).__name__}: {e}); re-save it from Word") from None
        lines = []
        for block in document.iter_inner_content():  # paragraphs and tables, in document order
            if isinstance(block, docx.table.Table):  # price lists, specs: one line per row, cells joined by " | "
                lines.append("\n".join(_table_row(row) for row in block.rows))
                continue
            style = (block.style.name or "") if block.style is not None else ""
            level = re.match(r"(?:Heading|标题)\s*(\d)", style)
            lines.append(("#" * int(level.group(1)) + " " if level else "") + block.text)
        return "\n\n".join(lines)
    if suffix == ".pdf":
        try:
            import pypdf
        except ImportError:
            raise UserError(f"{path}: reading .pdf needs pypdf (pip install pypdf)") from None
        try:  # a damaged or encrypted file is the user's to fix: one line, not pypdf's traceback
            return "\n\n".join(page.extract_text() or "" for page in pypdf.PdfReader(str(path)).pages)
        except pypdf.errors.PyPdfError as e:
            raise UserError(f"{path}: not a readable .pdf ({type(e).__name__}: {e})") from None
    raise UserError(f"{path}: unsupported file type {suffix!r}")


# ---------------------------------------------------------------------------------------------- chunkers


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


_SENTENCE_END = re.compile(r"[。！？!?；;][”」』）)]*|\n")


def _cut(piece: str, max_chars: int) -> list[str]:
    """A piece longer than max_chars cut after the last sentence end (。！？!?；; or a line break) that fits, so a
    number or a name is not split across chunks (X31 售价3147元 as "X3" | "1售价3147元"); only a sentence longer
    than max_chars is cut mid-way."""
    out = []
    while len(piece) > max_chars:
        ends = [m.end() for m in _SENTENCE_END.finditer(piece, 0, max_chars)]
        at = ends[-1] if ends else max_chars
        out.append(piece[:at].strip())
        piece = piece[at:].strip()
    return [c for c in [*out, piece] if c]


def _pack(pieces: list[str], max_chars: int, min_chars: int, sep: str = "\n\n") -> list[str]:
    """Greedily join consecutive pieces while the result stays ≤ max_chars (a piece under min_chars
    always joins its neighbour); a single piece longer than max_chars is cut at sentence ends (_cut)."""
    out: list[str] = []
    for p in pieces:
        if len(p) > max_chars:
            out += _cut(p, max_chars)
        elif out and (len(out[-1]) + len(sep) + len(p) <= max_chars or len(out[-1]) < min_chars):
            out[-1] = out[-1] + sep + p
        else:
            out.append(p)
    if len(out) > 1 and len(out[-1]) < min_chars:  # a short tail joins the chunk before it
        tail = out.pop()  # popped first: `out[-2] = out[-2] + out.pop()` assigned to the element before that one
        out[-1] = out[-1] + sep + tail
    return out


def by_paragraph(text: str, spec: ChunkSpec) -> list[tuple[str, str]]:
    """Blank-line paragraphs packed up to max_chars."""
    return [("", c) for c in _pack(_paragraphs(text), spec.max_chars, spec.min_chars)]


def by_heading(text: str, spec: ChunkSpec) -> list[tuple[str, str]]:
    """One chunk per markdown section (long ones split at paragraphs), labelled with the heading path."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    path: list[tuple[int, str]] = []
    fenced = False  # inside a ``` code block a `# comment` is code, not a heading
    for line in text.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        m = None if fenced else _HEADING.match(line)
        if m:
            level = len(m.group(1))
            path = [(lv, h) for lv, h in path if lv < level] + [(level, m.group(2))]
            sections.append((" > ".join(h for _, h in path), []))
        else:
            sections[-1][1].append(line)
    out = []
    for heading, lines in sections:
        body = "\n".join(lines).strip()
        if body:
            out += [(heading, c) for c in _pack(_paragraphs(body), spec.max_chars, spec.min_chars)]
    return out


def by_fixed(text: str, spec: ChunkSpec) -> list[tuple[str, str]]:
    """Character windows of max_chars, each starting max_chars - overlap after the last."""
    if not 0 <= spec.overlap < spec.max_chars:
        raise UserError(f"--overlap {spec.overlap}: must be ≥ 0 and < --max-chars {spec.max_chars}")
    s = re.sub(r"\n\s*\n", "\n", text.strip())
    step = spec.max_chars - spec.overlap
    starts = range(0, max(1, len(s) - spec.overlap), step)
    return [("", s[i : i + spec.max_chars]) for i in starts if s[i : i + spec.max_chars].strip()]


def sentences(text: str) -> list[str]:
    """Sentences ending at 。！？!?；; or a line break (closing quotes stay with their sentence)."""
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


def _semantic_pieces(text: str, max_chars: int) -> list[tuple[str, str, str, bool]]:
    """(separator before it, text, heading path, starts a section) for each sentence, heading and fenced code block.

    A heading stays in the text as its words (it was dropped: "## 退款" gone, a section's topic with it) and opens a
    section; a fenced code block is one piece, verbatim (split into sentences, its lines lost their indentation and
    its `# comment` lines were read as headings and dropped); a sentence or block over max_chars is cut into windows.
    """
    pieces: list[tuple[str, str, str, bool]] = []
    path: list[tuple[int, str]] = []
    gap, fence, new_section = "", None, False
    for line in [*text.split("\n"), None]:
        if fence is not None:  # inside a ``` block: gather lines until the closing fence (or the end of the text)
            if line is not None:
                fence.append(line)
            if line is None or (len(fence) > 1 and line.lstrip().startswith(("```", "~~~"))):
                block = "\n".join(fence).strip("\n")
                heading = " > ".join(h for _, h in path)
                pieces += [(gap if i == 0 else "", block[i : i + max_chars], heading, new_section and i == 0)
                           for i in range(0, len(block), max_chars)]  # fmt: skip
                gap, fence, new_section = "\n", None, False
            continue
        if line is None:
            break
        if line.lstrip().startswith(("```", "~~~")):
            fence = [line]
            gap = "\n" if pieces else ""
            continue
        if m := _HEADING.match(line.strip()):
            level = len(m.group(1))
            path = [(lv, h) for lv, h in path if lv < level] + [(level, m.group(2))]
            line, new_section = m.group(2), True
        for raw in _SENTENCE.findall(line):
            if s := raw.strip():
                lead = gap or (" " if raw[0].isspace() and pieces else "")
                heading = " > ".join(h for _, h in path)
                pieces += [(lead if i == 0 else "", s[i : i + max_chars], heading, new_section and i == 0)
                           for i in range(0, len(s), max_chars)]  # fmt: skip
                gap, new_section = "", False
        gap = "\n" if pieces else ""
    return pieces


def by_semantic(text: str, spec: ChunkSpec) -> list[tuple[str, str]]:
    """Break between adjacent sentences whose similarity is among the lowest `percentile`% (and wherever
    a chunk would pass max_chars, and before a heading), once the chunk holds min_chars. Similarity: cosine of char
    1-2-gram TF-IDF, or of local embeddings. Each chunk is labelled with the heading path where it starts."""
    # a line break stays a line break and a space a space (lines of English were glued, "open the app" + "Step two"
    # → "appStep", a word no answer grounds on); a sentence over max_chars is cut into windows (it was one chunk of
    # any size); headings and code blocks: _semantic_pieces
    pieces = _semantic_pieces(text, spec.max_chars)
    sents = [s for _, s, _, _ in pieces]
    if len(sents) < 2:
        return [(h, s) for _, s, h, _ in pieces]
    # 1. one vector per sentence; 2. cosine of each neighbour pair; 3. cut at the low ones
    if spec.embed_model:
        vec = embed(sents, spec.embed_model)
        sims = np.sum(vec[:-1] * vec[1:], axis=1)
    else:
        vec = tfidf(sents)[0]  # sparse
        sims = vec[:-1].multiply(vec[1:]).sum(axis=1)
    cut = float(np.percentile(sims, spec.percentile))
    out, cur = [], (pieces[0][2], sents[0])
    for (sep, s, heading, section), sim in zip(pieces[1:], sims):
        low = sim <= cut or section
        if (low and len(cur[1]) >= spec.min_chars) or len(cur[1]) + len(sep) + len(s) > spec.max_chars:
            out.append(cur)
            cur = (heading, s)
        else:
            cur = (cur[0], cur[1] + sep + s)
    out.append(cur)
    return out


CHUNKERS = {"paragraph": by_paragraph, "heading": by_heading, "fixed": by_fixed, "semantic": by_semantic}


def chunk_docs(paths: list[Path], spec: ChunkSpec) -> tuple[list[Chunk], list[str]]:
    """All chunks of all documents, and the names of documents that had no text (reported, not fatal)."""
    if spec.method not in CHUNKERS:
        raise UserError(f"--chunker {spec.method!r}: use one of {', '.join(CHUNKERS)}")
    if spec.max_chars < 20:
        raise UserError(f"--max-chars {spec.max_chars}: too small (use ≥ 20)")
    chunks: list[Chunk] = []
    empty: list[str] = []
    names = [p.name for p in paths]
    for path in paths:
        name = path.name if names.count(path.name) == 1 else str(path)  # same file name in two folders
        text = read_doc(path)
        pieces = CHUNKERS[spec.method](text, spec) if text.strip() else []
        if not pieces:
            empty.append(str(path))
        for i, (heading, body) in enumerate(pieces):
            chunks.append(Chunk(name, f"{name}#{i}", body, heading))
    return chunks, empty

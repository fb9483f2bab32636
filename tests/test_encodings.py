"""One rule for a file that is not UTF-8, in every command family: data files, bad cases, knowledge-base documents
and behavior logs refuse a GB18030/GBK file with the same line, naming it and the iconv command that converts it."""

import gzip
import json
import re

import pytest

from weitiao.data.files import iter_records
from weitiao.dataeng import badcases
from weitiao.dataeng.chunk import read_doc
from weitiao.errors import UserError
from weitiao.logs import dwell
from weitiao.logs.config import load_profile

CSV = "prompt,bad,golden\n退货要几天到账？,马上到账,三到五个工作日\n"
JSONL = json.dumps({"prompt": "退货要几天到账？", "bad": "马上到账", "golden": "三到五个工作日"}, ensure_ascii=False)
TXT = "# 退货政策\n\n签收后七天内可以无理由退货。\n"
CONTENT = "content_id,context,text,length_chars\nA,q1,好回答,800\nB,q1,一般回答,800\n"


def gbk_line(path, line, command):
    return re.escape(
        f"{path}:{line}: not UTF-8 but GB18030/GBK (as Excel and Notepad on Chinese Windows save); weitiao reads "
        f"UTF-8: convert it with `{command}`"
    )


def readers(tmp_path):
    """(name, file text, how the name reads it) for each command family."""
    cfg = load_profile("dwell", "zhihu", ["min_views=1", "min_z=0"])
    (tmp_path / "e.csv").write_text("content_id,dwell_s,position\nA,60,1\nB,30,2\n")
    return [
        ("d.csv", CSV, lambda p: list(iter_records(p))),  # data check / sft / mix
        ("d.jsonl", JSONL, lambda p: list(iter_records(p))),
        ("b.csv", CSV, lambda p: badcases.ingest([p])),
        ("b.jsonl", JSONL, lambda p: badcases.ingest([p])),
        ("kb.txt", TXT, read_doc),
        ("c.csv", CONTENT, lambda p: dwell.run(tmp_path / "e.csv", cfg, p, progress=False)),  # logs on DuckDB
    ]


def test_a_gbk_file_is_refused_the_same_way_by_every_reader(tmp_path):
    """badcases read a GBK CSV (a guess, unsaid) but not a GBK JSONL, kb2sft read GBK documents, data and logs refused
    with 'not valid UTF-8 (byte 0xb0 at column 1)' or DuckDB's 'near line 2' and no word of GBK: each now gives the
    same line naming GB18030/GBK and the conversion. Control: the same text saved as UTF-8 (and UTF-8 with a BOM)
    is read by each."""
    for name, text, read in readers(tmp_path):
        path = tmp_path / name
        path.write_bytes(text.encode("gb18030"))
        line = 2 if name.endswith(".csv") else 1
        with pytest.raises(
            UserError,
            match=gbk_line(path, line, f"iconv -f gb18030 -t utf-8 {path} > {path.with_suffix('.utf8' + path.suffix)}"),
        ):
            read(path)
        for bom in (b"", b"\xef\xbb\xbf"):
            path.write_bytes(bom + text.encode("utf-8"))
            read(path)


def test_a_gbk_file_compressed_or_not_gbk_gets_its_own_line(tmp_path):
    """A .gz file's command goes through gzip; bytes that are no GB18030 text keep the plain byte/column line."""
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress(JSONL.encode("gb18030")))
    out = tmp_path / "d.utf8.jsonl.gz"
    with pytest.raises(
        UserError, match=gbk_line(path, 1, f"gzip -dc {path} | iconv -f gb18030 -t utf-8 | gzip > {out}")
    ):
        list(iter_records(path))
    (tmp_path / "bin.csv").write_bytes(b"prompt,bad,golden\n\xff\xfe\x80,x,y\n")
    for read in (lambda p: list(iter_records(p)), lambda p: badcases.ingest([p])):
        with pytest.raises(UserError, match=r"bin\.csv:2: not valid UTF-8 \(byte 0xff at column 1\); save the file"):
            read(tmp_path / "bin.csv")


def test_the_named_encoding_is_one_that_reads_the_line_whole(tmp_path):
    """A Windows-1252 file was named GB18030/GBK when its bytes happened to decode so ('Müller' → 'M黮ler': an
    accented letter and the next ASCII letter make a GBK pair), with an iconv line that garbles it; a file of UTF-8
    lines and then a GBK line was named GBK too, and converting it whole garbles the UTF-8 ones. Now an encoding is
    named only when exactly one of GB18030 and Windows-1252 reads the line as plausible text; otherwise the line says
    not UTF-8 with a placeholder. Control: the GBK file keeps its line."""
    row = json.dumps({"instruction": "Müller aus Zürich, café naïve", "output": "señor año"}, ensure_ascii=False)
    cp = tmp_path / "cp.jsonl"
    cp.write_bytes(row.encode("cp1252") + b"\n")
    with pytest.raises(UserError) as e:
        list(iter_records(cp))
    assert str(e.value) == (
        f"{cp}:1: not UTF-8 but Windows-1252/Latin-1 (as Western Windows and older Excel save); weitiao reads "
        f"UTF-8: convert it with `iconv -f cp1252 -t utf-8 {cp} > {tmp_path / 'cp.utf8.jsonl'}`"
    )
    gbk = tmp_path / "gbk.jsonl"
    gbk.write_bytes(JSONL.encode("gbk") + b"\n")
    with pytest.raises(
        UserError, match=gbk_line(gbk, 1, f"iconv -f gb18030 -t utf-8 {gbk} > {gbk.with_suffix('.utf8.jsonl')}")
    ):
        list(iter_records(gbk))
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(JSONL.encode("utf-8") + b"\n" + JSONL.encode("gbk") + b"\n")
    for read in (lambda p: list(iter_records(p)), lambda p: badcases.ingest([p])):
        with pytest.raises(UserError) as e:
            read(mixed)
        assert str(e.value).startswith(f"{mixed}:2: not valid UTF-8 (byte 0xcd at column ") and "iconv" not in str(
            e.value
        ), str(e.value)
        assert "the lines before it are UTF-8 text: the file mixes encodings" in str(e.value)
    both = tmp_path / "both.csv"  # one Chinese character: 'ÓÃ' in Windows-1252, '用' in GBK
    both.write_bytes("prompt,bad,golden\n用Python,x,y\n".encode("gbk"))
    with pytest.raises(UserError) as e:
        list(iter_records(both))
    assert str(e.value) == (
        f"{both}:2: not valid UTF-8 (byte 0xd3 at column 1); save the file as UTF-8, e.g. `iconv -f ENCODING -t "
        f"utf-8 {both} > {tmp_path / 'both.utf8.csv'}` (it reads as GB18030/GBK text and as Windows-1252 text: name "
        "the one it was saved in)"
    )


def test_a_utf16_file_is_named_by_its_byte_order_mark(tmp_path):
    """A file Notepad saved as 'Unicode' (UTF-16 with a byte-order mark) was named Windows-1252 ('ÿþ' read as two
    letters), with an iconv line that makes garbage; it is now named UTF-16 with `iconv -f utf-16`. A line holding
    NUL is no text in either 8-bit encoding (control: the plain line with the placeholder)."""
    for name, text in (("u.jsonl", JSONL + "\r\n"), ("u.csv", CSV)):
        path = tmp_path / name
        path.write_bytes(text.encode("utf-16"))
        out = path.with_suffix(".utf8" + path.suffix)
        with pytest.raises(UserError) as e:
            list(iter_records(path))
        assert str(e.value) == (
            f"{path}:1: not UTF-8 but UTF-16 (its byte-order mark says so; Notepad's 'Unicode' and Excel's 'Unicode "
            f"Text' save it); weitiao reads UTF-8: convert it with `iconv -f utf-16 -t utf-8 {path} > {out}`"
        )
    (tmp_path / "nul.jsonl").write_bytes(b'{"a": "\x00\xe9"}\n')
    with pytest.raises(UserError, match=r"nul\.jsonl:1: not valid UTF-8 \(byte 0xe9 at column 9\); save the file as "):
        list(iter_records(tmp_path / "nul.jsonl"))


def test_a_bom_at_a_later_line_of_a_jsonl_file_is_dropped_as_the_first_lines_is(tmp_path):
    """Files saved with a BOM (Windows editors) and joined (`cat a.jsonl b.jsonl`, `type a b > c`) hold one at the start
    of a later line: the first line's was dropped, that one made the row 'not valid JSON (Expecting value at column
    1)', a character the user cannot see in an editor. Now dropped at any line's start, in the data reader and the
    plain JSONL reader."""
    from weitiao.io import read_jsonl

    path = tmp_path / "joined.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + JSONL.encode() + b"\r\n" + b"\xef\xbb\xbf" + JSONL.encode() + b"\r\n")
    want = [(1, json.loads(JSONL)), (2, json.loads(JSONL))]
    assert list(iter_records(path)) == want
    assert list(read_jsonl(path)) == want


def test_a_jsonl_file_with_lone_cr_line_ends_is_said_so(tmp_path):
    """A JSONL file saved with old-Mac line ends (a lone CR) is one line to the reader: it was refused as 'not valid
    JSON (Extra data at column 37)', no word of the line ends, which no editor shows (a CSV so saved is named). Now
    the line says it."""
    path = tmp_path / "cr.jsonl"
    path.write_bytes((JSONL + "\r" + JSONL + "\r").encode())
    [(n, bad)] = list(iter_records(path))
    assert n == 1 and str(bad).startswith("json: lines end in a lone CR (old Mac line endings)"), bad

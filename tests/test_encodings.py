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

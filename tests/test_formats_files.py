"""Data files as other tools write them: `datasets` save_to_disk/.arrow/parquet/json/csv, shard folders,
globs, .jsonl.gz/.jsonl.zst (issue #17, "Files")."""

import gzip
import json
import re

import pytest
from conftest import write_jsonl
from datasets import Dataset, DatasetDict

from weitiao.data import files
from weitiao.data.formats import load_conversations, load_rows
from weitiao.errors import UserError

ROWS = [{"instruction": f"问题{i}", "input": "补充" if i % 2 else "", "output": f"回答{i},\n第二行"} for i in range(7)]


def messages(result):
    return [c.messages for c in result.rows]


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    return messages(load_conversations(write_jsonl(tmp_path_factory.mktemp("ref") / "ref.jsonl", ROWS)))


def test_datasets_library_files_read_unchanged(tmp_path, expected):
    ds = Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.to_json(str(tmp_path / "d.jsonl"), force_ascii=False)
    ds.to_csv(str(tmp_path / "d.csv"), index=False)
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    for entry in [tmp_path / "saved", arrow, tmp_path / "d.parquet", tmp_path / "d.jsonl", tmp_path / "d.csv"]:
        got = load_conversations(entry)
        assert (got.read, got.kept, got.format) == (7, 7, "alpaca"), entry
        assert messages(got) == expected, entry
    # CSV rows are numbered by the line they start on: row 2 holds a quoted newline, so row 3 starts at line 4.
    assert [c.source.rsplit(":", 1)[1] for c in load_conversations(tmp_path / "d.csv").rows[:3]] == ["2", "4", "6"]


def tool_row(name, arg):
    call = {"id": "c", "type": "function", "function": {"name": name, "arguments": {arg: "北京"}}}
    spec = {"name": name, "parameters": {"type": "object", "properties": {arg: {"type": "string"}}}}
    return {
        "messages": [
            {"role": "user", "content": "问"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c", "content": "晴"},
            {"role": "assistant", "content": "答", "weight": 1},
        ],
        "tools": [{"type": "function", "function": spec}],
    }


def test_arrow_struct_nulls_are_absent_fields(tmp_path):
    """Parquet/Arrow give every struct each field any row has, null elsewhere: row 2's tool schema gained
    `"city": null` from row 1's tool (rendered into its prompt) and its call the argument `city: null`."""
    rows = [tool_row("weather", "city"), tool_row("clock", "zone")]
    want = [(c.messages, c.tools) for c in load_conversations(write_jsonl(tmp_path / "d.jsonl", rows)).rows]
    ds = Dataset.from_list(rows)
    assert ds[1]["tools"][0]["function"]["parameters"]["properties"]["city"] is None  # what `datasets` gives
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for entry in [tmp_path / "d.parquet", tmp_path / "saved"]:
        assert [(c.messages, c.tools) for c in load_conversations(entry).rows] == want, entry


def test_dataset_dict_folder_names_its_splits(tmp_path):
    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS[:2])}).save_to_disk(str(tmp_path))
    with pytest.raises(UserError, match=r"a DatasetDict with splits \['train', 'test'\]; give one split's folder"):
        load_conversations(tmp_path)
    assert load_conversations(tmp_path / "test").kept == 2


def test_shard_folder_glob_and_batches(tmp_path, expected, monkeypatch):
    ds = Dataset.from_list(ROWS)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(3):
        ds.shard(3, i, contiguous=True).to_parquet(str(shards / f"train-{i:05d}-of-00003.parquet"))
    write_jsonl(shards / "train-00000-of-00003.parquet.rejects.jsonl", [{"error": "ours"}])  # never read back
    monkeypatch.setattr(files, "BATCH_ROWS", 2)  # several record batches per file
    for entry in [shards, str(shards / "*.parquet"), str(tmp_path / "**" / "train-*.parquet")]:
        got = load_conversations(entry)
        assert messages(got) == expected and got.read == 7 and len(got.per_file) == 3, entry
    with pytest.raises(UserError, match=r"no data files match"):
        load_conversations(str(tmp_path / "*.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: is a folder with no data files"):
        load_conversations(tmp_path / "empty")


def test_compressed_jsonl_is_streamed_line_by_line(tmp_path, expected):
    import zstandard

    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    for name in ["d.jsonl.gz", "d.jsonl.zst"]:
        got = load_conversations(tmp_path / name)
        assert messages(got) == expected and got.rows[-1].source.endswith(f"{name}:7")
    # A huge line inside the compressed stream is skipped unread and reported with its line number.
    big = text.splitlines(keepends=True)
    big.insert(2, json.dumps({"instruction": "x" * 5000, "output": "y"}) + "\n")
    (tmp_path / "big.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress("".join(big).encode()))
    with pytest.raises(UserError, match=r"big.jsonl.zst:3: row: 5,\d+ bytes, over the 1,000-byte limit"):
        load_rows(tmp_path / "big.jsonl.zst", max_row_bytes=1000)
    # Negative controls: a cut-off or mislabelled file is one line naming it, not a traceback.
    (tmp_path / "cut.jsonl.gz").write_bytes((tmp_path / "d.jsonl.gz").read_bytes()[:40])
    (tmp_path / "plain.jsonl.zst").write_text(text, encoding="utf-8")
    for name in ["cut.jsonl.gz", "plain.jsonl.zst"]:
        with pytest.raises(UserError, match=rf"{name}: not a readable"):
            load_conversations(tmp_path / name)


def test_csv_bad_rows_name_their_line(tmp_path):
    (tmp_path / "d.csv").write_text("instruction,output\n问,答\n只有一列\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"d.csv:3: row: 1 columns, the header has 2"):
        load_conversations(tmp_path / "d.csv")
    (tmp_path / "dup.csv").write_text("output,output\n问,答\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"dup.csv:1: header: column 'output' named twice"):
        load_conversations(tmp_path / "dup.csv")


def test_compressed_json_and_csv_read_and_unreadable_shards_refused_not_skipped(tmp_path, expected):
    """A folder of a.jsonl + b.json.gz + c.tsv trained on a.jsonl alone: the other two were left out unsaid."""
    import zstandard

    folder = tmp_path / "mixed"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", ROWS[:2])
    with gzip.open(folder / "b.json.gz", "wt", encoding="utf-8") as f:
        f.write("\ufeff" + json.dumps(ROWS[2:5], ensure_ascii=False))  # a BOM, as Windows tools write
    csv_text = Dataset.from_list(ROWS[5:]).to_pandas().to_csv(index=False)
    (folder / "c.csv.zst").write_bytes(zstandard.ZstdCompressor().compress(csv_text.encode()))
    got = load_conversations(folder)
    assert messages(got) == expected and got.read == 7 and len(got.per_file) == 3
    for name in ("d.tsv", "e.parquet.gz", "f.jsonl.bz2"):
        (folder / name).write_text("instruction\toutput\n问\t答\n", encoding="utf-8")
        for entry in (folder, str(folder / "*")):
            with pytest.raises(UserError, match=rf"{name}: in (folder|glob) .*a data file weitiao does not read"):
                load_conversations(entry)
        (folder / name).unlink()
    (folder / "README.md").write_text("# notes\n")  # negative control: not data, not read
    assert load_conversations(folder).read == 7
    (folder / "bad.json.gz").write_bytes(gzip.compress(b'[{"instruction": "a",\n "output": }]'))
    with pytest.raises(UserError, match=r"bad.json.gz:2: json: not valid JSON"):
        load_conversations(folder / "bad.json.gz")


def test_a_json_array_in_a_jsonl_file_says_name_it_json(tmp_path):
    for name, text in [("one.jsonl", json.dumps(ROWS)), ("pretty.jsonl", json.dumps(ROWS, indent=2))]:
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(UserError, match=rf"{name}:1: json: a JSON array, not one object per line .*name it .json"):
            load_rows(tmp_path / name)
        (tmp_path / name).rename(tmp_path / "d.json")  # negative control: the same text as .json reads
        assert load_rows(tmp_path / "d.json").kept == 7


def test_jsonl_lines_of_bare_message_lists_say_how_to_wrap_them(tmp_path):
    """Each line a bare list of messages (no "messages" key) was told 'a JSON array ...: name it .json' (renamed, the
    file is no JSON at all) on line 1 and 'expected a JSON object, got list' after it."""
    chat = [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}]
    (tmp_path / "m.jsonl").write_text(f"{json.dumps(chat)}\n{json.dumps(chat)}\n", encoding="utf-8")
    bare = r"a bare list of messages; give each row as an object: \{\"messages\": \[\.\.\.\]\}"
    with pytest.raises(UserError, match=rf"m\.jsonl:1: row: {bare}"):
        load_rows(tmp_path / "m.jsonl")
    write_jsonl(tmp_path / "n.jsonl", [{"messages": chat}, chat])
    with pytest.raises(UserError, match=rf"n\.jsonl:2: row: {bare}"):
        load_rows(tmp_path / "n.jsonl")
    sharegpt = [{"from": "human", "value": "问"}, {"from": "gpt", "value": "答"}]
    (tmp_path / "s.json").write_text(json.dumps([sharegpt]), encoding="utf-8")
    with pytest.raises(UserError, match=r"s\.json:1: row: a bare list of messages"):
        load_rows(tmp_path / "s.json")
    assert load_rows(write_jsonl(tmp_path / "ok.jsonl", [{"messages": chat}] * 2)).kept == 2  # wrapped: read


def test_json_rows_are_numbered_by_the_line_they_start_on(tmp_path):
    """An indented JSON array (LLaMA-Factory's files) named a bad row by its index, as if it were a line: row 3 of
    the file below is `d.json:12`, not `d.json:3`, which is inside row 1."""
    rows = [*ROWS[:2], {"instruction": "问题", "ouput": "回答"}, {"instruction": '[, ]\n"{', "output": "{\n}"}]
    text = json.dumps(rows, ensure_ascii=False, indent=2)
    starts = [n for n, line in enumerate(text.splitlines(), 1) if line == "  {"]  # each row's opening brace
    assert starts == [2, 7, 12, 16]
    for name, data, skip in [("d.json", text.encode(), 0), ("d.json.gz", gzip.compress(("\n\n" + text).encode()), 2)]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=rf"{name}:{12 + skip}: ouput: unknown key"):
            load_rows(tmp_path / name)
        got = load_rows(tmp_path / name, skip_invalid=True, rejects_path=tmp_path / "r.jsonl")
        assert [int(r.source.rsplit(":", 1)[1]) for r in got.rows] == [n + skip for n in (2, 7, 16)]
    (tmp_path / "one.json").write_text(json.dumps(rows[:2]) + "\n")  # one line: every row on line 1
    assert [r.source for r in load_rows(tmp_path / "one.json").rows] == [f"{tmp_path / 'one.json'}:1"] * 2


def test_a_key_given_twice_in_a_row_is_refused(tmp_path):
    """json.loads keeps the last of a repeated key: {"output": "a", "output": "b"} trained "b" without a word."""
    text = '{"instruction": "问", "output": "甲", "output": "乙"}\n'
    (tmp_path / "d.jsonl").write_text(text, encoding="utf-8")
    with pytest.raises(
        UserError, match=r"d.jsonl:1: json: not valid JSON \(key 'output' appears twice in one object\)"
    ):
        load_rows(tmp_path / "d.jsonl")
    (tmp_path / "d.json").write_text(f'[{{"instruction": "问", "output": "甲"}},\n {text.strip()}]', encoding="utf-8")
    with pytest.raises(UserError, match=r"d.json: json: not valid JSON \(key 'output' appears twice"):
        load_rows(tmp_path / "d.json")
    nested = '{"messages": [{"role": "user", "content": "问", "role": "assistant"}]}\n'
    (tmp_path / "m.jsonl").write_text(nested, encoding="utf-8")
    with pytest.raises(UserError, match=r"m.jsonl:1: json: .*key 'role' appears twice"):
        load_rows(tmp_path / "m.jsonl")
    # negative control: the same keys once each read
    (tmp_path / "ok.jsonl").write_text('{"instruction": "问", "output": "乙"}\n', encoding="utf-8")
    assert load_rows(tmp_path / "ok.jsonl").kept == 1


def nameless_sheet(path, rows):
    import openpyxl

    wb = openpyxl.Workbook()
    for row in rows:
        wb.active.append([c or None for c in row])
    wb.save(path)


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_a_column_without_a_name_is_left_out_when_empty_and_csv_and_xlsx_agree(tmp_path, suffix):
    """Excel's `instruction,output,` (a trailing empty header cell) was refused in a CSV ('expected unique, non-empty
    column names') while the same sheet as .xlsx dropped it unsaid, and an empty header cell between two names was
    refused in both. Now both leave a nameless column that is empty in every row out, with a note, and a row with a
    value there is a bad row naming the column number."""
    rows = [["instruction", "", "output", ""], ["问", "", "答", ""], ["再问", "", "再答", ""]]
    path = tmp_path / f"d{suffix}"
    if suffix == ".csv":
        path.write_text("".join(",".join(r) + "\n" for r in rows), encoding="utf-8")
    else:
        nameless_sheet(path, rows)
    got = load_conversations(path)
    assert [r.messages[-1]["content"] for r in got.rows] == ["答", "再答"]
    cols = "columns 2, 4" if suffix == ".csv" else "column 2"  # a sheet ends at its last named or filled column
    assert got.notes == [f"{path}: {cols} without a name in the header, empty in every row: left out"]
    rows[2][3] = "多余"
    if suffix == ".csv":
        path.write_text("".join(",".join(r) + "\n" for r in rows), encoding="utf-8")
    else:
        nameless_sheet(path, rows)
    said = re.escape(f"{path}:3: row: column 4 holds '多余' but has no name in the header (line 1); name it there")
    with pytest.raises(UserError, match=said):
        load_conversations(path)
    got = load_conversations(path, skip_invalid=True, rejects_path=tmp_path / "r.jsonl")
    assert (got.kept, got.rejected) == (1, 1)
    if suffix == ".csv":  # pandas' to_csv writes its index under an empty name
        import pandas as pd

        pd.DataFrame({"instruction": ["问"], "output": ["答"]}).to_csv(path)
        with pytest.raises(UserError, match=r"column 1 holds '0' .* \(pandas writes its index there"):
            load_conversations(path)


def test_a_key_off_by_case_or_spaces_is_refused_with_did_you_mean(tmp_path):
    """`instruction,Input,output` trained the instruction alone, `Input` left unread unsaid; `Output` said only
    'output: missing'; ` output`/`Instruction` and `Text` said 'unknown format'. Each names the key it means."""
    for header, said in [
        ("instruction,Input,output", "Input: unknown key; did you mean 'input'?"),
        ("instruction,input,Output", "Output: unknown key; did you mean 'output'?"),
        ("Instruction,input, output", "did you mean 'output' for ' output', 'instruction' for 'Instruction'?"),
        ("Text", "did you mean 'text' for 'Text'?"),
    ]:
        (tmp_path / "d.csv").write_text(header + "\n" + ",".join(["问"] * (header.count(",") + 1)) + "\n")
        with pytest.raises(UserError, match=re.escape(f"d.csv:2: {said}" if "unknown key" in said else said)):
            load_rows(tmp_path / "d.csv")
    (tmp_path / "d.csv").write_text("instruction,input,output\n问,补充,答\n")  # control: the keys as read
    assert load_conversations(tmp_path / "d.csv").rows[0].messages[0]["content"] == "问\n补充"


def test_xlsx_from_pandas_reads_as_the_jsonl(tmp_path, expected, monkeypatch):
    """Question-answer sheets kept in Excel/WPS were refused ('unsupported file type .xlsx'): the one sheet with a
    header row reads as CSV does, rows named by their Excel row. Several data sheets, a formula never computed, a
    cell right of the header and a workbook that is no zip are refused naming them."""
    import openpyxl
    import pandas as pd

    pd.DataFrame(ROWS).to_excel(tmp_path / "d.xlsx", index=False)  # pandas' own writer (openpyxl)
    got = load_conversations(tmp_path / "d.xlsx")
    assert (got.read, got.kept, got.format) == (7, 7, "alpaca") and messages(got) == expected
    assert [c.source.rsplit(":", 1)[1] for c in got.rows[:2]] == ["2", "3"]

    wb = openpyxl.Workbook()
    ws = wb.active
    for row in [["instruction", "output", None], ["几点？", 12.0, None], [None, None, None], ["日期？", "好", "多余"]]:
        ws.append(row)
    wb.save(tmp_path / "e.xlsx")
    got = load_rows(tmp_path / "e.xlsx", skip_invalid=True)
    assert [r.messages[-1]["content"] for r in got.rows] == ["12"] and got.rejected == 1
    reject = json.loads(got.rejects_path.read_text("utf-8"))
    assert reject["source"].endswith("e.xlsx:4") and reject["error"] == (
        "row: column 3 holds '多余' but has no name in the header (line 1); name it there, or delete the column"
    )
    wb.create_sheet("说明").append(["这个表是问答数据"])
    wb.save(tmp_path / "two.xlsx")
    with pytest.raises(UserError, match=r"two.xlsx: 2 sheets hold data \(Sheet, 说明\)"):
        load_rows(tmp_path / "two.xlsx")
    wb = openpyxl.Workbook()
    wb.active.append(["instruction", "output"])
    wb.active.append(["一加一？", "=1+1"])  # written by a script: no saved value
    wb.save(tmp_path / "f.xlsx")
    with pytest.raises(UserError, match="f.xlsx: sheet 'Sheet' cell B2: formula =1\\+1 has no saved value"):
        load_rows(tmp_path / "f.xlsx")
    (tmp_path / "g.xlsx").write_text("a,b\n")
    with pytest.raises(UserError, match="g.xlsx: not a readable .xlsx workbook"):
        load_rows(tmp_path / "g.xlsx")
    monkeypatch.setitem(__import__("sys").modules, "openpyxl", None)
    with pytest.raises(UserError, match="reading .xlsx needs openpyxl: pip install openpyxl"):
        load_rows(tmp_path / "d.xlsx")


def test_a_file_named_twice_is_refused(tmp_path):
    """`data.train: [data/a.jsonl, data/*.jsonl]` (or a file beside its folder, or the same file twice) read a.jsonl's
    rows twice, so they trained twice as often, without a word. Refused naming the entry and the file; distinct
    files, and a glob that reaches each once, read as before."""
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "q", "output": "a"}])
    write_jsonl(tmp_path / "b.jsonl", [{"instruction": "q2", "output": "b"}])
    glob = str(tmp_path / "*.jsonl")
    assert len(load_rows([glob], "auto").rows) == 2 and len(load_rows([str(a), tmp_path / "b.jsonl"]).rows) == 2
    g, f, d = (re.escape(str(x)) for x in (glob, a, tmp_path))
    for entries, named in (
        ([str(a), glob], rf"^{g}: names {f} again \(also named by {f}\)"),
        ([str(a), str(a)], rf"^{f}: names {f} again; its rows would be read and trained twice"),
        ([str(a), str(tmp_path)], rf"^{d}: names {f} again"),
        ([str(a), str(tmp_path / "." / "a.jsonl")], r"names .*a\.jsonl again"),
    ):
        with pytest.raises(UserError, match=named):
            load_rows(entries, "auto")


def test_a_file_without_an_ending_says_the_ending_names_the_format(tmp_path):
    """`data mix <(cat a.jsonl):1` read '/dev/fd/63: unsupported file type ''' (an empty ending, no hint why)."""
    bare = tmp_path / "rows"
    bare.write_text('{"instruction": "你好", "output": "你好呀"}\n', encoding="utf-8")
    with pytest.raises(
        UserError, match=r"no file-name ending to tell its type by; the ending names the format: \.jsonl"
    ):
        list(files.iter_records(bare))
    with pytest.raises(UserError, match=r"unsupported file type '\.txt'"):
        list(files.iter_records(bare.rename(tmp_path / "rows.txt")))


@pytest.mark.parametrize("ending", ["\r\n", "\n"])
def test_a_windows_line_break_inside_a_csv_cell_reads_as_one_line_break(tmp_path, ending):
    """A quoted cell of a CSV saved on Windows kept its CR LF: the training text held "\\r" (csv keeps a cell's bytes).
    Every CR LF in a cell now reads as LF, whatever the file's own line endings; a lone CR is left as it is."""
    text = f'instruction,output{ending}"第一行\r\n第二行",好的{ending}"a\rb",c{ending}'
    (tmp_path / "w.csv").write_bytes(text.encode("utf-8"))
    rows = [r for _, r in files.iter_records(tmp_path / "w.csv")]
    assert rows == [{"instruction": "第一行\n第二行", "output": "好的"}, {"instruction": "a\rb", "output": "c"}]
    convs = load_conversations(tmp_path / "w.csv").rows
    assert convs[0].messages[0]["content"] == "第一行\n第二行"
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    book.active.append(["instruction", "output"])
    book.active.append(["第一行\r\n第二行", "好的"])
    book.save(tmp_path / "w.xlsx")
    assert [r for _, r in files.iter_records(tmp_path / "w.xlsx")][0]["instruction"] == "第一行\n第二行"


def test_a_semicolon_csv_is_named_as_such(tmp_path):
    """Excel in a European locale saves CSV with ';': the error said 'unknown format (keys ['instruction;output'])'."""
    (tmp_path / "s.csv").write_text("instruction;output\n你好;你好！\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"s\.csv:1: header: one column 'instruction;output', its names split by ';'"):
        load_conversations(tmp_path / "s.csv")
    (tmp_path / "t.csv").write_text("text\n一段;文字\n", encoding="utf-8")  # control: one column, ';' in a cell
    assert [r for _, r in files.iter_records(tmp_path / "t.csv")] == [{"text": "一段;文字"}]


def test_what_the_csv_module_cannot_parse_is_one_line(tmp_path):
    """A cell over csv's 131,072-character default (a long document) and a file with lone-CR line endings ended in a
    _csv.Error traceback. A cell may be as long as data.max_row_bytes (as a JSONL row); past it, and for CR line
    endings, one line names file:line."""
    (tmp_path / "long.csv").write_text('text\n"' + "长" * 200_000 + '"\n', encoding="utf-8")
    assert len(load_rows(tmp_path / "long.csv").rows[0].text) == 200_000
    with pytest.raises(UserError, match=r"long\.csv:2: a cell over 1,000 characters \(data\.max_row_bytes"):
        load_rows(tmp_path / "long.csv", max_row_bytes=1000)
    (tmp_path / "cr.csv").write_bytes("instruction,output\r你好,你好！\r".encode())
    with pytest.raises(UserError, match=r"cr\.csv:1: a line ends in a lone CR \(old Mac line endings\)"):
        load_conversations(tmp_path / "cr.csv")


def test_a_list_column_written_into_a_csv_or_xlsx_cell_is_said_to_be_text(tmp_path):
    """pandas writes a list column into a CSV/xlsx cell as text ('[["在吗", "在"]]', or its repr with single
    quotes); the refusal said only 'history: expected a list of [question, answer] pairs' while the user sees a
    list there. It now says the cell is text, not parsed, and how to keep the list (JSONL); the same row in JSONL (the
    control) loads, and a JSONL row's own bad value keeps the plain line."""
    import pandas as pd

    rows = [{"instruction": "翻译", "input": "hello", "output": "你好", "history": [["在吗", "在"]]}]
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    nameless_sheet(tmp_path / "d.xlsx", [list(rows[0]), [*list(rows[0].values())[:3], "[['在吗', '在']]"]])
    for name in ("d.csv", "d.xlsx"):
        with pytest.raises(UserError, match=rf"{name}:2: history: expected a list of \[question, answer\] pairs; the "
                                            r"cell holds .\[\[.*, text: a CSV/xlsx cell is not parsed as JSON; write "
                                            r"the rows as JSONL \(pandas: df.to_json"):  # fmt: skip
            load_conversations(tmp_path / name)
    assert load_conversations(write_jsonl(tmp_path / "d.jsonl", rows)).rows[0].messages[1]["content"] == "在"
    with pytest.raises(UserError, match=r"bad.jsonl:1: history: expected a list of \[question, answer\] pairs \("):
        load_conversations(write_jsonl(tmp_path / "bad.jsonl", [{**rows[0], "history": "[['在吗', '在']]"}]))


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_the_header_row_again_is_a_bad_row_not_trained(tmp_path, suffix):
    """CSV files joined with their headers (`cat a.csv b.csv`, a sheet pasted under another) hold the header row again:
    it was read as a row and trained (user 'instruction\\ninput', reply 'output'), `data check` saying no problems.
    Now a bad row naming the header's line; the rows around it are read."""
    rows = [
        ["instruction", "input", "output"],
        ["你好", "", "嗨"],
        ["instruction", "input", "output"],
        ["再见", "", "拜"],
    ]
    path = tmp_path / f"d{suffix}"
    if suffix == ".csv":
        part = [b"\xef\xbb\xbf" + "".join(",".join(r) + "\r\n" for r in rows[k : k + 2]).encode() for k in (0, 2)]
        path.write_bytes(b"".join(part))  # two files saved with a BOM (Excel's CSV UTF-8), joined
    else:
        nameless_sheet(path, rows)
    with pytest.raises(UserError, match=re.escape(f"{path}:3: row: the header row (line 1) again")):
        load_conversations(path)
    got = load_conversations(path, skip_invalid=True, rejects_path=tmp_path / "r.jsonl")
    assert [r.messages[-1]["content"] for r in got.rows] == ["嗨", "拜"] and got.rejected == 1


def test_a_second_list_of_rows_beside_data_is_refused_not_dropped(tmp_path):
    """A .json object with rows under `data` and more rows under another key (`{"data": [...], "extra": [...]}`) read
    `data` alone and dropped the rest unsaid; an object of splits (`{"train": [...], "test": [...]}`) was refused
    without naming them. Now both name the keys; `{"version": ..., "data": [...]}` (SQuAD's layout) still reads."""
    row = {"instruction": "问", "output": "答"}
    (tmp_path / "two.json").write_text(json.dumps({"data": [row], "extra": [row, row]}), encoding="utf-8")
    with pytest.raises(UserError, match=r"two\.json: json: rows under 'data' and also under 'extra'"):
        load_rows(str(tmp_path / "two.json"))
    (tmp_path / "splits.json").write_text(json.dumps({"train": [row], "test": [row]}), encoding="utf-8")
    with pytest.raises(UserError, match=r"splits\.json: json: rows under 'train', 'test': save each list"):
        load_rows(str(tmp_path / "splits.json"))
    (tmp_path / "squad.json").write_text(json.dumps({"version": "1", "data": [row]}), encoding="utf-8")
    assert load_rows(str(tmp_path / "squad.json")).kept == 1


def test_a_report_weitiao_wrote_in_a_data_folder_is_not_read_as_data(tmp_path):
    """`data mix` into the data folder writes OUT.report.json beside OUT: reading the folder then stopped on the report
    ('mixed.jsonl.report.json: json: expected a list of rows'), as its rejects files are not. Now a report weitiao
    wrote is left unread like them; a .report.json of the user's is still read (and refused as no rows)."""
    from weitiao.dataeng import mix

    d = tmp_path / "data"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [{"instruction": "问", "output": "答"}])
    write_jsonl(d / "b.jsonl", [{"instruction": "再问", "output": "再答"}])
    mix.run([f"{d / 'a.jsonl'}:0.5", f"{d / 'b.jsonl'}:0.5"], d / "mixed.jsonl")
    assert (d / "mixed.jsonl.report.json").is_file()
    assert load_rows(str(d)).kept == 4  # a, b and the two mixed rows
    (d / "mine.report.json").write_text('{"sources": [{"a": 1}]}', encoding="utf-8")
    with pytest.raises(UserError, match=r"mine\.report\.json: json: "):
        load_rows(str(d))

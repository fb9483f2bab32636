"""A tokenizer.json its author wrote is what we tokenize with, even where transformers 5 rebuilds the class."""

import json

from conftest import build_tokenizer, save_tiny_model
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from weitiao.infer.export import _tokenizer_note
from weitiao.models.load import load_tokenizer

TEXT = "It costs 12345 yuan, 我喜欢咖啡！"


def test_qwen2_folder_with_its_own_tokenizer_json_tokenizes_as_the_file(tmp_path, capsys):
    folder = save_tiny_model(tmp_path / "m", build_tokenizer(), arch="qwen2")  # GPT-2 split, qwen2 config
    from_file = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(TEXT, add_special_tokens=False).ids
    # transformers 5 builds any qwen2 model's tokenizer as Qwen2Tokenizer (digits one by one): the file's split is lost
    assert AutoTokenizer.from_pretrained(folder)(TEXT)["input_ids"] != from_file
    tok = load_tokenizer(str(folder))
    assert tok(TEXT, add_special_tokens=False)["input_ids"] == from_file
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.chat_template
    err = capsys.readouterr().err
    assert "builds its tokenizer as Qwen2Tokenizer" in err and "uses tokenizer.json as written" in err
    load_tokenizer(str(folder))
    load_tokenizer(f"{folder}/../{folder.name}")
    assert "note:" not in capsys.readouterr().err  # said once a process, however the folder is named
    # the export tells whoever serves it with vLLM (transformers 5) that the ids differ there
    assert "vLLM" in _tokenizer_note(folder)[0]


def test_a_tokenizer_json_the_class_agrees_with_keeps_the_class(tmp_path, capsys):
    folder = save_tiny_model(tmp_path / "m", build_tokenizer(), arch="qwen2")
    AutoTokenizer.from_pretrained(folder).save_pretrained(folder)  # now the file holds Qwen2's own split
    assert json.loads((folder / "tokenizer.json").read_text())["pre_tokenizer"]["type"] == "Sequence"
    tok = load_tokenizer(str(folder))
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert "note:" not in capsys.readouterr().err
    assert _tokenizer_note(folder) == []


def test_the_note_is_said_by_one_process_of_a_run(tmp_path, capsys, monkeypatch):
    """Under torchrun every process loads the tokenizer, and each printed the note (2 processes: twice, 8 GPUs: 8
    times); process 0 (RANK 0) says it now, the others still use tokenizer.json as written."""
    folder = save_tiny_model(tmp_path / "m", build_tokenizer(), arch="qwen2")
    from_file = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(TEXT, add_special_tokens=False).ids
    monkeypatch.setenv("RANK", "1")
    assert load_tokenizer(str(folder))(TEXT, add_special_tokens=False)["input_ids"] == from_file
    assert "note:" not in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    load_tokenizer(str(folder))
    assert "uses tokenizer.json as written" in capsys.readouterr().err

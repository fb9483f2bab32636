"""The CLI as a user meets it: one-line errors with exit 1, data check and data show."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def weitiao(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "weitiao", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_malformed_data_is_one_line_error(tmp_path, tiny_model_dir):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "问", "output": "答"}, {"instruction": "问"}])
    p = weitiao("data", "check", bad, "--model", tiny_model_dir)
    assert p.returncode == 1
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert lines == [f"error: {bad}:2: output: missing (or pass --skip-invalid to set bad rows aside)"]


def test_a_bad_row_names_the_way_to_skip_it_that_the_command_has(tmp_path, tiny_model_dir):
    """The loader's hint used to say --skip-invalid everywhere: training has data.skip_invalid, mix has neither."""
    from conftest import recipe_config

    from weitiao.data.formats import load_conversations
    from weitiao.errors import UserError
    from weitiao.recipes import dpo, sft

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "问", "output": "答"}, {"instruction": "问"}])
    with pytest.raises(UserError, match=r"bad.jsonl:2: output: missing \(or set data.skip_invalid: true to set"):
        sft.run(recipe_config("sft", tiny_model_dir, bad, tmp_path / "o"))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "问", "chosen": "好"}])
    with pytest.raises(UserError, match=r"pairs.jsonl:1: .*\(or set data.skip_invalid: true to set"):
        dpo.run(recipe_config("dpo", tiny_model_dir, pairs, tmp_path / "o"))
    with pytest.raises(UserError, match=r"bad.jsonl:2: output: missing$"):
        load_conversations(str(bad), skip_hint=None)
    p = weitiao("data", "mix", f"{bad}:1", "--out", tmp_path / "mixed.jsonl")
    assert p.returncode == 1 and "skip" not in p.stderr, p.stderr


def test_bad_config_key_is_one_line_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  train: [x.jsonl]\ntrain:\n  lr: fast\n")
    p = weitiao("sft", cfg)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"{cfg}:4: train.lr: Input should be a valid number" in p.stderr
    p = weitiao("sft", cfg, "train.lr=1e-4", "train.lrr=3")
    assert p.returncode == 1 and "train.lrr: Extra inputs are not permitted" in p.stderr


def test_a_misspelled_config_key_names_the_key_it_meant(tmp_path):
    """An unknown key only said 'Extra inputs are not permitted': the key a typo meant is named (file:line kept);
    a key near none stays as it was."""
    from weitiao.config import load_config
    from weitiao.errors import UserError
    from weitiao.recipes.dpo import DPOConfig
    from weitiao.recipes.sft import SFTConfig

    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  train: [x.jsonl]\ntrain:\n  eval_evry: 0\n")
    with pytest.raises(UserError, match=rf"^{cfg}:4: train.eval_evry: Extra .*; did you mean train.eval_every\?$"):
        load_config(SFTConfig, cfg)
    with pytest.raises(UserError, match=r"^config: trian: Extra inputs are not permitted; did you mean train\?$"):
        load_config(SFTConfig, None, ["data.train=[x.jsonl]", "trian.lr=1"])
    with pytest.raises(UserError, match=r": dpo.betta: .*; did you mean dpo.beta\?$"):
        load_config(DPOConfig, None, ["data.train=[x.jsonl]", "dpo.betta=0.2"])
    with pytest.raises(UserError, match=r": train.colour: .*; `weitiao config show sft` lists the keys of train$"):
        load_config(SFTConfig, None, ["data.train=[x.jsonl]", "train.colour=red"])


def test_a_bad_key_value_names_the_command_line_not_the_config_file(tmp_path):
    """A mistake in a `key=value` was reported as `CONFIG.yaml: key: problem`, sending the user to a file where the
    key is absent (or holds another, valid, value). It names the command-line item; one in the file keeps file:line."""
    from weitiao.config import load_config
    from weitiao.errors import UserError
    from weitiao.recipes.sft import SFTConfig

    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  train: [x.jsonl]\n  packing: true\ntrain:\n  lr: 1.0e-4\n")
    with pytest.raises(UserError, match=r"^command line data\.eval=null: data\.eval: Input should be a valid list$"):
        load_config(SFTConfig, cfg, ["data.eval=null"])
    with pytest.raises(UserError, match=r"^command line train\.lr_scheduler=linear: train\.lr_scheduler: Extra .*"):
        load_config(SFTConfig, cfg, ["train.lr_scheduler=linear"])
    with pytest.raises(UserError, match=r"^command line data\.packing=1: data\.packing: 1 where true or false goes"):
        load_config(SFTConfig, cfg, ["data.packing=1"])
    # an unknown section made by a dotted override (`weitiao demo bad.key=1` named the shipped sft.yaml)
    with pytest.raises(UserError, match=r"^command line bad\.key=1: bad: Extra inputs are not permitted; the top lev"):
        load_config(SFTConfig, cfg, ["bad.key=1"])
    with pytest.raises(UserError, match=r"^command line lora\.rr\.x=1: lora\.rr: Extra inputs are not permitted"):
        load_config(SFTConfig, cfg, ["lora.rr.x=1"])
    cfg.write_text("data:\n  train: [x.jsonl]\n  packing: 1\n")
    with pytest.raises(UserError, match=rf"^{cfg}:3: data\.packing: 1 where true or false goes"):
        load_config(SFTConfig, cfg, ["train.lr=1e-4"])


def test_an_unknown_config_key_names_what_its_section_takes_and_every_other_error(tmp_path):
    """A key near no other only said 'Extra inputs are not permitted (and 1 more)': a short section's keys are
    listed (PPO's data has no max_len), a long one points at `config show`, and every other bad key is named."""
    from weitiao.config import load_config
    from weitiao.errors import UserError
    from weitiao.recipes.ppo import PPOConfig

    cfg = tmp_path / "c.yaml"
    cfg.write_text("reward: {path: rm}\ndata:\n  prompts: [p.jsonl]\n  max_len: 64\nppo:\n  max_new_tokens: 3\n")
    msg = rf"^{cfg}:4: data.max_len: Extra .*; data takes prompts, template \(also: ppo.max_new_tokens\)$"
    with pytest.raises(UserError, match=msg):
        load_config(PPOConfig, cfg)
    with pytest.raises(UserError, match=r": colour: Extra .*; the top level takes model, lora, reward, data, ppo, "):
        load_config(PPOConfig, None, ["reward.path=rm", "data.prompts=[p.jsonl]", "colour=red"])


def test_data_check_reports(tmp_path, tiny_model_dir):
    rows = [{"instruction": "今天天气怎么样？", "output": "挺好的☀️"}] * 3 + [
        {"instruction": "长" * 300, "output": "好"}
    ]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    p = weitiao("data", "check", f, "--model", tiny_model_dir, "--max-len", "64", "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["format"] == "alpaca" and rep["read"] == 4 and rep["kept"] == 4
    assert rep["duplicate_rows"] == 2 and rep["over_max_len"] == 1 and rep["missing_eos"] == 0
    assert sum(rep["histogram"].values()) == 4
    p = weitiao("data", "check", f, "--model", tiny_model_dir)
    assert "duplicate rows" in p.stdout and "exceed max_len" not in p.stdout  # default max_len 1024


def test_data_check_takes_the_trainers_row_byte_limit(tmp_path, tiny_model_dir):
    """Training refuses a row over data.max_row_bytes, and `data check` had no way to be given that limit: it passed
    data the run then stopped on. --max-row-bytes is the same limit (a bad row: --skip-invalid sets it aside)."""
    rows = [{"instruction": "问", "output": "答"}, {"instruction": "问", "output": "长" * 100}]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    p = weitiao("data", "check", f, "--model", tiny_model_dir, "--max-row-bytes", "200")
    assert p.returncode == 1 and f"error: {f}:2: row: 336 bytes, over the 200-byte limit" in p.stderr, p.stderr
    p = weitiao("data", "check", f, "--model", tiny_model_dir, "--max-row-bytes", "200", "--skip-invalid", "--json")
    assert p.returncode == 0, p.stderr
    assert [json.loads(p.stdout)[k] for k in ("read", "kept", "rejected")] == [2, 1, 1]


def test_data_check_fails_on_data_truncation_leaves_nothing_of(tmp_path, tiny_model_dir, tokenizer):
    """--max-len 30 dropped every row, and `data check` exited 0 with a warning while training stops ("no rows left
    after truncation"); now the report is still printed (table or JSON, `refused` set) and it exits 1 with one line."""
    from weitiao.data.check import check_file

    rows = [{"instruction": "请详细介绍一下北京的历史和文化" * 2, "output": "北京有三千多年的建城史。"}] * 2
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    p = weitiao("data", "check", f, "--model", tiny_model_dir, "--max-len", "30", "--json")
    assert p.returncode == 1 and json.loads(p.stdout)["dropped"] == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: truncation drop at max_len 30 leaves no rows to train (all 2 dropped) and training stops there; "
        "raise --max-len (data.max_len) or use another --truncation (data.truncation)"
    ]
    p = weitiao("data", "check", f, "--model", tiny_model_dir, "--max-len", "30")
    assert p.returncode == 1 and "rows read / kept / rejected" in p.stdout and "no problems" not in p.stdout
    pairs = [{"prompt": "请详细介绍一下北京的历史和文化", "chosen": "北京有三千多年的建城史。", "rejected": "不知道。"}]
    pf = write_jsonl(tmp_path / "p.jsonl", pairs)
    assert "leaves no pairs to train" in check_file([str(pf)], tokenizer, max_len=20).refused
    assert check_file([str(pf)], tokenizer, max_len=200).refused == ""  # one pair kept: it trains
    assert check_file([str(f)], tokenizer, max_len=200).refused == ""


def test_data_check_fails_on_rows_training_stops_on(tmp_path, tiny_model_dir, tokenizer):
    """A pair with chosen == rejected, an empty reply or score columns preferring rejected, and a row past the model's
    positions: `data check` warned '(training refuses them)' and exited 0, while a default run stops on the first.
    Now the report is printed, then one line and exit 1; --skip-invalid (training's data.skip_invalid) passes the
    rows training would skip, and a file of good pairs passes."""
    from weitiao.data.check import check_file

    good = {"prompt": "今天天气怎么样？", "chosen": "晴，适合出门。", "rejected": "不知道。"}
    same = write_jsonl(tmp_path / "same.jsonl", [good, {**good, "rejected": good["chosen"]}])
    p = weitiao("data", "check", same, "--model", tiny_model_dir)
    assert p.returncode == 1 and "chosen == rejected" in p.stdout, p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: 1 pairs with chosen == rejected (training refuses them): training stops at the first such row; fix or "
        "drop those rows, or skip them (--skip-invalid, data.skip_invalid=true)"
    ]
    assert check_file([str(same)], tokenizer).refused.endswith("skip them (data.skip_invalid=true)")  # the console's
    assert check_file([str(same)], tokenizer, skip_invalid=True).refused == ""
    assert check_file([str(write_jsonl(tmp_path / "good.jsonl", [good] * 3))], tokenizer).refused == ""
    empty = write_jsonl(tmp_path / "empty.jsonl", [good, {**good, "rejected": ""}])
    assert "empty chosen/rejected" in check_file([str(empty)], tokenizer).refused
    flipped = write_jsonl(tmp_path / "flip.jsonl", [{**good, "score_chosen": 1, "score_rejected": 5}])
    assert "prefer rejected" in check_file([str(flipped)], tokenizer).refused
    long = write_jsonl(tmp_path / "long.jsonl", [{"instruction": "长" * 250, "output": "好"}])
    p = weitiao("data", "check", long, "--model", tiny_model_dir)
    assert p.returncode == 1 and "longer than the model's 512 positions" in p.stderr, p.stderr


def test_data_check_counts_rows_over_the_models_positions(tmp_path, tiny_model_dir):
    """A row longer than the model's 512 positions but within --max-len 1024 passed `data check` (with only
    transformers' "721 > 512" tokenizer warning) while training refuses it; now the report counts it and says how."""
    rows = [{"instruction": "长" * 250, "output": "好"}, {"instruction": "你好", "output": "嗨"}]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    p = weitiao("data", "check", f, "--model", tiny_model_dir, "--json")
    rep = json.loads(p.stdout)
    assert (rep["context"], rep["over_context"], rep["over_max_len"]) == (512, 1, 0), p.stderr
    p = weitiao("data", "check", f, "--model", tiny_model_dir)
    assert "1 sequences are longer than the model's 512 positions" in p.stdout and "Token indices" not in p.stderr
    assert (
        json.loads(weitiao("data", "check", f, "--model", tiny_model_dir, "--max-len", "512", "--json").stdout)[
            "over_context"
        ]
        == 0
    )  # over max_len instead: the truncation policy's


def test_data_show_marks_trained_tokens(tmp_path, tiny_model_dir):
    f = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "你好", "output": "嗨😊", "history": [["在吗", "在"]]}])
    p = weitiao("data", "show", f, "--model", tiny_model_dir, "--plain")
    assert p.returncode == 0, p.stderr
    assert "⟦在<|im_end|>⟧" in p.stdout and "⟦嗨😊<|im_end|>⟧" in p.stdout and "⟦你好" not in p.stdout
    p = weitiao("data", "show", f, "--model", tiny_model_dir, "--plain", "--last-turn-only")
    assert "⟦在<|im_end|>⟧" not in p.stdout and "⟦嗨😊<|im_end|>⟧" in p.stdout
    p = weitiao("data", "show", f, "--model", tiny_model_dir, "--index", "5")
    assert p.returncode == 1 and "--index 5" in p.stderr


def two_processes(tmp_path, *args: str, torchrun: bool = True) -> list[subprocess.CompletedProcess]:
    """`args` run on 2 CPU processes: under torchrun (one launch), or started by hand with RANK/WORLD_SIZE (each
    process sets up a gloo process group itself, as a launcher other than torchrun leaves it to do)."""
    import os
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    if torchrun:
        ddp = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}"]
        return [subprocess.run([sys.executable, *ddp, *args], env=env, cwd=ROOT, capture_output=True, text=True)]
    env |= {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    procs = [
        subprocess.Popen(
            [sys.executable, *args], env=env | {"RANK": str(r)}, cwd=ROOT, stderr=subprocess.PIPE, text=True
        )
        for r in (0, 1)
    ]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), "", p.stderr.read()) for p in procs]


def test_a_user_error_on_several_processes_is_printed_once(tmp_path):
    """Under torchrun every process printed the same `error:` line (2 processes: twice, 8 GPUs: 8 times). Now the
    first process to have it prints it, also when only process 1 has it; every process still exits non-zero."""
    (tmp_path / "empty.yaml").write_text("{}\n")
    [p] = two_processes(tmp_path, "-m", "weitiao", "sft", str(tmp_path / "empty.yaml"))
    assert p.returncode != 0
    assert [x for x in p.stderr.splitlines() if x.startswith("error: ")] == [
        f"error: {tmp_path / 'empty.yaml'}: data: Field required"
    ]
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import os, sys, time\nfrom weitiao import cli\nfrom weitiao.errors import UserError\n\n\n"
        "def app():\n    if sys.argv[1] == 'pg':\n        import torch.distributed as d\n\n"
        "        d.init_process_group('gloo')\n"
        "    if sys.argv[1] != 'one' or os.environ['RANK'] == '1':\n"
        "        raise UserError(f'{sys.argv[1]}: said once')\n    time.sleep(120)\n\n\n"
        "cli.app = app\ncli.main()\n"
    )
    [p] = two_processes(tmp_path, str(driver), "one")  # process 0 is busy (stopped by torchrun): 1 says it
    assert p.returncode != 0 and p.stderr.count("error: ") == 1 and "error: one: said once" in p.stderr
    both = two_processes(tmp_path, str(driver), "pg", torchrun=False)  # no torchrun: the process group's store
    assert [p.returncode for p in both] == [1, 1]
    assert "".join(p.stderr for p in both).count("error: pg: said once") == 1


def test_every_command_names_cpu_for_deepspeed(monkeypatch):
    """`weitiao export --merge` printed DeepSpeed's "[WARNING] Setting accelerator to CPU. If you have GPU ..."
    (peft's merge imports it): the CLI names cpu for DeepSpeed's probe on a machine without CUDA, a user's own
    DS_ACCELERATOR untouched. It is named when DeepSpeed is first looked up, so a command that never gets there
    does not import torch to ask about CUDA."""
    import importlib.util

    import torch

    from weitiao import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["weitiao", "--help"])
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))  # the hook main() adds goes with the test
    if "deepspeed" in sys.modules:
        monkeypatch.delitem(sys.modules, "deepspeed")
    for given, want in ((None, "cpu"), ("cuda", "cuda")):
        if given is None:
            monkeypatch.delenv("DS_ACCELERATOR", raising=False)
        else:
            monkeypatch.setenv("DS_ACCELERATOR", given)
        with pytest.raises(SystemExit):
            cli.main()
        assert __import__("os").environ.get("DS_ACCELERATOR") == given  # --help reached no DeepSpeed
        importlib.util.find_spec("deepspeed")  # what accelerate and transformers ask before importing it
        assert __import__("os").environ["DS_ACCELERATOR"] == want


def test_a_cross_field_error_names_the_override_that_made_it(tmp_path):
    """ppo.init_kl_coef=0 on the command line beside the file's kl_target was blamed on `p.yaml:6` (the kl_target
    line, which is fine); an error across a section's keys now names the command-line item(s) its message names, and
    keeps file:line when the keys all come from the file. ppo.micro_train_batch_size above ppo.train_batch_size was
    capped to a minibatch unsaid: refused naming both keys."""
    from weitiao.config import load_config
    from weitiao.errors import UserError
    from weitiao.recipes.ppo import PPOConfig

    cfg = tmp_path / "p.yaml"
    cfg.write_text("reward:\n  kind: function\n  path: m:f\ndata:\n  prompts: [p.jsonl]\nppo:\n  kl_target: 6.0\n"
                   "  train_batch_size: 4\n")  # fmt: skip
    with pytest.raises(UserError, match=r"^command line ppo\.init_kl_coef=0: ppo: .*kl_target=6\.0 scales β"):
        load_config(PPOConfig, cfg, ["ppo.init_kl_coef=0", "ppo.gamma=0.9"])
    big = r"ppo\.micro_train_batch_size=16 is more than ppo\.train_batch_size=4 \(samples per minibatch"
    with pytest.raises(UserError, match=rf"^command line ppo\.micro_train_batch_size=16: ppo: Value error, {big}"):
        load_config(PPOConfig, cfg, ["ppo.micro_train_batch_size=16"])
    with pytest.raises(UserError, match=r"^command line ppo\.train_batch_size=2: ppo: .*micro_train_batch_size=4 is"):
        load_config(PPOConfig, cfg, ["ppo.train_batch_size=2"])
    assert load_config(PPOConfig, cfg, ["ppo.micro_train_batch_size=4"]).ppo.micro_train_batch_size == 4  # control
    cfg.write_text(cfg.read_text() + "  init_kl_coef: 0\n")  # control: all in the file → the file's line
    with pytest.raises(UserError, match=rf"^{re.escape(str(cfg))}:\d+: ppo: .*kl_target=6\.0 scales β"):
        load_config(PPOConfig, cfg, ["ppo.gamma=0.9"])


def test_a_bad_train_out_from_the_command_line_is_named_there(tmp_path):
    """train.out=FILE on the command line was blamed on the config's own train.out line (c.yaml:4), which is fine."""
    from weitiao.config import load_config
    from weitiao.errors import UserError
    from weitiao.recipes.sft import SFTConfig

    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  train: [x.jsonl]\ntrain:\n  out: runs/a\n")
    (tmp_path / "f.txt").write_text("mine")
    given = re.escape(f"train.out={tmp_path / 'f.txt'}")
    with pytest.raises(UserError, match=rf"^command line {given}: train\.out: .* is an existing file"):
        load_config(SFTConfig, cfg, [f"train.out={tmp_path / 'f.txt'}"])
    cfg.write_text(f"data:\n  train: [x.jsonl]\ntrain:\n  out: {tmp_path / 'f.txt'}\n")  # control: the file's line
    with pytest.raises(UserError, match=rf"^{re.escape(str(cfg))}:4: train\.out: .* is an existing file"):
        load_config(SFTConfig, cfg, ["train.lr=1e-4"])


def test_a_user_error_on_one_process_leaves_the_others_quiet(tmp_path):
    """A user error only process 1 hits (PPO's reward function returning NaN for its own samples) was said once, and
    process 0, waiting in an all-reduce for it, then printed a gloo traceback ("Connection closed by peer") under the
    line. Now a process whose failure follows another's said user error exits 1 without one; a failure of its own,
    with no user error said, keeps its traceback."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import os, sys, torch\nimport torch.distributed as d\nfrom weitiao import cli\nfrom weitiao.errors import "
        "UserError\n\n\ndef app():\n    d.init_process_group('gloo')\n    d.barrier()\n"  # both past init
        "    if os.environ['RANK'] == '1':\n"
        "        if sys.argv[1] == 'bug':\n            return\n        raise UserError('reward f: score nan')\n"
        "    if sys.argv[1] == 'bug':\n        raise RuntimeError('our own bug')\n"
        "    d.all_reduce(torch.zeros(1))\n\n\ncli.app = app\ncli.main()\n"
    )
    both = two_processes(tmp_path, str(driver), "user", torchrun=False)
    assert [p.returncode for p in both] == [1, 1]
    assert [p.stderr.strip() for p in both] == ["", "error: reward f: score nan"]  # process 0: no traceback
    bug = two_processes(tmp_path, str(driver), "bug", torchrun=False)[0]
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "RuntimeError: our own bug" in bug.stderr

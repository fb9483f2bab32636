"""Synthetic behavior logs with a hidden true quality per item, so pair precision can be measured.

`synth_dwell` writes a content site (xhs: short image notes under tags; zhihu: long answers under
questions): events.parquet (one row per view), content.parquet, truth.parquet (id, quality). A view's
dwell is  expected reading time × completion(quality, user taste, length) × attention(position) ×
noise, plus accidental clicks, idle tabs and repeat views; likes/collects rise with quality. Feed
slots are drawn independently of quality, so top items get dwell they did not earn.

`synth_chat` writes a chat site: responses.parquet (one row per generated response), events.parquet
(thumbs_up/down, copy, share, regenerate, follow_up, dwell) and truth.parquet. Users rate and copy by
a noisy view of quality, regenerate bad answers, follow up on kept ones, and dwell longer on long ones.

Texts are short previews (`length_chars` holds an item's full length) so ten million events fit.
The generator is ours, not fitted to any real site: precision on it checks that the rules do what
they claim (margins, normalization, position correction), not how a real site will behave.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from weitiao.errors import UserError
from weitiao.io import claim_outputs, file_mode, remember
from weitiao.train.log import progress_bar

TOPICS = (
    "春日穿搭 周末探店 露营装备 咖啡器具 健身餐 城市漫步 考研复习 装修避坑 猫咪日常 旅行攻略 护肤心得 读书笔记".split()
)
SUBJECTS = "量子计算 房贷提前还款 新能源车 职场沟通 大模型微调 睡眠质量 长期主义 极简生活 育儿焦虑 跑步膝盖".split()
QUESTION = ("如何评价{}？", "{}有哪些值得注意的地方？", "普通人应该怎样看待{}？", "关于{}，有什么经验可以分享？")
SENTENCES = (
    "先说结论，再讲理由。",
    "这一点很多人都忽略了。",
    "我自己试过三种方法。",
    "数据来自公开资料。",
    "下面分几步展开。",
    "配图是实拍，没有滤镜。",
    "总体来说性价比不错。",
    "踩过的坑都写在这里了。",
    "有不同意见欢迎讨论。",
    "关键在于坚持和复盘。",
)
CHAT_TASKS = (
    ("写一个Python函数，{}", ("判断回文串", "合并两个有序列表", "统计词频", "解析日期字符串", "去除重复元素"), True),
    ("用三句话解释{}", ("梯度下降", "注意力机制", "通货膨胀", "光合作用", "区块链"), False),
    ("帮我写一段{}", ("请假邮件", "生日祝福", "产品介绍", "会议纪要", "道歉信"), False),
    ("{}怎么做比较好？", ("番茄炒蛋", "时间管理", "面试自我介绍", "减脂计划", "周报"), False),
)
FOLLOW_UPS = ("能再详细一点吗？", "举个例子吧", "那有什么需要注意的？", "换一种说法呢？", "可以更简短些吗？")


def _sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-x))


def claim(out_dir: str | Path, names: tuple[str, ...], fmt: str) -> None:
    """Before any work: every table we will write may replace only our own earlier one (not the first few, then
    a refusal at the last with the others already replaced)."""
    ext = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}.get(fmt, "")
    claim_outputs([Path(out_dir) / f"{n}{ext}" for n in names])


def write_table(table: pa.Table, path: Path) -> Path:
    """Atomically write an Arrow table as .parquet, .csv or .jsonl (by suffix); never over a file we did not write."""
    claim_outputs([path])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if path.suffix == ".parquet":
            pq.write_table(table, tmp)
        else:
            import duckdb

            con = duckdb.connect()
            con.register("t", table)
            fmt = "csv, HEADER true" if path.suffix == ".csv" else "json"
            quoted = str(tmp).replace("'", "''")  # a quote in the folder's name ends an SQL string
            con.execute(f"COPY (SELECT * FROM t) TO '{quoted}' (FORMAT {fmt})")
            con.close()
        os.chmod(tmp, file_mode(path))  # not mkstemp's private 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    remember(path)
    return path


def _ids(prefix: str, n: int) -> pa.Array:
    width = max(6, len(str(n - 1)))
    return pa.array([f"{prefix}{i:0{width}d}" for i in range(n)])


def synth_dwell(
    out_dir: str | Path,
    n_events: int,
    style: str = "zhihu",
    seed: int = 0,
    fmt: str = "parquet",
    progress: bool = True,
) -> dict[str, Path]:
    """Write events/content/truth files of a synthetic content site; returns their paths."""
    if style not in ("xhs", "zhihu"):
        raise UserError(f"--style {style!r}: use xhs or zhihu")
    if n_events < 100:
        raise UserError(f"--n {n_events}: need at least 100 events")
    claim(out_dir, ("events", "content", "truth"), fmt)
    rng = np.random.default_rng(seed)
    zh = style == "zhihu"
    out_dir = Path(out_dir)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"synth dwell ({style})", total=4, info="items")
        # 1. items: contexts of 3–10 answers (4–12 notes), hidden quality, length, feed slot, popularity
        n_items = max(8, n_events // (40 if zh else 60))
        sizes = rng.integers(3, 11, n_items) if zh else rng.integers(4, 13, n_items)
        sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), n_items)) + 1]
        n_items, n_ctx = int(sizes.sum()), len(sizes)
        ctx = np.repeat(np.arange(n_ctx), sizes)
        k = sizes[ctx]
        first = np.repeat(np.cumsum(sizes) - sizes, sizes)
        order = np.argsort(ctx * 2.0 + rng.random(n_items), kind="stable")  # shuffle within each context
        slot = np.empty(n_items, np.int64)
        slot[order] = np.arange(n_items) - first + 1
        quality = rng.normal(0.0, 1.0, n_items)
        if zh:
            chars = np.clip(np.exp(rng.normal(np.log(900), 0.6, n_items)), 80, 6000).astype(np.int64)
            images = rng.poisson(0.6, n_items)
        else:
            chars = np.clip(np.exp(rng.normal(np.log(250), 0.5, n_items)), 20, 1000).astype(np.int64)
            images = rng.integers(1, 10, n_items)
        pop = np.exp(rng.normal(0, 1.0, n_ctx))[ctx] * np.exp(rng.normal(0, 0.5, n_items)) * slot**-0.5
        bar.update(task, advance=1, info="events")

        # 2. events: which item, which slot it was shown in, who, when; some views repeat earlier ones
        item = rng.choice(n_items, size=n_events, p=pop / pop.sum())
        pos = np.where(rng.random(n_events) < 0.6, slot[item], rng.integers(0, 1 << 30, n_events) % k[item] + 1)
        user = rng.integers(0, max(50, n_events // 15), n_events)
        ts = rng.integers(0, 30 * 86400 * 10**6, n_events)
        rep = np.flatnonzero(rng.random(n_events) < 0.04)
        src = rng.integers(0, n_events, rep.size)
        item[rep], user[rep], pos[rep] = item[src], user[src], pos[src]
        ts[rep] = ts[src] + rng.integers(60, 86400, rep.size) * 10**6
        bar.update(task, advance=1, info="dwell")

        # 3. dwell = true reading time × completion × attention(position) × noise; then accidents and idling
        q, c = quality[item], chars[item]
        expected = (3.0 + c / 7.0 + images[item] * 3.0) if zh else (1.0 + c / 7.0 + images[item] * 2.5)
        taste = rng.normal(0, 1, n_events)
        if zh:
            completion = _sigmoid(1.0 * q + 0.8 * taste - 0.3) * (c / 900.0) ** -0.1
            dwell = expected * completion * pos.astype(float) ** -0.4 * np.exp(rng.normal(0, 0.3, n_events))
        else:
            completion = _sigmoid(0.6 * q + 1.0 * taste)
            dwell = 1.5 + expected * completion * np.exp(rng.normal(0, 0.5, n_events))
        dwell[rep] *= 0.5  # a second look is a skim
        like = rng.random(n_events) < _sigmoid((1.2 if zh else 1.6) * q - (3.5 if zh else 3.0))
        collect = rng.random(n_events) < _sigmoid((1.2 if zh else 1.6) * q - (4.5 if zh else 3.8))
        u = rng.random(n_events)
        accidental, idle = u < 0.06, (u >= 0.06) & (u < 0.08)
        dwell[accidental] = rng.uniform(0.1, 2.8 if zh else 0.9, int(accidental.sum()))
        dwell[idle] = expected[idle] * rng.uniform(4, 40, int(idle.sum())) + rng.uniform(60, 1800, int(idle.sum()))
        like[accidental | idle] = collect[accidental | idle] = False
        bar.update(task, advance=1, info="write")

        # 4. files
        ids = _ids("a" if zh else "n", n_items)
        if zh:
            names = [QUESTION[i % len(QUESTION)].format(SUBJECTS[(i // 4) % len(SUBJECTS)]) for i in range(n_ctx)]
            context = [f"q{i:06d}" for i in range(n_ctx)]
            prompts = [f"{t}（问题 {i}）" for i, t in enumerate(names)]
        else:
            context = [f"#{TOPICS[i % len(TOPICS)]}/{i}" for i in range(n_ctx)]
            prompts = [f"写一篇小红书笔记，话题 {t}" for t in context]
        texts = [
            f"（{'回答' if zh else '笔记'} {ids[i].as_py()}）" + "".join(SENTENCES[j] for j in rng.permutation(10)[:4])
            for i in range(n_items)
        ]
        ext = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}[fmt]
        content = pa.table(
            {
                "content_id": ids,
                "context": pa.array(context).take(pa.array(ctx)),
                "prompt": pa.array(prompts).take(pa.array(ctx)),
                "text": texts,
                "length_chars": chars,
                "images": images,
            }
        )
        events = pa.table(
            {
                "content_id": ids.take(pa.array(item)),
                "user_id": _ids("u", int(user.max()) + 1).take(pa.array(user)),
                "ts": pa.array(ts + 1_740_787_200 * 10**6, pa.timestamp("us")),
                "dwell_s": np.round(dwell, 2),
                "position": pos,
                "liked": like,
                "collected": collect,
            }
        )
        paths = {
            "events": write_table(events, out_dir / f"events{ext}"),
            "content": write_table(content, out_dir / f"content{ext}"),
            "truth": write_table(pa.table({"id": ids, "quality": quality}), out_dir / f"truth{ext}"),
        }
        bar.update(task, advance=1, info=f"{n_events:,} events, {n_items:,} items, {n_ctx:,} contexts")
    return paths


def _surface(rng: np.random.Generator, prompt: str) -> str:
    """How different users type the same request: 请/spaces/punctuation vary."""
    r = rng.random()
    if r < 0.2:
        return "请" + prompt
    if r < 0.35:
        return prompt.rstrip("？?") + " ?"
    if r < 0.45:
        return prompt.replace("，", ", ")
    return prompt


def synth_chat(
    out_dir: str | Path, n_events: int, seed: int = 0, fmt: str = "parquet", progress: bool = True
) -> dict[str, Path]:
    """Write responses/events/truth files of a synthetic chat site with about `n_events` events."""
    if n_events < 100:
        raise UserError(f"--n {n_events}: need at least 100 events")
    claim(out_dir, ("events", "responses", "truth"), fmt)
    rng = np.random.default_rng(seed)
    pool = []  # (prompt, is_code, difficulty)
    for template, objects, code in CHAT_TASKS:
        for obj in objects:
            for variant in range(max(1, n_events // 2000)):
                suffix = f"（第{variant}版）" if variant else ""
                pool.append((template.format(obj) + suffix, code, rng.normal(0, 0.5)))
    resp: dict[str, list] = {k: [] for k in ("response_id", "session_id", "turn", "ts", "prompt", "response")}
    ev: dict[str, list] = {k: [] for k in ("response_id", "event", "ts", "value")}
    truth: list[float] = []
    clock = [1_740_787_200.0]

    def emit(rid: str, event: str, value: float | None = None) -> None:
        clock[0] += rng.uniform(1, 10)
        for key, v in zip(ev, (rid, event, clock[0], value)):
            ev[key].append(v)

    with progress_bar(progress) as bar:
        task = bar.add_task("synth chat", total=n_events, info="")
        s = 0
        while len(ev["event"]) < n_events:
            sid = f"s{s:07d}"
            clock[0] += rng.exponential(30.0)
            prompt, code, diff = pool[rng.integers(len(pool))]
            user_prompt = _surface(rng, prompt)
            for turn in range(1, 6):
                for attempt in range(4):  # 1. a response; the user reads, rates, copies, maybe regenerates
                    rid = f"r{len(truth):08d}"
                    q = float(rng.normal(-diff, 1.0))
                    chars = int(np.clip(np.exp(rng.normal(np.log(300), 0.7)), 20, 4000))
                    clock[0] += rng.uniform(3, 20)
                    body = "".join(SENTENCES[j] for j in rng.integers(0, len(SENTENCES), chars // 10 + 1))
                    row = (rid, sid, turn, clock[0], user_prompt, f"（回复 {rid}）{body}"[:chars])
                    for key, v in zip(resp, row):
                        resp[key].append(v)
                    truth.append(q)
                    seen = q + rng.normal(0, 0.5)  # the user's noisy view of quality
                    if rng.random() < 0.8:  # dwell: longer answers hold longer; accidents and idle tabs
                        d = (3 + chars / 9.0) * float(_sigmoid(q + rng.normal(0, 0.8))) * np.exp(rng.normal(0, 0.4))
                        u = rng.random()
                        d = rng.uniform(0.1, 0.9) if u < 0.05 else d + rng.uniform(700, 3000) if u < 0.07 else d
                        emit(rid, "dwell", round(float(d), 2))
                    if rng.random() < 0.3 and abs(seen) > 1.0:  # explicit feedback is for clear cases
                        emit(rid, "thumbs_up" if seen > 0 else "thumbs_down")
                    if rng.random() < _sigmoid(2 * seen - (1.5 if code else 2.5)):
                        emit(rid, "copy")
                    if rng.random() < _sigmoid(2 * seen - 4.0):
                        emit(rid, "share")
                    if attempt < 3 and rng.random() < _sigmoid(-2.5 * seen - 1.0):
                        emit(rid, "regenerate")
                        continue
                    break
                # 2. the kept response: the user goes on (follow-up) or leaves
                if turn == 5 or rng.random() > _sigmoid(0.7 * seen - 0.2):
                    break
                emit(rid, "follow_up")
                user_prompt = FOLLOW_UPS[rng.integers(len(FOLLOW_UPS))]
            s += 1
            if s % 200 == 0:
                bar.update(task, completed=min(len(ev["event"]), n_events), info=f"{s:,} sessions")
        bar.update(task, completed=n_events, info=f"{s:,} sessions, {len(truth):,} responses")
    out_dir = Path(out_dir)
    ext = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}[fmt]

    def stamps(seconds: list[float]) -> pa.Array:
        return pa.array((np.array(seconds) * 1e6).astype(np.int64), pa.timestamp("us"))

    resp_t = pa.table(resp | {"ts": stamps(resp["ts"])})
    ev_t = pa.table(ev | {"ts": stamps(ev["ts"]), "value": pa.array(ev["value"], pa.float64())})
    return {
        "events": write_table(ev_t, out_dir / f"events{ext}"),
        "responses": write_table(resp_t, out_dir / f"responses{ext}"),
        "truth": write_table(pa.table({"id": resp["response_id"], "quality": truth}), out_dir / f"truth{ext}"),
    }

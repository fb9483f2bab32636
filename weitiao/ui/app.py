"""The console's FastAPI app: the page (static/), and a JSON API over runs, files, chat, data and export.

Security: with no token the app answers only requests addressed to a loopback name (Host header; stops
DNS rebinding); with a token every request must carry it (X-Weitiao-Token / Bearer header, or the
cookie set by opening `/?token=...`). POSTs must be JSON, which a cross-site form cannot send. Paths
from the browser resolve inside the allowed roots (paths.Roots); checkpoints are named, never paths.
"""

from __future__ import annotations

import functools
import hmac
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from weitiao.config import dump_config
from weitiao.data.formats import FORMATS, ROLE_MAP
from weitiao.data.templates import TEMPLATE_NAMES, late_system
from weitiao.demo import DATA_DIR, DEMO_DIR
from weitiao.errors import UserError
from weitiao.infer.api import KnownQuery, UniqueKeys
from weitiao.ui import forms
from weitiao.ui.chat import ChatModels, model_state
from weitiao.ui.paths import Roots
from weitiao.ui.results import Arenas
from weitiao.ui.results import golden as golden_report
from weitiao.ui.runs import RunStore

STATIC = Path(__file__).with_name("static")
COOKIE = "weitiao_ui_token"
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
MAX_CHAT_CHARS = 20_000
# on a chat reply with no whole character (an empty body): how many tokens were generated (0: it ended at once)
EMPTY_REPLY_HEADER = "X-Empty-Reply-Tokens"
TRUNCATION_CHOICES = ("drop", "cut", "history", "cut_response")  # data check --truncation's
# our own HTML reports, opened from the page: no scripts, no requests out; their inline styles and SVG still show
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def page_lang(accept_language: str | None) -> str:
    """zh or en: the first of the two that the browser's Accept-Language names (zh when neither)."""
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith(("zh", "en")):
            return tag[:2]
    return "zh"


def _host(header: str) -> str:
    return header if header.startswith("[") and header.endswith("]") else re.sub(r":\d+$", "", header)


def _error(status: int, msg: str) -> JSONResponse:
    return JSONResponse({"error": msg}, status_code=status)


def warm_imports() -> None:
    """Import what the endpoints import, once and in one thread: requests run in parallel threads, and
    transformers' lazy module can fail a `from transformers import X` racing another (seen: AutoConfig)."""
    import transformers

    for kind in forms.RECIPES:
        forms.config_class(kind)
    for name in ("AutoConfig", "AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoTokenizer",
                 "GenerationConfig", "PreTrainedTokenizerFast", "TextIteratorStreamer"):  # fmt: skip
        getattr(transformers, name)
    import weitiao.calc.lora
    import weitiao.calc.plan
    import weitiao.data.check
    import weitiao.dataeng.mix
    import weitiao.eval.arena.app
    import weitiao.eval.golden
    import weitiao.infer.export  # noqa: F401


def _whole(body: dict, key: str, default: Any, most: int | None = None) -> Any:
    """A form field as a whole number ≥ 1 (and ≤ `most`; the page sends text); empty is the default."""
    v = body.get(key)
    if v is None or v == "":
        return default
    try:
        n = int(v) if not isinstance(v, bool) else 0
    except (TypeError, ValueError):
        n = 0
    if n < 1 or (isinstance(v, float) and v != n):
        raise UserError(f"{key}: {v!r} is not a whole number ≥ 1")
    if most is not None and n > most:
        raise UserError(f"{key}: {v!r} is over the console's limit of {most}")
    return n


def _known(body: Any, known: set[str], what: str) -> None:
    """Refuse a field this endpoint does not read (a typo would otherwise be silently dropped)."""
    if not isinstance(body, dict):
        raise UserError(f"{what}: expected an object with fields {', '.join(sorted(known))}")
    if unknown := sorted(set(body) - known):
        raise UserError(f"{what}: unknown field {unknown[0]!r}; fields are {', '.join(sorted(known))}")


def create_app(roots: Roots, runs: RunStore, token: str | None = None, chat: ChatModels | None = None) -> FastAPI:
    warm_imports()
    app = FastAPI(title="weitiao ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.router.route_class = KnownQuery
    app.add_middleware(UniqueKeys)
    models = chat or ChatModels()

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if token is None:
            if _host(request.headers.get("host", "")) not in LOOPBACK:
                return _error(403, "this console answers only on 127.0.0.1/localhost; serve others with --token")
        else:
            query = request.query_params.get("token")
            if query is not None and request.method == "GET":
                if not hmac.compare_digest(query.encode(), token.encode()):
                    return _error(401, "wrong token")
                resp = RedirectResponse(request.url.path, status_code=303)  # the token leaves the address bar
                resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
                return resp
            auth = request.headers.get("authorization", "")
            given = (request.headers.get("x-weitiao-token") or auth.removeprefix("Bearer ").strip()
                     or request.cookies.get(COOKIE) or "")  # fmt: skip
            if not hmac.compare_digest(given.encode(), token.encode()):
                return _error(401, "token required: open the address `weitiao ui` printed (…/?token=…)")
        if request.method == "POST" and request.headers.get("content-type", "").split(";")[0] != "application/json":
            return _error(415, "POST bodies must be application/json")
        return await call_next(request)

    @app.exception_handler(UserError)
    async def user_error(request: Request, e: UserError) -> JSONResponse:
        return _error(400, str(e))

    @app.exception_handler(RequestValidationError)
    async def bad_value(request: Request, e: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 list (`?index=abc`, a missing `path`, a body that is not JSON) as one 400 line naming
        the parameter, in the `error` key the page shows."""
        err = e.errors()[0]
        name = ".".join(x for x in err["loc"][1:] if isinstance(x, str)) or str(err["loc"][0])
        given = "" if err["type"] == "missing" or name == "body" else f" {str(err.get('input'))[:60]!r}"
        msg = err["msg"][:1].lower() + err["msg"][1:] if err["msg"][1:2].islower() else err["msg"]  # not "jSON"
        return _error(400, f"{name}{given}: {msg}")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    arenas = Arenas(runs)
    for arena_id in arenas.ids():  # arenas made before a console restart keep their address
        app.mount(f"/arena/{arena_id}", arenas.app_for(arena_id))

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace('lang="zh"', f'lang="{page_lang(request.headers.get("accept-language"))}"', 1))

    @app.get("/api/info")
    def info() -> dict:
        demo = str(DATA_DIR) if roots.inside(Path(os.path.realpath(DATA_DIR))) else None
        return {"recipes": list(forms.RECIPES), "roots": [str(r) for r in roots.roots], "runs": str(runs.root),
                "demo_data": demo, "formats": ["auto", *FORMATS], "templates": list(TEMPLATE_NAMES)}  # fmt: skip

    @app.get("/api/preset/sft")
    def preset() -> dict:
        """`weitiao demo`'s SFT config as form values (its data paths made absolute; train.out is the console's)."""
        if not roots.inside(Path(os.path.realpath(DATA_DIR))):
            raise UserError("the demo preset needs the shipped demo data among the roots (`weitiao ui` adds it)")
        return forms.preset(DEMO_DIR / "sft.yaml")

    @app.get("/api/form/{kind}")
    def form(kind: str) -> list[dict]:
        return forms.form(forms.config_class(kind))

    def build(body: dict) -> tuple[str, str, str]:
        _known(body, {"kind", "name", "values"}, "run")
        kind, name, values = body.get("kind"), body.get("name"), body.get("values") or {}
        if not isinstance(values, dict):
            raise UserError("values: expected an object {config key: value}")
        cfg = forms.build(str(kind), values, roots, runs.run_dir(str(name)))
        # the keys set alone: a trainer reads every key a YAML holds as set by the user, and refuses some it cannot
        # honour (lora.targets beside lora.init_from's adapter) that a console user left at their defaults
        return str(kind), str(name), dump_config(cfg, set_only=True)

    @app.post("/api/preview")
    def preview(body: dict) -> dict:
        return {"yaml": build(body)[2]}

    @app.post("/api/runs")
    def create(body: dict) -> dict:
        kind, name, text = build(body)
        return runs.create(name, kind, text)

    @app.get("/api/runs")
    def run_list() -> list[dict]:
        return runs.list()

    @app.get("/api/runs/{name}")
    def run_view(name: str, offset: int = 0) -> dict:
        if offset < 0:
            raise UserError(f"offset {offset}: must be ≥ 0 (a byte offset into metrics.jsonl)")
        rows, new_offset = runs.metrics(name, offset)
        state = runs.state(name)
        return {
            "state": {k: state.get(k) for k in ("name", "kind", "status", "returncode", "created", "command")},
            "metrics": [r for r in rows if r.get("kind") in ("train", "eval")],
            "offset": new_offset,
            "warnings": runs.warnings(name),
            "log": runs.log_tail(name),
            "checkpoints": runs.checkpoints(name),
        }

    @app.post("/api/runs/{name}/stop")
    def stop(name: str, body: dict | None = None) -> dict:
        _known(body or {}, set(), "stop")
        return runs.stop(name)

    @app.post("/api/runs/{name}/resume")
    def resume(name: str, body: dict | None = None) -> dict:
        _known(body or {}, set(), "resume")
        forms.recheck(runs.state(name)["kind"], (runs.existing(name) / "ui" / "config.yaml").read_text("utf-8"), roots)
        return runs.start(name, resume=True)

    @app.get("/api/runs/{name}/config.yaml")
    def config_file(name: str) -> PlainTextResponse:
        text = (runs.existing(name) / "ui" / "config.yaml").read_text(encoding="utf-8")
        disposition = f'attachment; filename="{name}.yaml"'
        return PlainTextResponse(text, media_type="application/x-yaml", headers={"Content-Disposition": disposition})

    @app.get("/api/runs/{name}/golden_report.html")
    def golden_file(name: str) -> HTMLResponse:
        path = runs.existing(name) / "golden_report.html"
        if not path.is_file():
            raise UserError(f"run {name}: no golden report yet; make one from the checkpoints list")
        return HTMLResponse(path.read_text(encoding="utf-8"), headers={"Content-Security-Policy": REPORT_CSP})

    @app.post("/api/golden")
    def golden(body: dict) -> dict:
        _known(body, {"run", "ckpts", "prompts", "max_new_tokens"}, "golden")
        ckpts = body.get("ckpts")
        if not isinstance(ckpts, list) or not all(isinstance(c, str) for c in ckpts):
            raise UserError("ckpts: a list of checkpoint names")
        prompts = roots.resolve(str(body.get("prompts") or ""), "golden prompts")
        max_new = _whole(body, "max_new_tokens", 64, 512)
        return golden_report(runs, str(body.get("run")), ckpts, prompts, max_new)

    @app.get("/api/arenas")
    def arena_list() -> list[dict]:
        return arenas.list()

    @app.post("/api/arenas")
    def arena_create(body: dict) -> dict:
        _known(body, {"ckpts", "prompts", "max_new_tokens"}, "arena")
        entries = body.get("ckpts")
        if not isinstance(entries, list):
            raise UserError("ckpts: a list of run/checkpoint names")
        prompts = roots.resolve(str(body.get("prompts") or ""), "arena prompts")
        made = arenas.create(entries, prompts, _whole(body, "max_new_tokens", 64, 512))
        app.mount(f"/arena/{made['id']}", arenas.app_for(made["id"]))
        return made

    @app.post("/api/mix")
    def mix(body: dict) -> dict:
        """`weitiao data mix` from the page: sources [{path, ratio}], a new output file inside the roots."""
        from weitiao.dataeng.mix import run as mix_run

        _known(body, {"sources", "out", "total", "seed"}, "mix")
        sources = body.get("sources")
        if not isinstance(sources, list) or not all(isinstance(x, dict) for x in sources):
            raise UserError("sources: a list of {path, ratio}")
        for x in sources:
            _known(x, {"path", "ratio"}, "mix source")
        specs = [f"{roots.resolve(str(x.get('path') or ''), 'mix source')}:{x.get('ratio')}" for x in sources]
        out = roots.resolve(str(body.get("out") or ""), "mix output", write=True)
        if out.exists():
            raise UserError(f"mix output {out}: exists already; choose a new file name")
        if not out.parent.is_dir():
            raise UserError(f"mix output {out}: no folder {out.parent}")
        seed = body.get("seed") or 0
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise UserError(f"seed: {seed!r} is not a whole number ≥ 0")
        return mix_run(specs, out, _whole(body, "total", None), seed)

    @app.get("/api/files")
    def files(path: str | None = None) -> dict:
        return roots.listing(path)

    def model_ref(ref: str) -> str:
        """'demo', a hub id, or a model folder inside the roots."""
        if ref == "demo" or (not Path(ref).is_absolute() and not (roots.roots[0] / ref).exists()
                             and re.fullmatch(r"[\w.-]+/[\w.-]+", ref)):  # fmt: skip
            return ref
        return str(roots.resolve(ref, "model"))

    @app.post("/api/estimate")
    def estimate(body: dict) -> dict:
        from weitiao.calc.lora import load_shape, lora_report
        from weitiao.calc.plan import GPUS, PlanInput, plan

        _known(
            body,
            {"model", "lora", "quant", "r", "targets", "seq_len", "micro_batch", "gpu", "checkpointing"},
            "estimate",
        )
        model = model_ref(str(body.get("model") or "demo"))
        lora = body.get("lora", True) is not False
        quant = body.get("quant") or "none"
        if quant not in ("none", "4bit"):  # calc plan sizes full, LoRA and QLoRA (NF4) runs; not 8-bit ones
            raise UserError(f"quant: {quant!r} has no memory estimate (none or 4bit)")
        method = "full" if not lora else "qlora" if quant == "4bit" else "lora"
        r, seq_len, micro = (_whole(body, k, d) for k, d in (("r", 16), ("seq_len", 1024), ("micro_batch", 1)))
        targets = str(body.get("targets") or "all-linear")
        gpu = body.get("gpu") or "rtx4090"  # the page asks before it has listed the GPUs
        if gpu not in GPUS:
            raise UserError(f"gpu: {gpu!r} unknown; one of {', '.join(GPUS)}")
        rep = lora_report(load_shape(model), r, targets, seq_len, micro)
        p = plan(PlanInput(model=model, method=method, r=r, targets=targets, seq_len=seq_len, samples=1000,
                           epochs=(1.0, 1.0), gpu=gpu, gpus=1, micro_batch=micro, grad_accum=1,
                           checkpointing=bool(body.get("checkpointing"))))  # fmt: skip
        return {"method": method, "total_params": rep.total_params, "trainable_params": p.trainable_params,
                "memory_gib": p.memory_gib, "gpu": gpu, "gpu_mem_gib": p.gpu_mem_gib, "fits": p.fits,
                "gpus": list(GPUS)}  # fmt: skip

    @app.post("/api/chat")
    def chat_reply(body: dict) -> StreamingResponse:
        _known(body, {"run", "ckpt", "messages", "max_new_tokens", "temperature"}, "chat")
        name, ckpt, messages = body.get("run"), body.get("ckpt"), body.get("messages")
        ok = (
            isinstance(messages, list)
            and messages
            and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
        )
        if not ok or sum(len(m["content"]) for m in messages) > MAX_CHAT_CHARS:
            raise UserError(f"messages: a list of {{role, content}} of at most {MAX_CHAT_CHARS} characters")
        for k, m in enumerate(messages):  # a `name` or `tool_calls` the reply would be made without
            _known(m, {"role", "content"}, f"messages[{k}]")
            if m.get("role") not in ROLE_MAP:
                raise UserError(f"messages[{k}].role: {m.get('role')!r}; choose {', '.join(ROLE_MAP)}")
        messages = [{**m, "role": ROLE_MAP[m["role"]]} for m in messages]  # developer: the system role's newer name
        if messages[-1]["role"] == "assistant":  # the reply would be a second assistant turn in a row, or a guess
            raise UserError(f"messages[{len(messages) - 1}]: the conversation ends with an assistant turn; end it "
                            "with the user turn to answer (the console does not continue a reply)")  # fmt: skip
        temperature = body.get("temperature")
        temperature = 0.0 if temperature is None else temperature  # not `or`: false, "" and [] were greedy, unsaid
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < 1e6:
            raise UserError(f"temperature: {temperature!r} is not a number ≥ 0 (0 = greedy)")
        sampling = {"max_new_tokens": _whole(body, "max_new_tokens", 128, 1024), "temperature": float(temperature)}
        weights = runs.weights(str(name), str(ckpt))
        loaded = models.get(runs.base_model(str(name)), weights)
        try:  # a system message placed as `weitiao serve` places it, or refused as serve refuses it
            late = loaded.template.misplaced_system(loaded.tokenizer, messages)
        except Exception as e:  # e.g. a template that insists on alternating roles
            raise UserError(f"messages: the chat template refused them: {e}") from None
        if late is not None:
            raise UserError(f"messages[{late}]: {late_system(loaded.template)}")
        chunks = models.stream(loaded, [{"role": m["role"], "content": m["content"]} for m in messages], **sampling)
        # the first piece before the 200: a conversation the model refuses (over its context) is a 400 the page shows,
        # not an empty reply with the error only in the console's log
        try:
            first = next(chunks)
        except StopIteration as end:  # not one whole character (broken UTF-8 bytes are dropped): said, not a blank 200
            said = {EMPTY_REPLY_HEADER: str(end.value)}
            return PlainTextResponse("", media_type="text/plain; charset=utf-8", headers=said)
        return StreamingResponse(itertools.chain([first], chunks), media_type="text/plain; charset=utf-8")

    @app.post("/api/export")
    def export(body: dict) -> dict:
        from weitiao.infer import export as tool
        from weitiao.infer import gguf as to_gguf

        _known(body, {"run", "ckpt", "merge", "gguf"}, "export")
        for key in ("run", "ckpt"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise UserError(f"{key}: {body.get(key)!r} is not a {key} name; give the one to export")
        name, ckpt, gguf = body["run"], body["ckpt"], body.get("gguf")
        if not isinstance(body.get("merge", False), bool):
            raise UserError(f"merge: {body['merge']!r} is not true or false")
        if gguf is not None and gguf not in to_gguf.OUTTYPES:  # checked here: export's own check names --gguf
            kinds = " or ".join(to_gguf.OUTTYPES)
            raise UserError(f"gguf: {gguf!r} is not a GGUF type; choose {kinds}, or leave gguf out for no GGUF")
        merge = body.get("merge", False) or gguf is not None  # a GGUF is made from the merged model
        weights = runs.weights(name, ckpt)
        if weights is None:
            raise UserError("export: choose a trained checkpoint, not the base model")
        kind = f"gguf-{gguf}" if gguf else "merged" if merge else "adapter"
        out = runs.existing(name) / "exports" / f"{ckpt}-{kind}"
        dest = tool.export(str(weights), str(out), merge, "fp32", True, gguf=gguf)
        return {"out": str(dest), "notes": tool.serve_notes(dest)}

    @functools.lru_cache(maxsize=4)
    def _tokenizer(model: str, state: tuple) -> Any:
        from weitiao.models.load import load_tokenizer

        return load_tokenizer(model)

    @functools.lru_cache(maxsize=4)
    def _positions(model: str, state: tuple) -> int | None:
        from weitiao.train.loop import model_positions

        return model_positions(model)

    def tokenizer(model: str) -> Any:
        return _tokenizer(model, model_state(model))

    def positions(model: str) -> int | None:
        return _positions(model, model_state(model))

    @app.get("/api/data")
    def data_preview(path: str, index: int = 0, model: str = "demo", template: str = "auto", max_len: int = 1024,
                     train_on_prompt: bool = False, format: str = "auto", train_turns: str = "all",
                     truncation: str = "drop", dataset_dir: str | None = None,
                     train_eot: bool = True) -> dict:  # fmt: skip
        """Row `index` encoded as the trainer that takes the file would (SFT, or a DPO/RM pair), the file's
        `data check` report (rows over the model's positions counted, as the CLI's `--model`), and the ratios it was
        mixed with (SFT files made by `data mix`); `train_turns`, `train_on_prompt` and `train_eot` (SFT's
        data.train_turns, data.train_on_prompt, data.train_eot) as `data check --train-turns/--train-on-prompt/
        --no-train-eot`, for the row's trained tokens and the report's; `truncation` as `--truncation` (the trainer's
        data.truncation); with `dataset_dir` (a LLaMA-Factory folder, as `--dataset-dir`) `path` is a dataset name."""
        from dataclasses import asdict

        from weitiao.data.check import check_file, refuse_max_len
        from weitiao.ui.dataview import row_view

        refuse_max_len(max_len)
        if train_turns not in ("all", "last"):
            raise UserError(f"train_turns {train_turns!r}: use all or last")
        if truncation not in TRUNCATION_CHOICES:
            raise UserError(f"truncation {truncation!r}: use one of {', '.join(TRUNCATION_CHOICES)}")
        folder, mixed = None, None
        if dataset_dir:  # every file the dataset names, and its dataset_info.json, inside the roots
            folder = str(roots.resolve(dataset_dir, "LLaMA-Factory folder"))
            forms.check_reads(path, Path(folder), "data file", roots)
            file = path
        else:
            file = str(roots.resolve(path, "data file"))
            forms.check_reads(file, None, "data file", roots)  # a folder: its files
            report = Path(f"{file}.report.json")  # written next to a file by `weitiao data mix`
            if report.is_file():
                mixed = json.loads(roots.resolve(str(report), "mix report").read_text(encoding="utf-8"))
        ref = model_ref(model)
        tok = tokenizer(ref)
        # the row first: a file its trainer refuses gets that trainer's error, not data check's
        view = row_view(file, index, tok, template, max_len, train_on_prompt, format, train_turns, truncation, folder,
                        train_eot)  # fmt: skip
        check = check_file([file], tok, template, max_len, format, dataset_dir=folder, train_turns=train_turns,
                           context=positions(ref), truncation=truncation, train_on_prompt=train_on_prompt,
                           train_eot=train_eot)  # fmt: skip
        return {**view, "check": asdict(check), "mix": mixed}

    return app


def needed_token(host: str, token: str | None) -> str | None:
    """The token to require: the one given; on any address but loopback a new random one if none was."""
    import secrets

    return token or (None if host in LOOPBACK else secrets.token_urlsafe(18))


def serve(host: str, port: int, roots: list[Path], runs_dir: Path | None, token: str | None) -> None:
    """Run the console; off loopback a token is required (generated and printed when not given)."""
    import uvicorn

    if not 0 <= port <= 65535:  # else an OverflowError traceback from the bind
        raise UserError(f"--port {port}: give a TCP port from 1 to 65535 (0: any free port)")

    allowed = Roots(roots, read_only=[DATA_DIR])  # the demo data: a newcomer's first run needs no files of their own
    store = RunStore(runs_dir.resolve() if runs_dir else allowed.roots[0] / "runs", read_roots=allowed.roots)
    token = needed_token(host, token)
    app = create_app(allowed, store, token)
    shown = f"[{host}]" if ":" in host else host
    print(f"weitiao ui: http://{shown}:{port}/" + (f"?token={token}" if token else ""), flush=True)
    print(f"  files from: {', '.join(map(str, allowed.roots))} · runs in: {store.root}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")

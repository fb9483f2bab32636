"""The config sections recipes share: the run (out, seed, length, saving, logging), the optimizer
and batching of SFT/DPO/RM, data files (SFT and preference data), preference data (DPO and RM) and the
chat-template name.

Each recipe composes these into its own config class; no recipe imports another recipe's config.
`ModelSpec` and `LoraSpec` live in `weitiao.models.spec` (the loaders take them) and are composed
the same way.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from weitiao.config import ConfigPath, DataPath, ResumeRef
from weitiao.data.formats import MAX_ROW_BYTES
from weitiao.models.spec import LoraSpec, ModelSpec
from weitiao.train.log import REPORT_TO_HELP, ReportTo

# Must equal weitiao.data.templates.TEMPLATE_NAMES (tested): a typo fails at config load, not after loading the model.
TemplateName = Literal["auto", "tokenizer", "chatml", "qwen", "llama3", "plain"]


class RunSpec(BaseModel):
    """Where a run writes, how long it runs, how often it saves and what it logs to."""

    model_config = ConfigDict(extra="forbid")

    out: ConfigPath = Field("runs/sft", description="run folder: checkpoints, final/, metrics.jsonl")
    seed: int = Field(42, description="seed for shuffling, splits, sampling and initialization")
    max_steps: int | None = Field(
        None, gt=0, description="overrides epochs when set (a note says so when the config sets both)"
    )
    save_every: int = Field(0, ge=0, description="0 = only at the end; an eval with a new best eval_loss saves too")
    keep_last: int = Field(3, gt=0, description="checkpoints kept (plus the best eval one); at least 1")
    resume: ResumeRef = Field(
        "auto",
        description="auto (latest checkpoint in out), force (auto, accepting a changed config), none "
        "(fresh; a previous run's files move to out/previous/), or a checkpoint dir",
    )
    stop_after: int | None = Field(None, gt=0, description="end the process after this step (tests a kill)")
    tensorboard: bool = Field(True, description="false = leave tensorboard out of report_to")
    report_to: ReportTo = Field(["tensorboard"], description=REPORT_TO_HELP)
    progress: bool = Field(True, description="progress bar (timed lines off a terminal)")
    progress_every_s: float = Field(30.0, gt=0, description="off a terminal (nohup, Slurm): a progress line this often")


def lr_field(lora: float, full: float) -> Any:
    """`train.lr`, unset by default: its description names the defaults the recipe's `default_lr` takes."""

    def sci(x: float) -> str:  # 2e-4, as configs write it (not 0.0002)
        mantissa, exp = f"{x:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"

    return Field(None, gt=0, description=f"default {sci(lora)} with LoRA, {sci(full)} full fine-tuning")


class TrainSpec(RunSpec):
    """Optimizer, schedule, batching, evaluation and checkpoint cadence (SFT, DPO, RM)."""

    LR: ClassVar[tuple[float, float]] = (2e-4, 2e-5)  # default lr with LoRA, full; a subclass sets both with lr_field
    lr: float | None = lr_field(*LR)
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="learning rate after warmup")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of steps warming the learning rate up")
    min_lr_ratio: float = Field(
        0.0, ge=0, le=1, description="where cosine/linear decay ends, as a share of lr (reached after the last step)"
    )
    weight_decay: float = Field(
        0.0, ge=0, description="AdamW weight decay on every trainable weight (LoRA A and B; full: norms, biases too)"
    )
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), description="AdamW betas"
    )
    max_grad_norm: float = Field(1.0, ge=0, description="0 = no clipping")
    epochs: float = Field(1.0, gt=0, description="passes over the training data (fractions allowed)")
    micro_batch_size: int = Field(
        4,
        gt=0,
        description="rows per micro-batch per process (data.packing: each row packs several examples)",
    )
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    log_every: int = Field(
        1, gt=0, description="write train metrics every N steps and at the last (that step's own, not a mean over N)"
    )
    eval_every: int = Field(0, ge=0, description="0 = only at the end")
    early_stop_patience: int = Field(0, ge=0, description="evals without improvement before stopping; 0 = off")
    golden: ConfigPath | None = Field(None, description="golden prompts file: answer them at every save (golden.jsonl)")
    compile: bool = Field(
        False, description="torch.compile each decoder layer (first steps slower while compiling; same losses)"
    )
    fused_lora: bool = Field(
        True,
        description="each LoRA linear as one autograd function (base + adapter, models/fused_lora.py): the same "
        "math within float rounding in less CPU time; false = peft's own forward",
    )

    def default_lr(self, lora: bool) -> float:
        """train.lr, else this recipe's default for LoRA or full fine-tuning (the one `config show` prints)."""
        return self.lr if self.lr is not None else self.LR[0 if lora else 1]

    @model_validator(mode="after")
    def _patience_needs_evals(self) -> TrainSpec:
        if self.early_stop_patience and not self.eval_every:  # one eval, at the last step: nothing left to stop
            raise ValueError(
                f"early_stop_patience {self.early_stop_patience} needs evals during the run, and eval_every 0 "
                "evaluates only at the end; set eval_every (e.g. 100), or drop early_stop_patience"
            )
        return self

    @model_validator(mode="after")
    def _min_lr_needs_decay(self) -> TrainSpec:
        if self.scheduler == "constant" and self.min_lr_ratio > 0:  # the constant schedule never decays to it
            raise ValueError(
                f"min_lr_ratio {self.min_lr_ratio} has no effect with scheduler constant (the lr stays at train.lr "
                "after warmup); set scheduler cosine or linear, or drop min_lr_ratio"
            )
        return self


class PairTrainSpec(TrainSpec):
    """TrainSpec of the preference recipes (DPO, KTO, RM)."""

    disable_dropout: bool = Field(True, description="dropout off in the policy, so step 0 has π = π_ref")

    @model_validator(mode="after")
    def _no_golden(self) -> PairTrainSpec:
        if self.golden is not None:  # only the SFT loop answers golden prompts during training
            raise ValueError(
                "golden is answered during training by weitiao sft only (DPO, KTO and RM would ignore it); drop it and "
                "run `weitiao eval golden --run RUN --prompts FILE` on the finished run"
            )
        return self


class DataFilesSpec(BaseModel):
    """Where the data files are and how they are read, templated and cached (SFT and preference data)."""

    model_config = ConfigDict(extra="forbid")

    train: list[DataPath] = Field(
        ..., description="data files, globs or folders (jsonl[.gz|.zst]/json/parquet/arrow/csv); names with dataset_dir"
    )
    dataset_dir: ConfigPath | None = Field(
        None, description="LLaMA-Factory data folder: train/eval are names in its dataset_info.json"
    )
    eval: list[DataPath] = Field(default_factory=list, description="eval files; else eval_split of train")
    eval_split: float = Field(
        0.0, ge=0, lt=1, description="fraction of train held out when no eval files (unique conversations, or pairs)"
    )
    template: TemplateName = Field("auto", description="chat template; auto = the tokenizer's own, else plain")
    skip_invalid: bool = Field(False, description="write bad rows to FILE.rejects.jsonl instead of stopping")
    max_row_bytes: int = Field(MAX_ROW_BYTES, gt=0, description="a longer JSONL row is rejected unread (file:line)")
    cache: bool = Field(
        True, description="keep tokenized rows on disk (Arrow, memory-mapped); a rerun skips tokenizing"
    )
    cache_dir: ConfigPath | None = Field(
        None, description="default $WEITIAO_CACHE/tokenized, else ~/.cache/weitiao/tokenized"
    )
    num_proc: int = Field(0, ge=0, description="tokenizing processes; 0 = CPU cores (at most 8)")

    @model_validator(mode="after")
    def _one_eval_source(self) -> DataFilesSpec:
        if self.eval and self.eval_split > 0:  # the split would silently train on rows meant to be held out
            raise ValueError(
                f"eval_split {self.eval_split} is not used when data.eval files are given (they are the eval set, "
                "and the split rows would be trained on); drop one of them"
            )
        return self


class PrefDataSpec(DataFilesSpec):
    """Preference data: prompt (or history) + chosen + rejected rows."""

    format: Literal["auto", "preference", "preference_raw"] = Field(
        "auto", description="preference_raw: prompt/chosen/rejected strings as raw text, no template (as TRL)"
    )
    max_len: int = Field(1024, gt=8, description="per sequence (prompt + one reply)")
    truncation: Literal["drop", "cut_response"] = Field("drop", description="over max_len: drop or shorten replies")
    packing: bool = Field(True, description="several sequences per micro-batch row; attention kept apart")
    weight_field: str | None = Field(
        None, description="row field with a per-pair loss weight ≥ 0, e.g. confidence (DPO: Σ w·loss / Σ w)"
    )
    min_confidence: float | None = Field(
        None, ge=0, le=1, description="drop train and eval pairs whose `confidence` field is below this"
    )


class PairRecipeConfig(BaseModel):
    """What the DPO and RM configs share: the model, its LoRA and the preference data."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSpec = Field(default_factory=ModelSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    data: PrefDataSpec


class FeedbackDataSpec(DataFilesSpec):
    """Unpaired feedback (KTO): prompt/completion/label rows, or any chat row with a label or kto_tag."""

    cache: bool = Field(True, description="no effect: KTO rows are tokenized in memory, never cached")
    max_len: int = Field(1024, gt=8, description="per sequence (prompt + reply)")
    truncation: Literal["drop", "cut"] = Field("drop", description="over max_len: drop the row or cut its reply")
    packing: bool = Field(True, description="several sequences per micro-batch row; attention kept apart")

    @model_validator(mode="after")
    def _no_cache_keys(self) -> FeedbackDataSpec:
        # Refused when set to something (a run's config.yaml records the defaults, and must load again).
        if given := [k for k, v in (("cache_dir", self.cache_dir is not None), ("num_proc", self.num_proc)) if v]:
            raise ValueError(
                f"{', '.join(given)}: weitiao kto tokenizes in memory, with no tokenized-data cache or worker "
                "processes; drop them"
            )
        return self

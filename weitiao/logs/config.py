"""Thresholds for `weitiao logs`: one pydantic model per log kind, defaults from a platform profile.

A profile is a YAML file in `weitiao/logs/profiles/` (`xhs`, `zhihu` for dwell; `chat`). A user's
own YAML may start from one with `base: zhihu` and override any key; `--set key=value` comes last.
Every key has a docstring; `weitiao logs dwell --show-config` prints the effective values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from weitiao.config import apply_overrides, guessed, read_yaml_mapping, read_yaml_node, validate
from weitiao.errors import UserError

PROFILE_DIR = Path(__file__).parent / "profiles"
CHAT_SOURCES = ("explicit", "share_copy", "regenerate", "follow_up", "dwell")  # strongest first
CHAT_SIGNALS = (
    "thumbs_up_vs_down",
    "thumbs_up_vs_none",
    "none_vs_thumbs_down",
    "share_copy",
    "regenerate",
    "follow_up",
    "dwell",
)
CHAT_EVENTS = ("thumbs_up", "thumbs_down", "copy", "share", "regenerate", "follow_up", "dwell")
Source = Literal["explicit", "share_copy", "regenerate", "follow_up", "dwell"]


class _Config(BaseModel):
    # inf/nan refused: a threshold reaches the SQL as a literal, and `inf` there is a column name (a Binder Error)
    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, validate_assignment=True, allow_inf_nan=False
    )


class DwellConfig(_Config):
    """Content-site dwell time → pairs (Q161). Score units depend on `normalize`."""

    profile: str = Field("custom", pattern=r"^[^\r\n]*$")
    """Name shown in reports."""
    columns: dict[str, str] = {}
    """Your log's column names → ours, e.g. {item_id: content_id}; a file that has the column is read
    under our name (errors still name yours)."""
    min_dwell_s: float = Field(2.0, ge=0)
    """Views shorter than this are accidental clicks (`accidental`)."""
    max_dwell_s: float = Field(900.0, gt=0)
    """Views longer than this are idle tabs (`idle`)."""
    idle_ratio: float | None = Field(5.0, gt=0)
    """A view longer than idle_ratio × expected reading time is idle too; null turns this off."""
    one_view_per_user: bool = False
    """Keep a user's first kept view of an item, later ones are `repeat_view` (needs user_id and ts;
    a window over user × item, several times slower than the rest of the pipeline)."""
    min_views: int = Field(20, ge=1)
    """Items with fewer kept views are not compared (`min_views`): their mean is noise."""
    normalize: Literal["none", "per_char", "completion"] = "completion"
    """Item score: mean dwell seconds; seconds per 1000 chars; or mean reading-completion rate
    (dwell / expected reading time; idle_ratio bounds it)."""
    read_cps: float = Field(8.0, gt=0)
    """Reading speed in chars per second for the expected reading time (Chinese: ~300–500 chars/min)."""
    image_s: float = Field(3.0, ge=0)
    """Seconds added to the expected reading time per image."""
    base_s: float = Field(2.0, ge=0)
    """Seconds added to every expected reading time (opening, scrolling)."""
    position_correction: bool = True
    """Divide dwell by an examination factor per feed position, estimated from the data."""
    max_position: int = Field(10, ge=1)
    """Positions beyond this share one factor."""
    rel_margin: float = Field(0.1, ge=0)
    """Keep a pair only when the higher score ≥ (1 + rel_margin) × the lower one."""
    abs_margin: float = Field(0.0, ge=0)
    """…and the scores differ by at least this many score units."""
    min_z: float = Field(2.0, ge=0)
    """…and the Welch z of the two item means is at least this (0: off)."""
    similar_length: float | None = Field(None, ge=0)
    """Compare only items whose lengths differ by at most this fraction of the longer; null: any."""
    similar_images: int | None = Field(None, ge=0)
    """Compare only items whose image counts differ by at most this; null: any."""
    engagement_first: bool = False
    """Likes/collects decide before dwell; dwell decides only when both items are quiet."""
    engagement_rel_margin: float = Field(0.3, ge=0)
    """Engagement (share of views with a like or collect) must differ by this relative margin…"""
    engagement_abs_margin: float = Field(0.02, ge=0)
    """…and by this absolute margin…"""
    engagement_min_z: float = Field(2.0, ge=0)
    """…with a two-proportion z of at least this."""
    engagement_quiet: float = Field(0.02, ge=0, le=1)
    """An engagement rate at or below this counts as no likes/collects."""
    max_pairs_per_context: int | None = Field(None, ge=1)
    """Keep at most this many pairs per context (highest confidence first); null: all."""


class CrossSession(_Config):
    """Pairing responses to the same (or a similar) first-turn prompt across sessions."""

    enabled: bool = False
    """Pair across sessions at all."""
    match: Literal["exact", "ngram"] = "exact"
    """exact: same prompt after reading full-width letters and digits as ASCII, lower-casing and removing spaces
    (U+3000 too), punctuation and symbols; ngram: char n-gram Jaccard similarity ≥ min_similarity (same key)."""
    ngram: int = Field(3, ge=1, le=100)
    """n for match: ngram (characters; a prompt shorter than n is one n-gram)."""
    min_similarity: float = Field(0.8, gt=0, le=1)
    """Jaccard threshold for match: ngram."""
    max_shingle_prompts: int = Field(200, ge=2)
    """n-grams found in more prompts than this are ignored for blocking (stop n-grams)."""
    max_responses: int = Field(32, ge=2)
    """Responses per prompt considered (those with signals first) to bound the join."""
    sources: list[Source] = ["explicit", "share_copy", "regenerate", "follow_up"]
    """Sources allowed to decide a cross-session pair."""
    polar: bool = True
    """Chosen must carry a positive signal and rejected a negative one."""
    discount: float = Field(0.9, gt=0, le=1)
    """Confidence multiplier for cross-session pairs."""


# ChatConfig field → (the names in it, the names allowed, what a wrong one is told): a typo fails at load
_KNOWN_NAMES = {
    "confidence": (dict.keys, CHAT_SIGNALS, "unknown signal {!r}; signals: {}"),
    "event_names": (dict.values, (*CHAT_EVENTS, "ignore"), "maps to {!r}; map to one of {}"),
}


class ChatConfig(_Config):
    """Chat-site signals → pairs (Q162), decided by the strongest signal that separates two responses."""

    profile: str = Field("custom", pattern=r"^[^\r\n]*$")
    """Name shown in reports."""
    columns: dict[str, str] = {}
    """Your log's column names → ours, e.g. {msg_id: response_id}; a file that has the column is read
    under our name (errors still name yours)."""
    sources: list[Source] = list(CHAT_SOURCES)
    """Sources that may decide a pair (order is fixed: explicit > share_copy > regenerate > follow_up > dwell)."""
    event_names: dict[str, str] = {}
    """Warehouse event name → canonical name, e.g. {like: thumbs_up}, or `ignore` (counted as `ignored_event`);
    unmapped names are kept. A name a case or typo away from a canonical one (Thumbs_Up, thumbs-down, shared) or a
    mapped one (Like beside like) that is not mapped itself is refused: read as `ignored_event` it would drop the
    signal unsaid."""
    confidence: dict[str, float] = {
        "thumbs_up_vs_down": 0.95,
        "thumbs_up_vs_none": 0.85,
        "none_vs_thumbs_down": 0.8,
        "share_copy": 0.8,
        "regenerate": 0.7,
        "follow_up": 0.6,
        "dwell": 0.55,
    }
    """Confidence attached to a pair by the signal that decided it."""
    drop_conflicts: bool = True
    """Drop a pair when another discrete signal points the other way (`conflict`)."""
    clean_chosen: bool = True
    """Drop a pair whose chosen response was itself thumbed down or regenerated (`chosen_negative`):
    of two answers the user rejected, neither is a good target."""
    min_dwell_s: float = Field(1.0, ge=0)
    """Dwell events shorter than this are ignored (`dwell_out_of_bounds`)."""
    max_dwell_s: float = Field(600.0, gt=0)
    """Dwell events longer than this are ignored (idle)."""
    dwell_normalize: Literal["none", "completion"] = "completion"
    """Dwell score: seconds, or seconds / expected reading time (3 s + chars / read_cps)."""
    read_cps: float = Field(10.0, gt=0)
    """Reading speed (chars/s) for the expected reading time."""
    dwell_rel_margin: float = Field(0.5, ge=0)
    """Dwell decides only when the higher score ≥ (1 + this) × the lower…"""
    dwell_abs_margin: float = Field(0.1, ge=0)
    """…and they differ by at least this."""
    max_pairs_per_prompt: int | None = Field(6, ge=1)
    """Keep at most this many pairs per prompt group (highest confidence first); null: all."""
    max_pairs: dict[Source, int] = {}
    """Absolute cap per source, e.g. {dwell: 10000}."""
    balance: dict[Source, float] = {"follow_up": 1.0, "dwell": 0.25}
    """Source ≤ ratio × pairs of all stronger sources (counted before balancing)."""
    cross_session: CrossSession = CrossSession()

    @field_validator(*_KNOWN_NAMES)
    @classmethod
    def _known_names(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        names, allowed, say = _KNOWN_NAMES[info.field_name]
        bad = sorted(x for x in names(v) if x not in allowed)
        if bad:
            raise ValueError(say.format(bad[0], ", ".join(allowed)))
        return v

    @field_validator("balance")
    @classmethod
    def _something_stronger(cls, v: dict[str, float]) -> dict[str, float]:
        if "explicit" in v:
            raise ValueError("explicit is the strongest source; there is nothing to balance it against")
        return v


C = TypeVar("C", bound=_Config)
KINDS: dict[str, type[_Config]] = {"dwell": DwellConfig, "chat": ChatConfig}


def builtin_profiles(kind: str) -> list[str]:
    """Names of the shipped profiles for a log kind."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml") if _read_yaml(p).get("kind") == kind)


def _read_yaml(path: Path) -> dict:
    return read_yaml_mapping(path, "a mapping of config keys")


def _merge(base: dict, top: dict) -> dict:
    """`top` over `base`, section by section (a nested mapping is merged, not replaced)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _profile_data(kind: str, profile: str, seen: tuple[str, ...] = ()) -> tuple[dict, list[tuple[str, yaml.Node]]]:
    """Merged YAML of a profile (built-in name or file), following `base:`; returns (data, [(where, node)] of each
    file, the profile's own first and its bases after it: the first one holding a key set it)."""
    path = Path(profile)
    if path.suffix not in (".yaml", ".yml"):
        if profile not in builtin_profiles(kind):
            names = ", ".join(builtin_profiles(kind))
            raise UserError(f"profile {profile!r}: not a built-in {kind} profile ({names}) or a .yaml file")
        path = PROFILE_DIR / f"{profile}.yaml"
    elif not path.exists():
        raise UserError(f"{path}: profile file not found")
    if os.path.abspath(path) in seen:
        raise UserError(f"{path}: base: profiles include each other")
    data, node = read_yaml_node(path, "a mapping of config keys")
    file_kind = data.pop("kind", kind)
    if file_kind != kind:
        raise UserError(f"{path}: kind: this is a {file_kind} profile, not {kind}")
    name = data.get("profile", path.stem)  # a profile's own name, never its base's
    where = f"profile {profile}" if path.parent == PROFILE_DIR else str(path)
    files = [(where, node)]
    base = data.pop("base", None)
    if base is not None:
        base = str(base)
        if Path(base).suffix in (".yaml", ".yml"):  # a file is relative to this profile's folder, not the cwd
            base = str(path.parent / Path(base).expanduser())
        base_data, base_files = _profile_data(kind, base, seen + (os.path.abspath(path),))
        data = _merge(base_data, data)
        files += base_files
    return data | {"profile": name}, files


def _holds(node: yaml.Node | None, loc: tuple) -> bool:
    """Whether a composed YAML mapping holds the key path `loc` (a pydantic error loc) itself."""
    for k in loc:
        if not isinstance(node, yaml.MappingNode):
            return not isinstance(k, str)  # below a list or value: the key above was written here
        node = next((v for kn, v in node.value if kn.value == str(k)), None)
        if node is None:
            return False
    return True


def load_profile(kind: str, profile: str, overrides: list[str] | None = None) -> _Config:
    """Config for `kind` (dwell|chat) from a profile name or YAML path plus `key=value` overrides; a bad value is one
    line naming the file:line that set it (through `base:` files too) or the `--set` item."""
    data, files = _profile_data(kind, profile)
    data = apply_overrides(data, overrides or [])
    cls = KINDS[kind]
    try:
        loc = (guessed(data, cls.model_validate(data)) or ((),))[0]
    except ValidationError as e:
        loc = e.errors()[0]["loc"]
    where, node = next(((w, n) for w, n in files if loc and _holds(n, tuple(loc))), files[0])
    return validate(cls, data, where, node, overrides)


def dump_config(cfg: _Config) -> str:
    """The effective config as YAML (a valid profile file)."""
    kind = next(k for k, cls in KINDS.items() if isinstance(cfg, cls))
    return yaml.safe_dump({"kind": kind, **cfg.model_dump(mode="json")}, allow_unicode=True, sort_keys=False)

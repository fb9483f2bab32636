"""Human:/Assistant: transcripts as messages: Anthropic HH-RLHF pairs and BELLE multi-turn instructions.

hh-rlhf gives each side as one whole transcript ("\\n\\nHuman: …\\n\\nAssistant: …"); the pair is the two last replies
after the conversation both share up to the last "\\n\\nAssistant:". Turns are split at "\\n\\nHuman:" /
"\\n\\nAssistant:" and lose the one space after the colon, as TRL's hh-rlhf-helpful-base conversion does
(examples/datasets/hh-rlhf-helpful-base.py). BELLE's multiturn_chat_0.8M puts the earlier turns into an Alpaca
`instruction` ("Human:…\\nAssistant:…\\nHuman:…\\nAssistant:"); its turns are split at "Human:" / "Assistant:" and
stripped, as LLaMA-Factory's belle_multiturn loader does.
"""

from __future__ import annotations

import re
from typing import Any

from weitiao.data.files import RowError

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
TURN = re.compile(r"\n\n(Human|Assistant):")
ROLES = {"Human": "user", "Assistant": "assistant"}


def is_transcript(value: Any) -> bool:
    """An HH transcript: it starts with a Human turn ("\\n\\nHuman:", or "Human:" in copies stripped of the first
    newlines) and holds an Assistant turn."""
    return isinstance(value, str) and value.startswith((HUMAN, HUMAN.lstrip())) and ASSISTANT in value


def is_prompt(value: Any) -> bool:
    """An HH prompt transcript, ending with "\\n\\nAssistant:" (and perhaps the space before the reply)."""
    return is_transcript(value) and value.rstrip(" ").endswith(ASSISTANT)


def split_pair(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen, rejected): the text up to and including each side's last "\\n\\nAssistant:", which must be
    the same on both sides, and the replies after it (as written, with their leading space)."""
    cc, cr = (s.rfind(ASSISTANT) + len(ASSISTANT) for s in (chosen, rejected))
    if chosen[:cc] != rejected[:cr]:
        raise RowError("rejected", "an HH transcript whose conversation before its last '\\n\\nAssistant:' is not "
                                   "chosen's; a pair is two last replies to one conversation")  # fmt: skip
    return chosen[:cc], chosen[cc:], rejected[cr:]


def messages(prompt: str, field: str) -> list[dict]:
    """A prompt transcript ending with "\\n\\nAssistant:" as messages (Human → user, Assistant → assistant)."""
    prompt = prompt.rstrip(" ")
    # ['', 'Human', ' q', 'Assistant', ' a', ..., 'Assistant', '']
    parts = TURN.split(prompt if prompt.startswith(HUMAN) else "\n\n" + prompt)
    if parts[0] or parts[-2:] != ["Assistant", ""]:
        raise RowError(field, "an HH transcript must start with '\\n\\nHuman:' and end with '\\n\\nAssistant:'")
    out = []
    for n, i in enumerate(range(1, len(parts) - 2, 2)):
        text = parts[i + 1].removeprefix(" ")
        if not text.strip():
            raise RowError(field, f"HH transcript turn {n + 1} ({parts[i]}) is empty")
        out.append({"role": ROLES[parts[i]], "content": text})
    return out


def reply(text: str) -> str:
    """A reply after "\\n\\nAssistant:", without the space after the colon."""
    return text.removeprefix(" ")


BELLE_TURN = re.compile(r"(Human|Assistant):")


def is_belle(instruction: Any) -> bool:
    """A BELLE multi-turn instruction: a transcript from "Human:" to a last, empty "Assistant:"."""
    text = instruction.strip() if isinstance(instruction, str) else ""
    return text.startswith("Human:") and text.endswith("Assistant:")


def belle_messages(instruction: str) -> list[dict]:
    """A BELLE instruction as messages ending with the user turn (each turn stripped)."""
    parts = BELLE_TURN.split(instruction.strip())  # ['', 'Human', 'q', 'Assistant', 'a', ..., 'Assistant', '']
    out = []
    for n, i in enumerate(range(1, len(parts) - 2, 2)):
        want = "Human" if n % 2 == 0 else "Assistant"
        if parts[i] != want or not parts[i + 1].strip():
            problem = f"{parts[i]}: where {want}: was due" if parts[i] != want else f"{parts[i]}: is empty"
            raise RowError("instruction", f"a BELLE multi-turn transcript (Human:/Assistant: turns), turn {n + 1} "
                                          f"({problem}); fix it, or write the row as ShareGPT")  # fmt: skip
        out.append({"role": ROLES[parts[i]], "content": parts[i + 1].strip()})
    if len(out) % 2 == 0:
        raise RowError("instruction", "a BELLE multi-turn transcript must end with a Human: turn and an empty "
                                      "Assistant:")  # fmt: skip
    return out

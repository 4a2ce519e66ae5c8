"""Presets: YAML files in configs/ (or anywhere), read with the file and line of every key, merged over
the presets they extend. launcher/config.py validates what comes out.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from models.errors import InputError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(InputError):
    """A config file or override is wrong; the message names the key and where it was set."""


def find_preset(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found" if not path.exists() else f"{path}: not a file")
        return path
    preset = CONFIG_DIR / f"{name_or_path}.yaml"
    if not preset.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"no config file or preset named {name_or_path!r} (presets: {known})")
    return preset


def read_yaml(path: Path) -> tuple[dict, dict[str, str]]:
    """A YAML config file's tree and, for every dotted key in it, "file:line" where it is set."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    try:
        root = yaml.compose(text)
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {getattr(e, 'problem', None) or e}. Check the indentation "
                          f"and quoting on that line (nested keys are indented under their section).") from None
    if tree is None:
        return {}, {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (run:, model:, sft:, ...)")
    lines: dict[str, str] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                dotted = f"{prefix}{key.value}"
                lines[dotted] = f"{path}:{key.start_mark.line + 1}"
                walk(value, dotted + ".")

    walk(root, "")
    return tree, lines


def deep_merge(base: dict, top: dict) -> dict:
    """`top` over `base`, section by section (a partial section keeps base's other keys)."""
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return out


def read_preset(name_or_path: str, seen: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """A preset's tree and sources; one whose top level says `extends: <preset or file>` is merged over
    that one (so configs/demo_ptx.yaml is the demo plus its own keys, not a copy of it)."""
    path = find_preset(name_or_path)
    tree, sources = read_yaml(path)
    parent = tree.pop("extends", None)
    sources.pop("extends", None)
    if parent is None:
        return tree, sources
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends: name one preset or YAML file, got {parent!r}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: extends a preset that extends it (a cycle)")
    base, base_sources = read_preset(parent, (*seen, path.resolve()))
    return deep_merge(base, tree), {**base_sources, **sources}

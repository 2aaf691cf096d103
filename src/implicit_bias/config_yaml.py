"""Reading config YAML safely: unique keys, YAML 1.2 numbers, bounded aliases and nesting.

:func:`read_yaml` is what :func:`implicit_bias.config.load_config` reads a file
with; :func:`_load_yaml` parses text the same way (a results folder's
``config.yaml``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from ._errors import UserInputError

# --------------------------------------------------------------------- loading
#: most nodes a YAML document may expand to once its aliases are followed: a
#: "billion laughs" of nested aliases (``&a1 [*a0, *a0, …]``) stays a few hundred
#: bytes of text but expands to 10⁹ values in every later copy or dump
MAX_YAML_NODES = 10_000_000
#: most nested sections or lists in a config (a real one needs about 5)
MAX_YAML_DEPTH = 64
#: most aliases (``*name``) one document may use before it is refused
MAX_YAML_ALIASES = 1000

_Base: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 3-5x faster


class _UniqueKeyLoader(_Base):  # type: ignore[misc, valid-type]
    """A safe YAML loader that refuses a key given twice in one mapping, reads the
    YAML 1.2 numbers (``1e-3`` is a float; ``1:20`` is text, not YAML 1.1's base-60
    80), and refuses documents whose aliases expand past :data:`MAX_YAML_NODES` or
    that nest deeper than :data:`MAX_YAML_DEPTH`."""

    def get_single_node(self):  # type: ignore[no-untyped-def]
        node = super().get_single_node()
        if node is not None:
            _check_node_graph(node)
        return node


class _YamlTooBig(yaml.YAMLError):
    """A document that nests too deep or whose aliases expand too far."""


def _check_node_graph(root: yaml.Node) -> None:
    """Count the nodes ``root`` expands to (aliases followed) and its depth, without
    expanding it: each shared node is counted once per use from its memoised size.

    Raises:
        _YamlTooBig: past :data:`MAX_YAML_NODES`, :data:`MAX_YAML_DEPTH` or
            :data:`MAX_YAML_ALIASES`, or a recursive alias.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    uses: dict[int, int] = {}
    # iterative post-order walk: (node, children visited?)
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if not isinstance(node, yaml.CollectionNode):
            continue
        kids = _children(node)
        nested = [k for k in kids if isinstance(k, yaml.CollectionNode)]
        if done:
            open_.discard(key)
            total = 1 + len(kids) - len(nested) + sum(size[id(k)] for k in nested)
            deepest = max((depth[id(k)] for k in nested), default=0)
            size[key], depth[key] = total, deepest + 1
            if total > MAX_YAML_NODES:
                raise _YamlTooBig(
                    f"expands to more than {MAX_YAML_NODES} values (nested aliases *name)"
                )
            if deepest + 1 > MAX_YAML_DEPTH:
                raise _YamlTooBig(f"nests deeper than {MAX_YAML_DEPTH} levels")
            continue
        if key in size:  # a shared (aliased) node, already measured
            uses[key] = uses.get(key, 1) + 1
            if sum(uses.values()) > MAX_YAML_ALIASES:
                raise _YamlTooBig(f"uses more than {MAX_YAML_ALIASES} aliases (*name)")
            continue
        if key in open_:
            raise _YamlTooBig("holds a recursive alias (a value that contains itself)")
        if len(open_) >= MAX_YAML_DEPTH:
            raise _YamlTooBig(f"nests deeper than {MAX_YAML_DEPTH} levels")
        open_.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in reversed(nested))


def _children(node: yaml.CollectionNode) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"{key}")
        self.key, self.line = key, line


def _unique_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False):
    # duplicates are looked for among the keys written in this mapping, before merge
    # keys (``<<: *base``) bring in theirs: those are meant to be overridden
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in seen
        except TypeError:  # an unhashable key: let the normal constructor refuse it
            dup = False
        if dup:
            raise _DuplicateKey(key, key_node.start_mark.line + 1)
        try:
            seen.add(key)
        except TypeError:
            pass
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


# YAML 1.2 numbers: PyYAML (YAML 1.1) reads ``1e-3`` as a string and ``1:20`` as
# the base-60 number 80; here the first is a float and the second stays text
_INT_RE = re.compile(
    r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"
)
_FLOAT_RE = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
    r"|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _NUMBER_TAGS]
    for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(_NUMBER_TAGS[0], _INT_RE, list("-+0123456789"))
_UniqueKeyLoader.add_implicit_resolver(_NUMBER_TAGS[1], _FLOAT_RE, list("-+0123456789."))
_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _unique_mapping,
)


#: a long flow list of plain numbers (``seed: [0, 1, 2, …]``): read as JSON, which is
#: many times faster than YAML's per-scalar construction for 10⁶ values and means the same
_NUMBER_LIST = re.compile(r"\[[-+0-9.eE,\s]{10000,}\]")
_BULK_TOKEN = "__implicit_bias_number_list_{}__"


def _load_yaml(text: str) -> Any:
    """Parse YAML with :class:`_UniqueKeyLoader`; deep structures end as a YAML error.

    Long flow lists of plain numbers are read in bulk (JSON): each is replaced by a
    placeholder scalar before parsing and put back after.
    """
    bulk: dict[str, list[Any]] = {}

    def swap(m: re.Match[str]) -> str:
        try:
            values = json.loads(m.group(0))
        except ValueError:  # YAML-only spellings (``.5``, ``1_000``): the slow path
            return m.group(0)
        if not all(type(v) in (int, float) for v in values):
            return m.group(0)
        token = _BULK_TOKEN.format(len(bulk))
        bulk[token] = values
        return token

    if len(text) > 10000:
        text = _NUMBER_LIST.sub(swap, text)
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except RecursionError:
        raise _YamlTooBig(f"nests deeper than {MAX_YAML_DEPTH} levels") from None
    return _put_back(raw, bulk) if bulk else raw


def _put_back(node: Any, bulk: dict[str, list[Any]]) -> Any:
    """``node`` with each placeholder of :func:`_load_yaml` replaced by its list
    (a copy per use: an alias of a list is not shared state)."""
    if isinstance(node, str) and node in bulk:
        return list(bulk[node])
    if isinstance(node, dict):
        return {k: _put_back(v, bulk) for k, v in node.items()}
    if isinstance(node, list):
        return [_put_back(v, bulk) for v in node]
    return node


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise UserInputError(f"config file not found: {p}")
    if p.is_dir():
        raise UserInputError(f"config file is a directory: {p}")
    try:
        raw = _load_yaml(p.read_text())
    except _DuplicateKey as err:
        raise UserInputError(
            f"config error: key '{err.key}' appears twice in one mapping of {p} (line {err.line})"
        ) from None
    except _YamlTooBig as err:
        raise UserInputError(f"config file {p} {err}; refusing to read it") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserInputError(f"malformed YAML in {p}{where}") from None
    except UnicodeDecodeError:
        raise UserInputError(f"config file is not text: {p}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserInputError(f"config file {p} must hold a mapping at the top level")
    raw.setdefault("name", p.stem)
    return raw


#: the key a results folder's ``config.yaml`` carries besides the config itself

"""Load a YAML file into a pydantic model with errors a person can act on.

Every configuration file voxline reads (personas, tool specs, the server config)
goes through :func:`load_yaml_model`, so a mistake is always reported the same
way: the file, the path of the field inside it (or the line), what was expected
and what was found, one line per problem.

Files are hostile until read: :func:`read_yaml` bounds the file's size, and the
size and depth of its document once YAML aliases are expanded, on the parsed node
graph before any Python object exists, so a few hundred bytes of nested anchors
(a "billion laughs" file) are refused at once instead of expanding to gigabytes.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class StrictModel(BaseModel):
    """A section of a configuration file: an unknown key is an error, so a typo never
    silently falls back to a default, and the values are frozen once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A configuration file could not be loaded; ``problems`` holds one line each."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = Path(path)
        # One line each, whatever a message quoted (an import error's own text, say).
        self.problems = [" / ".join(problem.splitlines()) for problem in problems]
        super().__init__("\n".join(f"{self.path}: {problem}" for problem in self.problems))


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds: itself, or inside Optional, list or dict."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in reversed(get_args(annotation)):  # a dict's values come last
        if (found := _model_in(argument)) is not None:
            return found
    return None


def _is_mapping(annotation: Any) -> bool:
    """Whether an annotation is a dict (or an optional one): its keys are the user's."""
    return get_origin(annotation) is dict or any(_is_mapping(a) for a in get_args(annotation))


def _allowed_fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Field names allowed at ``loc``'s parent, for an unknown-key hint.

    List indexes and the keys of user-named mappings (a widget key, a phone number)
    are stepped over on the way down.
    """
    current: type[BaseModel] | None = model
    user_key = False
    for item in loc[:-1]:
        if user_key or isinstance(item, int):
            user_key = False
            continue
        fields = current.model_fields if current is not None else {}
        if item not in fields:
            return []
        annotation = fields[item].annotation
        user_key = _is_mapping(annotation)
        current = _model_in(annotation)
    return sorted(current.model_fields) if current is not None else []


MAX_SHOWN_CHARS = 80
"""Longest excerpt of a wrong value quoted in an error: the line stays a line."""


def _shown(value: Any) -> str:
    """``repr(value)`` cut to :data:`MAX_SHOWN_CHARS`, without building a huge string first."""
    if isinstance(value, (list, tuple, dict)) and len(value) > 8:
        kind = type(value).__name__
        return f"a {kind} of {len(value):,} items"
    text = repr(value[: MAX_SHOWN_CHARS + 1] if isinstance(value, str) else value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


def describe_validation_error(model: type[BaseModel], error: ValidationError) -> list[str]:
    """One line per pydantic error: field path, what was expected, what was found."""
    problems = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        where = _field_path(loc)
        if item["type"] == "extra_forbidden":
            allowed = _allowed_fields(model, loc)
            hint = f"; allowed fields here: {', '.join(allowed)}" if allowed else ""
            problems.append(f"{where}: unknown field (check its spelling){hint}")
        elif item["type"] == "missing":
            problems.append(f"{where}: required field is missing")
        elif item["type"] == "value_error":
            # voxline's own checks: the message already names the value and the fix.
            problems.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
        else:
            problems.append(f"{where}: {item['msg']} (found {_shown(item.get('input'))})")
    return problems


MAX_FILE_BYTES = 1 << 20
"""Largest configuration file read (1 MiB). A persona with a long prompt is a few
kilobytes; anything near a megabyte is a mistake (or an attack) and is refused
before parsing, so a 10 MB file costs one ``stat``."""

MAX_EXPANDED_NODES = 100_000
"""Most YAML nodes a document may hold once every alias is expanded. Aliases
(``*name``) reuse an anchored node; nested, a few hundred bytes of them describe
billions of values ("billion laughs"), which cost nothing to parse but everything
to validate, print or convert. A hand-written file has a few hundred nodes."""

MAX_DEPTH = 64
"""Deepest nesting of mappings and lists accepted. A persona is 3 levels deep and a tool's
JSON Schema rarely 10; validating a schema nested hundreds of levels deep exhausts
Python's recursion limit."""

MAX_EXPANDED_CHARS = 4 << 20
"""Most characters of scalar text a document may hold once aliases are expanded."""

_DEFAULT_FIX = "write the file by hand, without nested anchors (&name) and aliases (*name)"


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader (libyaml's parser when built in), one node graph at a time."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Build one value; Python's own refusals (a 5000-digit int, the 13th month) name it.

        PyYAML builds tagged and implicit scalars with Python's constructors, which
        raise ValueError, KeyError or AttributeError on values they cannot read.

        Raises:
            yaml.constructor.ConstructorError: with the value's line and column.
        """
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # PyYAML's own constructors: `!!bool z` is a KeyError
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            value = "this value"
            if isinstance(node, yaml.ScalarNode):
                text = str(node.value)
                value = repr(text if len(text) <= 40 else text[:37] + "...")
            # Short reasons help ("month must be in 1..12"); long ones advise Python calls.
            reason = f" ({exc})" if isinstance(exc, ValueError) and len(str(exc)) < 60 else ""
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"cannot read {value} as {tag}{reason}: quote it to keep it as text",
                node.start_mark,
            ) from None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _line(node: yaml.Node) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1}" if mark is not None else "(unknown line)"


def check_node_graph(root: yaml.Node) -> list[str]:
    """Problems of a composed YAML document that parsing alone does not catch.

    Walks the node graph once (each shared node once, iteratively), computing how
    big and how deep the document becomes when its aliases are expanded, and finds
    recursive aliases and keys given twice in one mapping (YAML keeps the last one
    silently).

    Returns:
        One line per problem, starting with the line in the file.
    """
    problems: list[str] = []
    # id(node) -> (values once expanded, characters once expanded, an alias inside, depth)
    sizes: dict[int, tuple[int, int, bool, int]] = {}
    uses: dict[int, int] = {}
    expanding: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            expanding.discard(key)
            nodes, chars, aliased, depth = 1, 0, False, 1
            for child in _children(node):
                child_nodes, child_chars, child_aliased, child_depth = sizes[id(child)]
                uses[id(child)] = uses.get(id(child), 0) + 1
                nodes, chars = nodes + child_nodes, chars + child_chars
                aliased = aliased or child_aliased or uses[id(child)] > 1
                depth = max(depth, child_depth + 1)
            if depth > MAX_DEPTH:
                return [
                    f"{_line(node)}: values are nested more than {MAX_DEPTH} levels deep: no "
                    "voxline file needs that; flatten it"
                ]
            if nodes > MAX_EXPANDED_NODES or chars > MAX_EXPANDED_CHARS:
                what = (
                    f"more than {MAX_EXPANDED_NODES:,} values"
                    if nodes > MAX_EXPANDED_NODES
                    else f"more than {MAX_EXPANDED_CHARS:,} characters"
                )
                if not aliased:  # the file is simply that big
                    return [
                        f"{_line(node)}: this value holds {what}: no voxline file needs "
                        "that many; is it the right file?"
                    ]
                return [
                    f"{_line(node)}: YAML aliases expand this value to {what} "
                    f'(a "billion laughs" file): {_DEFAULT_FIX}'
                ]
            sizes[key] = (nodes, chars, aliased, depth)
            continue
        if key in sizes:
            continue
        if key in expanding:
            return [
                f"{_line(node)}: a YAML alias refers to a value that contains it (a recursive "
                f"anchor): {_DEFAULT_FIX}"
            ]
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = (1, len(node.value), False, 1)
            continue
        if isinstance(node, yaml.MappingNode):
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                name = (key_node.tag, key_node.value)
                if name in seen:
                    problems.append(
                        f"{_line(key_node)}: {key_node.value!s:.60}: the key is given twice in "
                        "the same mapping: keep one"
                    )
                seen.add(name)
        expanding.add(key)
        stack.append((node, True))
        children = reversed(_children(node))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return problems


def read_yaml(path: Path) -> Any:
    """Parse one YAML file, turning every failure into a ConfigError.

    The file must be a regular file of at most :data:`MAX_FILE_BYTES`; its
    document must stay under :data:`MAX_EXPANDED_NODES` values,
    :data:`MAX_EXPANDED_CHARS` characters and :data:`MAX_DEPTH` levels of nesting
    once aliases are expanded, hold no
    recursive alias and no key twice in one mapping. These are checked on the
    parsed node graph, before any Python object is built.

    Raises:
        ConfigError: one line per problem, naming the line when there is one.
    """
    path = Path(path)
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(path, ["is not a regular file: give the path of a YAML file"])
        if status.st_size > MAX_FILE_BYTES:
            raise ConfigError(path, [_too_large(status.st_size)])
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(path, ["file not found"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"cannot be read: {exc.strerror or exc}"]) from None
    except ValueError:  # a NUL character in the path: no file can have that name
        raise ConfigError(path, ["file not found (the path holds a NUL character)"]) from None
    if len(raw) > MAX_FILE_BYTES:  # it grew after the stat
        raise ConfigError(path, [_too_large(len(raw))])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            path, [f"byte {exc.start} is not UTF-8 text: save the file as UTF-8"]
        ) from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problems = check_node_graph(node)
        if problems:
            raise ConfigError(path, problems)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(path, [_describe_yaml_error(exc, text)]) from None
    except RecursionError:
        raise ConfigError(path, ["values are nested too deeply: flatten the file"]) from None
    finally:
        loader.dispose()


def _describe_yaml_error(exc: yaml.YAMLError, text: str) -> str:
    """One line for a PyYAML error: where, what, and the fix when there is a usual one."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character
        code = char if isinstance(char, int) else ord(char) if char else 0
        return (
            f"line {line}: character U+{code:04X} is not allowed in YAML (a control "
            "character): remove it, or save the file as plain text"
        )
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    if isinstance(exc, yaml.composer.ComposerError) and context and "single document" in context:
        return f"{where}{context}, {problem}: keep one document (remove the `---` line)"
    if isinstance(exc, yaml.constructor.ConstructorError):
        if "constructor for the tag" in problem:
            problem += ": voxline reads plain YAML, remove the tag"
        return f"{where}YAML error: {problem}"
    if context:
        problem = f"{context}, {problem}"
    if mark is not None and text[mark.index : mark.index + 1] == "\t":
        problem += ": indent with spaces, not tabs"
    return f"{where}YAML syntax error: {problem}"


def _too_large(size: int) -> str:
    return (
        f"is {size:,} bytes, larger than the {MAX_FILE_BYTES:,} bytes a configuration file "
        "may have: is it the right file? Put long prompts in a prompt_file"
    )


def load_yaml_model(
    path: Path | str,
    model: type[ModelT],
    *,
    wrong_kind: Callable[[dict[Any, Any]], str | None] | None = None,
    **context: Any,
) -> ModelT:
    """Read ``path`` and validate it as ``model``.

    Args:
        path: the YAML file.
        model: the pydantic model the document must match.
        wrong_kind: given the document, says (in one line) when it is another kind
            of voxline file (a server config given as a persona, say), so the error
            is that instead of every field being unknown.
        **context: passed to pydantic validators (e.g. the file's directory).

    Raises:
        ConfigError: naming the file, each field path and what was expected.
    """
    path = Path(path)
    data = read_yaml(path)
    if data is None:
        raise ConfigError(path, ["the file is empty: expected a mapping of fields"])
    if not isinstance(data, dict):
        raise ConfigError(
            path, [f"expected a mapping of fields at the top level, found {type(data).__name__}"]
        )
    if wrong_kind is not None and (problem := wrong_kind(data)) is not None:
        raise ConfigError(path, [problem])
    try:
        return model.model_validate(data, context={"base_dir": path.parent, **context})
    except ValidationError as exc:
        raise ConfigError(path, describe_validation_error(model, exc)) from None

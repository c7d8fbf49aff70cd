"""The extra commands (``export``, ``export-onnx``, ``quantize``, ``pseudo-label``, ``report``, ``seeds``) on
jsonargparse, as ``fit`` is: ``--help``, ``--print_config``, a YAML settings file, and one-line errors.

A command is a typed function: its signature is the schema (as in litgpt) and the ``Args:`` of its docstring
are the ``--help`` text. `run_command` builds the parser from the signature, parses, and calls the function::

    def export_command(ckpt_path: str, output_dir: str, merged: bool = False, top_k: PositiveInt = 5) -> str:
        '''Export a finlight checkpoint as a Hugging Face directory.

        Args:
            ckpt_path: the finlight checkpoint.
            output_dir: a new (or empty) folder.
            merged: merge LoRA adapters into the base.
            top_k: ...
        '''

    def export_main(argv: list[str]) -> str:
        return run_command(export_command, argv, "export")

Why not jsonargparse's own ``add_function_arguments`` / ``CLI``: they make a bool ``--int8 true`` (the commands'
users and scripts pass bare flags: ``--int8``, ``--no_optimize``), have no positional lists (``report A B C``) and
no pass-through of unknown options to ``fit`` (``seeds``); the parser itself is still jsonargparse's.

How a parameter becomes an option:

- no default → a required ``--name``; with a default → optional (``--name value`` or ``--name=value``);
- ``bool`` → a flag pair ``--name`` / ``--no_name``;
- ``list[T]`` → ``--name A B C`` (repeating the option extends the list; ``name: [A, B, C]`` in a file);
- ``Literal[...]`` → one of the choices; numbers with a range → jsonargparse.typing types (``PositiveInt``,
  ``NonNegativeFloat``, ``ClosedUnitInterval`` …): checked while parsing, the key named, before any work;
- names in ``positional`` → positional arguments (``report logs/a logs/b``).

Every command also gets ``--print_config`` (the resolved settings as YAML, exits) and ``--config FILE`` (those
settings read from YAML; options after it override). A command whose ``--config`` already means a *training*
config (``seeds``, ``quantize``) passes ``config_option="--settings"``. ``passthrough=True`` (``seeds``) hands
every option the signature does not know to the function's ``overrides`` parameter, untouched, for ``fit``.
Parse errors become one `FinlightError` line naming the option, with a pointer to ``--help``.

To add a command: write the typed function with its docstring in the method package it belongs to, a
``*_main(argv)`` that calls `run_command`, register ``"name": "module:*_main"`` in `finlight.cli.EXTRA_COMMANDS`,
and add wrong-argument rows to ``tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import inspect
import os
import re
import typing
from typing import Any, Callable, Optional, Sequence, Union

from finlight.errors import FinlightError

_NOISE = ("Parser key", "Does not validate", "Subtypes", "Errors", "Given value", "Problem with given class_path")
_RESTRICTION = re.compile(r"Not of type (\w+): (?:(.*) )?does not conform to restriction (.+)")
_CHOICE = re.compile(r"Expected a typing\.Literal\[(.*)\]\. Got value: (.*)")


def error_line(err: Exception) -> str:
    """One line from a jsonargparse error, which nests (model → class_path → key): the innermost keys joined,
    and the first reason that is not plumbing; a number out of range or a wrong choice is said plainly."""
    text = str(err)
    lines = [line.strip().lstrip("- ").strip() for line in text.splitlines() if line.strip()]
    keys = re.findall(r'Parser key "([^"]+)"', text)
    reasons = [line for line in lines if not line.startswith(_NOISE) and "NoneType" not in line]
    given = re.search(r"Given value: (.*)", text)
    for reason in reasons:
        if _RESTRICTION.search(reason):
            kind, value, restriction = _RESTRICTION.search(reason).groups()
            value = value or (given.group(1) if given else "the value")
            reasons = [f"{value} is out of range (must be {restriction}: {kind})"]
            break
        if _CHOICE.search(reason):
            choices, value = _CHOICE.search(reason).groups()
            reasons = [f"{value!r} is not one of {choices.replace(chr(39), '')}"]
            break
    if keys and reasons:
        return f"{'.'.join(dict.fromkeys(keys))}: {reasons[0]}"
    return lines[0] if lines else type(err).__name__


def check_config_files(argv: Sequence[str], option: str = "--config") -> None:
    """Each ``option FILE`` in ``argv`` is a YAML mapping: a syntax error is ``FILE:LINE: …``, not jsonargparse's
    "Problems parsing config" without the file."""
    import yaml

    for i, arg in enumerate(argv[:-1]):
        path = argv[i + 1]
        if arg != option or not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                content = yaml.safe_load(handle)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else path
            raise FinlightError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err}); fix the "
                                f"file (indentation, an unclosed bracket or quote?)") from None
        except UnicodeDecodeError as err:
            raise FinlightError(f"{path}: not a UTF-8 text file (byte {err.start}); save the config as UTF-8") from None
        if content is not None and not isinstance(content, dict):
            raise FinlightError(f"{path}: a config is a mapping of keys (trainer:, model:, data: …), but the file "
                                f"holds a {type(content).__name__}")


def refuse_nulls(config, key: str) -> None:
    """``key: {class_path, init_args}`` whose init_args set ``null`` where the class takes no None: one line
    (jsonargparse passes such nulls of nested class arguments through to ``__init__``)."""
    class_path = config.get("class_path") if config is not None and hasattr(config, "get") else None
    init_args = config.get("init_args") if class_path else None
    if not class_path or init_args is None:
        return
    from finlight.core.checkpoints import import_class

    cls = import_class(str(class_path))
    hints: dict = {}
    for klass in reversed(getattr(cls, "__mro__", ())):
        try:
            hints.update(typing.get_type_hints(vars(klass)["__init__"]) if "__init__" in vars(klass) else {})
        except Exception:  # annotations that do not resolve: nothing to check there
            continue
    for name, value in vars(init_args).items():
        hint = hints.get(name)
        if value is None and hint is not None and hint is not Any and not _allows_none(hint):
            raise FinlightError(f"{key}.{name} is null, but it takes {getattr(hint, '__name__', hint)}: give a value, "
                                f"or leave the key out for the default")


def _allows_none(hint) -> bool:
    return hint is type(None) or (typing.get_origin(hint) is Union and type(None) in typing.get_args(hint))


def _unwrap_optional(annotation) -> tuple[Any, bool]:
    if typing.get_origin(annotation) is Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _list_item(annotation) -> Optional[Any]:
    inner, _ = _unwrap_optional(annotation)
    if typing.get_origin(inner) in (list, Sequence, typing.Sequence, tuple) or inner in (list, tuple):
        args = [a for a in typing.get_args(inner) if a is not Ellipsis]
        return args[0] if args else str
    return None


def _help_texts(function: Callable) -> tuple[str, dict[str, str]]:
    from docstring_parser import parse

    doc = parse(inspect.getdoc(function) or "")
    description = "\n\n".join(part for part in (doc.short_description, doc.long_description) if part)
    return description, {p.arg_name: " ".join((p.description or "").split()) for p in doc.params}


def command_parser(function: Callable, name: str, *, positional: Sequence[str] = (),
                   config_option: str = "--config"):
    """The jsonargparse parser of ``function``'s signature (see the module docstring)."""
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

    description, helps = _help_texts(function)
    parser = ArgumentParser(prog=f"python -m finlight {name}", description=description, exit_on_error=False,
                            default_env=False, allow_abbrev=False)
    parser.add_argument(config_option, action=ActionConfigFile,
                        help="settings of this command as YAML (the keys below); options after it override")
    hints = typing.get_type_hints(function)
    for param in inspect.signature(function).parameters.values():
        if param.name == "overrides" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(param.name, str)
        required = param.default is inspect.Parameter.empty
        kwargs: dict[str, Any] = {"help": helps.get(param.name, "")}
        if not required:
            kwargs["default"] = param.default
        inner, _ = _unwrap_optional(annotation)
        item = _list_item(annotation)
        if inner is bool:
            kwargs["action"] = ActionYesNo
        elif item is not None:
            kwargs.update(type=item, nargs="+")
        else:
            kwargs["type"] = annotation
        if param.name in positional:
            parser.add_argument(param.name, **kwargs)
        else:
            parser.add_argument(f"--{param.name}", required=required, **kwargs)
    return parser


def run_command(function: Callable, argv: Sequence[str], name: str, *, positional: Sequence[str] = (),
                config_option: str = "--config", passthrough: bool = False):
    """Parse ``argv`` against ``function``'s signature and call it; a parse error is one `FinlightError` line."""
    from jsonargparse import ArgumentError

    from finlight.core.checkpoints import plain_numbers

    parser = command_parser(function, name, positional=positional, config_option=config_option)
    check_config_files(argv, config_option)
    lists = {f"--{p}" for p in inspect.signature(function).parameters
             if _list_item(typing.get_type_hints(function).get(p, str)) is not None}
    argv, overrides = _split(parser, list(argv), passthrough)
    try:
        config = parser.parse_args(_merge_repeated(argv, lists))
    except ArgumentError as err:
        line = _as_option(error_line(err), positional)
        raise FinlightError(f"{name}: {line} (see `python -m finlight {name} --help`)") from None
    kwargs = {key: plain_numbers(value) for key, value in vars(config).items() if key != config_option.lstrip("-")}
    if passthrough:
        kwargs["overrides"] = overrides
    return function(**kwargs)


def _as_option(line: str, positional: Sequence[str]) -> str:
    """``batch_size: …`` → ``--batch_size: …``, ``… are required: a, b`` → ``missing --a, --b``."""
    def option(key: str) -> str:
        return key if key in positional else f"--{key}"

    missing = re.match(r"the following arguments are required: (.*)", line)
    if missing:
        return "missing " + ", ".join(option(k.strip().lstrip("-")) for k in missing.group(1).split(","))
    key, sep, rest = line.partition(": ")
    return f"{option(key)}: {rest}" if sep and re.fullmatch(r"\w+", key) else line


def _merge_repeated(argv: list[str], lists: set[str]) -> list[str]:
    """``--input a --input b`` → ``--input a b`` for list options (argparse would keep only the last)."""
    out: list = []
    values_of: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token not in lists:
            out.append(token)
            continue
        if token not in values_of:
            values_of[token] = []
            out += [token, values_of[token]]  # filled in place by later repeats
        values = values_of[token]
        while i < len(argv) and not argv[i].startswith("--"):
            values.append(argv[i])
            i += 1
    return [t for item in out for t in (item if isinstance(item, list) else [item])]


def _split(parser, argv: list[str], passthrough: bool) -> tuple[list[str], list[str]]:
    """With ``passthrough``: (this command's tokens, the rest, in order) by option name."""
    if not passthrough:
        return argv, []
    known, takes = {"-h": 0, "--help": 0, "--print_config": 0}, {}
    for action in parser._actions:
        for option in action.option_strings:
            takes[option] = 0 if action.nargs in (0, "?") else (-1 if action.nargs == "+" else 1)
    known.update(takes)
    own, rest, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        option = token.split("=", 1)[0]
        target = own if (option in known or not token.startswith("--")) else rest
        target.append(token)
        i += 1
        if "=" in token or (target is own and not token.startswith("-")):
            continue
        count = known.get(option, -1)
        while i < len(argv) and count != 0 and not argv[i].startswith("--"):
            target.append(argv[i])
            i += 1
            count -= 1
    return own, rest

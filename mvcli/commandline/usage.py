"""Usage errors in one line: the option or config key, the file it came from, what was expected.

jsonargparse reports a wrong value as a multi-line dump (``Does not validate against any of
the Union subtypes`` ...), an unknown key without a hint and a config file's mistake without
naming the file. :class:`mvcli.commandline.help.ArgumentParser` sends every message through
:func:`one_line` before printing it (usage line above, exit 2, as argparse does):

- ``unrecognized arguments: --data.batchsize 4 (did you mean --data.batch_size?)``
- ``bad.yaml: data.batchsize is not an option of mvcli fit (did you mean data.batch_size?)``
- ``--trainer.max_epochs: expected int or null, got '2 epochs'``
- ``bad.yaml: data.batch_size: expected int > 0, got 'eight'``

Options are never abbreviated (``allow_abbrev=False``): ``--trainer.max_epoch`` is an
unknown option with a hint, not a silent ``--trainer.max_epochs``.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml

from mvcli.utils import compat

# The arguments being parsed and the config file being read: where a wrong key came from.
_ARGV: ContextVar[tuple[str, ...]] = ContextVar("mvcli_argv", default=())
_FILE: ContextVar[str | None] = ContextVar("mvcli_config_file", default=None)
# jsonargparse's limit types, as a user reads them.
_TYPE_NAMES = {
    "PositiveInt": "int > 0",
    "NonNegativeInt": "int >= 0",
    "PositiveFloat": "float > 0",
    "NonNegativeFloat": "float >= 0",
    "ClosedUnitInterval": "float in [0, 1]",
    "OpenUnitInterval": "float in (0, 1)",
    "NoneType": "null",
}
_CLASS = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")


@contextlib.contextmanager
def parsing_args(args: list[str]) -> Iterator[None]:
    """The command line being parsed, to tell an option given there from a config file's key."""
    token = _ARGV.set(tuple(str(a) for a in args))
    try:
        yield
    finally:
        _ARGV.reset(token)


@contextlib.contextmanager
def reading_file(path: Any) -> Iterator[None]:
    """The config file being read: errors raised meanwhile name it."""
    token = _FILE.set(str(path))
    try:
        yield
    finally:
        _FILE.reset(token)


def one_line(parser: Any, message: str) -> str:
    """jsonargparse's error ``message`` as one line naming the option or file and key."""
    unknown = re.match(r"unrecognized arguments: (.*)", message, re.S)
    if unknown:
        options = [a for a in unknown.group(1).split() if a.startswith("--")]
        hint = did_you_mean(options[0], compat.option_strings(parser)) if options else ""
        return f"unrecognized arguments: {unknown.group(1).strip()}{hint}"
    refused = re.match(r"(Subcommand|Group) '([^']*)' does not accept option '([^']*)'", message)
    if refused:
        kind, owner, key = refused.groups()
        full = key if kind == "Subcommand" else f"{owner}.{key}"
        if kind == "Subcommand":
            parser = compat.parser_of_subcommand(parser, owner) or parser
        keys = [o[2:] for o in compat.option_strings(parser) if o.startswith("--")]
        where = parser.prog.replace(" [options]", "") if kind == "Subcommand" else owner
        hint = did_you_mean(full, keys)
        return f"{_source(full)}{full} is not an option of {where}{hint}"
    typed = re.match(r'Parser key "([^"]+)":\s*(.*)', message, re.S)
    if typed and re.search(r"NestedArg|class_path|init_args|Parser key", typed.group(2)):
        # A component's (class_path) own error: the argument's one line when the report holds
        # it (a limit or type of one of its arguments), else jsonargparse's report; file named.
        file = _source(typed.group(1))
        detail = typed.group(2)
        inner = re.search(
            r"(?::|\n)\s+(?:\S+\.ya?ml: )?(?:--)?([\w.]+): (expected [^\n]*?)(?:\. Got value|\n|$)",
            detail,
        )
        if inner:
            key = f"{typed.group(1)}.{inner.group(1)}"
            expected = inner.group(2)
            nested = re.search(r"NestedArg\(key='[^']*', val='([^']*)'\)", detail)
            if ", got " not in expected and nested:
                expected += f", got {nested.group(1)!r}"
            component = re.search(r"class_path=?\s*'([^']+)'", detail)
            of = f" ({component.group(1)})" if component else ""
            return f"{file}{key if file else '--' + key}: {expected}{of}"
        return f"{file}{message}" if file else message
    if typed:
        key, detail = typed.groups()
        source = _source(key)
        name = key if source else f"--{key}"
        return f"{source}{name}: {_expected(detail)}"
    file = _FILE.get()
    text = " ".join(line.strip() for line in message.strip().splitlines())
    return f"{file}: {text}" if file and file not in text else text


def unknown_options(parser: Any) -> list[str]:
    """Options of the command line being parsed that ``parser`` does not have (for a parser
    without subcommands, where jsonargparse may take an unknown option as a positional)."""
    known = set(compat.option_strings(parser))
    return [a for a in _ARGV.get() if a.startswith("--") and a.split("=", 1)[0] not in known]


def did_you_mean(given: str, candidates: list[str]) -> str:
    """`` (did you mean X?)`` for the closest candidates of ``given``, or ``""``."""
    name = given.split("=", 1)[0]
    close = difflib.get_close_matches(name, candidates, n=2, cutoff=0.75)
    if not close:  # a typo in the last part: compare within the same section
        section = name.rsplit(".", 1)[0] + "."
        same = [c for c in candidates if c.startswith(section)]
        close = difflib.get_close_matches(name, same, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _expected(detail: str) -> str:
    """``expected int or null, got '2 epochs'`` out of jsonargparse's explanation."""
    subtypes = re.search(r"Subtypes: \[(.*?)\]\n", detail + "\n")
    not_of = re.search(r"Not of type (\w+)", detail)
    expected_a = re.findall(r"Expected a (<class '[^']*'>|[\w.\[\], ']+)", detail)
    if subtypes:
        names = _CLASS.findall(subtypes.group(1)) or [subtypes.group(1)]
    elif not_of:
        names = [not_of.group(1)]
    elif expected_a:
        names = [(_CLASS.findall(e) or [e])[0] for e in expected_a]
    else:
        return detail.strip().splitlines()[0].strip() if detail.strip() else "invalid value"
    names = list(dict.fromkeys(_TYPE_NAMES.get(n, n) for n in names))
    given = re.search(r"Given value: (.*)", detail)
    value = given.group(1).strip() if given else None
    restriction = re.search(r"(\S+) does not conform to restriction (.+)", detail)
    if restriction:  # jsonargparse's limit types: "0 does not conform to restriction v>0"
        names = [f"{n} ({restriction.group(2)})" for n in names]
        value = value or restriction.group(1)
    if value is None:  # the last quoted text, a class name aside (<class 'int'>)
        last = re.sub(r"<class '[^']*'>", "", detail.strip().splitlines()[-1] if detail else "")
        quoted = re.findall(r"'([^']*)'", last)
        value = quoted[-1] if quoted else None
    got = f", got {value!r}" if value is not None else ""
    return f"expected {' or '.join(names)}{got}"


def _source(key: str) -> str:
    """``"<file>: "`` when ``key`` came from a config file (not from the command line)."""
    file = _FILE.get()
    if file is not None:  # raised while that file was read
        return f"{file}: "
    argv = _ARGV.get()
    if any(a == f"--{key}" or a.startswith(f"--{key}=") for a in argv):
        return ""
    found = None
    for path in _config_files(argv):
        if _has_key(path, key):
            found = path
    return f"{found}: " if found else ""


def _config_files(argv: tuple[str, ...]) -> list[str]:
    files = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return [f for f in files if Path(f).is_file()]


def _has_key(path: str, key: str) -> bool:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    if not isinstance(config, Mapping):
        return False
    candidates = [config, *(v for v in config.values() if isinstance(v, Mapping))]  # fit: {...}
    return any(_lookup(c, key.split(".")) for c in candidates)


def _lookup(config: Mapping, parts: list[str]) -> bool:
    if ".".join(parts) in config:
        return True
    head, *rest = parts
    value = config.get(head)
    if not rest:
        return head in config
    return isinstance(value, Mapping) and _lookup(value, rest)

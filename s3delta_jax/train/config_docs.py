"""The documentation of config fields: the `# ...` comments written beside them in the config files.

The comments are read from the source (tokenize + ast), so they are written once, in the config file.
A field's comment is the comment at the end of the line that sets it (`budget=1.389e-4,  # < 1: a
ratio ...`), else the comment lines right above it. Where the source sets a field is found from its
shape: a keyword of `dict(...)` (or a key of a dict literal) assigned to `config.model` documents
`model.<keyword>`; `config.seed = 0` documents `seed`; a keyword inside a helper function that returns
a group of fields (`schedule(...)`) documents every field of that name (`search.batch_size`,
`retrain.batch_size`). The first commented place of a field in a file wins (base settings come before
the variants that change them).
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path
from typing import Any

import ml_collections

from s3delta_jax.train.config_file import leaf_fields


def field_comments(path: str | Path) -> dict[str, str]:
    """{key: comment} of one config file, `key` being the dotted path as far as the source shows it."""
    source = Path(path).read_text()
    trailing, full_line = _comment_lines(source)
    comments: dict[str, str] = {}
    for key, first, last in _field_sites(ast.parse(source)):
        comment = trailing.get(first) or trailing.get(last) or _block_above(first, full_line)
        if comment and key not in comments:
            comments[key] = comment
    return comments


def comment_for(field: str, comments: dict[str, str]) -> str:
    """The comment of `field` ("search.batch_size"): the longest key of `comments` it ends with."""
    parts = field.split(".")
    for start in range(len(parts)):
        key = ".".join(parts[start:])
        if key in comments:
            return comments[key]
    return ""


def field_table(config: ml_collections.ConfigDict, comments: dict[str, str]) -> list[str]:
    """One line per field: `name  default  comment`, aligned."""
    rows = [(field, _shown(value), comment_for(field, comments)) for field, value in leaf_fields(config).items()]
    name_width = max(len(name) for name, _, _ in rows)
    value_width = min(max(len(value) for _, value, _ in rows), 24)
    return [f"  {name:<{name_width}}  {value:<{value_width}}  {comment}".rstrip() for name, value, comment in rows]


def _shown(value: Any) -> str:
    return repr(value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value)


def _comment_lines(source: str) -> tuple[dict[int, str], dict[int, str]]:
    """({line: comment after code}, {line: comment on a line of its own}), comment text without '#'."""
    trailing, full_line = {}, {}
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            line = token.start[0]
            (trailing if line in code_lines else full_line)[line] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.update(range(token.start[0], token.end[0] + 1))
    return trailing, full_line


def _block_above(line: int, full_line: dict[int, str]) -> str:
    """The comment lines directly above `line`, joined."""
    block = []
    while line - 1 in full_line:
        line -= 1
        block.insert(0, full_line[line])
    return " ".join(block)


def _field_sites(tree: ast.AST) -> list[tuple[str, int, int]]:
    """(key, first line, last line) of every place that sets a field, in source order."""
    sites: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = _attribute_path(node.targets[0])
            if target is not None:
                sites.append((target, node.lineno, node.end_lineno))
                visit(node.value, f"{target}.")
                return
        if isinstance(node, ast.Call):
            callee = node.func
            if isinstance(callee, ast.Name) and callee.id == "dict":
                for keyword in node.keywords:
                    if keyword.arg is not None:
                        sites.append((prefix + keyword.arg, keyword.lineno, keyword.value.end_lineno))
                        visit(keyword.value, f"{prefix}{keyword.arg}.")
                return
            if isinstance(callee, ast.Attribute) and callee.attr == "update":
                owner = _attribute_path(callee.value)
                prefix = f"{owner}." if owner else prefix
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    sites.append((prefix + key.value, key.lineno, value.end_lineno))
                    visit(value, f"{prefix}{key.value}.")
            return
        for child in ast.iter_child_nodes(node):
            visit(child, prefix)

    visit(tree, "")
    return sites


def _attribute_path(node: ast.AST) -> str | None:
    """`config.model.name` -> "model.name" (the root variable dropped); None for other targets."""
    names = []
    while isinstance(node, ast.Attribute):
        names.insert(0, node.attr)
        node = node.value
    return ".".join(names) if names and isinstance(node, ast.Name) else None

"""Render deploy/helm/studyhall offline, without helm, for tests/test_deploy_files.py.

helm is not installed on the test machines and cannot be fetched, so the chart keeps to a
small part of Go's template language, and this renders exactly that part: `{{ .Values.a.b }}`
(and .Release, .Chart), `include "name" .`, `define`, `if` / `else` / `end` with `not`,
the pipes `quote`, `default X`, `nindent N`, `indent N`, `toYaml X`, `{{-` / `-}}`
trimming and `{{/* comments */}}`. Anything else raises, so a template that outgrows the
subset fails the test instead of being rendered wrongly. The rendered manifests are then
validated against the Kubernetes schemas (kubernetes-validate); `helm template` was not run.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TAG = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)


class Unsupported(Exception):
    """The template uses Go template syntax this renderer does not know."""


@dataclass
class Node:
    kind: str  # "text", "action", "if", "define"
    value: str = ""
    body: list[Node] = field(default_factory=list)
    orelse: list[Node] = field(default_factory=list)


def _tokens(source: str) -> list[tuple[str, str]]:
    """("text", s) and ("tag", action) pairs with Go's whitespace trimming applied."""
    out: list[tuple[str, str]] = []
    pos = 0
    for m in TAG.finditer(source):
        text = source[pos:m.start()]
        if m[1]:
            text = text.rstrip()
        out.append(("text", text))
        out.append(("tag", m[2]))
        pos = m.end()
        if m[3]:
            rest = source[pos:]
            pos += len(rest) - len(rest.lstrip())
    out.append(("text", source[pos:]))
    return out


def _parse(tokens: list[tuple[str, str]], i: int = 0, stop: tuple[str, ...] = ()) -> tuple[list[Node], int, str]:
    nodes: list[Node] = []
    while i < len(tokens):
        kind, value = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(Node("text", value))
            continue
        if value.startswith("/*"):
            continue
        word = value.split(maxsplit=1)[0]
        if word in stop:
            return nodes, i, word
        if word in ("if", "define"):
            body, i, ended = _parse(tokens, i, ("else", "end"))
            node = Node(word, value.split(maxsplit=1)[1], body)
            if ended == "else":
                node.orelse, i, _ = _parse(tokens, i, ("end",))
            nodes.append(node)
        elif word in ("range", "with", "template", "block", "else", "end"):
            raise Unsupported(f"{{{{ {value} }}}}")
        else:
            nodes.append(Node("action", value))
    return nodes, i, ""


class Chart:
    def __init__(self, path: Path, release: str = "demo", namespace: str = "default") -> None:
        self.path = path
        meta = yaml.safe_load((path / "Chart.yaml").read_text())
        self.values: dict[str, Any] = yaml.safe_load((path / "values.yaml").read_text())
        self.scope = {
            "Values": self.values,
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
            "Chart": {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta["appVersion"]},
        }
        self.defines: dict[str, list[Node]] = {}
        for helper in sorted((path / "templates").glob("_*.tpl")):
            self._run(_parse(_tokens(helper.read_text()))[0])

    def render(self, overrides: dict[str, Any] | None = None) -> dict[str, str]:
        """{template name: rendered text} for every manifest template."""
        if overrides:
            _merge(self.values, overrides)
        return {t.name: self._run(_parse(_tokens(t.read_text()))[0])
                for t in sorted((self.path / "templates").glob("*.yaml"))}

    def _run(self, nodes: list[Node]) -> str:
        out = []
        for node in nodes:
            if node.kind == "text":
                out.append(node.value)
            elif node.kind == "define":
                self.defines[shlex.split(node.value)[0]] = node.body
            elif node.kind == "if":
                out.append(self._run(node.body if _truthy(self._pipeline(node.value)) else node.orelse))
            else:
                value = self._pipeline(node.value)
                out.append("" if value is None else str(value))
        return "".join(out)

    def _pipeline(self, text: str) -> Any:
        stages = [shlex.split(stage, posix=False) for stage in text.split("|")]
        value = self._command(stages[0], None, first=True)
        for stage in stages[1:]:
            value = self._command(stage, value, first=False)
        return value

    def _command(self, words: list[str], piped: Any, first: bool) -> Any:
        name, args = words[0], [self._arg(w) for w in words[1:]]
        if first and len(words) == 1:
            return self._arg(name)
        if not first:
            args.append(piped)
        if name == "include":
            return self._run(self.defines[args[0]])
        if name == "not":
            return not _truthy(args[0])
        if name == "quote":
            return '"' + str(args[0]).replace("\\", "\\\\").replace('"', '\\"') + '"'
        if name == "default":
            return args[1] if _truthy(args[1]) else args[0]
        if name == "toYaml":
            return yaml.safe_dump(args[0], default_flow_style=False, sort_keys=False).rstrip("\n")
        if name in ("nindent", "indent"):
            pad = " " * int(args[0])
            text = "\n".join(pad + line for line in str(args[1]).split("\n"))
            return "\n" + text if name == "nindent" else text
        raise Unsupported(f"function {name!r}")

    def _arg(self, word: str) -> Any:
        if word.startswith('"'):
            return word[1:-1]
        if word == ".":
            return self.scope
        if word.isdigit():
            return int(word)
        if word.startswith("."):
            value: Any = self.scope
            for part in word[1:].split("."):
                value = value.get(part) if isinstance(value, dict) else None
            return value
        raise Unsupported(f"argument {word!r}")


def _truthy(value: Any) -> bool:
    return bool(value)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every non-empty YAML document in the rendered templates."""
    docs: list[dict[str, Any]] = []
    for text in rendered.values():
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs

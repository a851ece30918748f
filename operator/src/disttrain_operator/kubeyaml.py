"""YAML read as kubectl reads it: the same manifest means the same object locally and on the cluster.

kubectl decodes manifests with sigs.k8s.io/yaml (go-yaml v2, then JSON); PyYAML's YAML 1.1 resolver differs on
numbers (`1e9` is a string to PyYAML), some booleans (`y`, `n`) and base-60 and timestamp scalars.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_GO_YAML_SCALAR_TAG = "tag:disttrain.io,2025:go-yaml-v2-scalar"
_GO_INT = re.compile(r"[-+]?(?:0[xXoObB][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")  # Go's ParseInt(s, 0, 64)
_GO_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")  # go-yaml's yamlStyleFloat
_GO_SPECIAL_FLOATS = {
    **dict.fromkeys((".nan", ".NaN", ".NAN"), float("nan")),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), float("inf")),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), float("-inf")),
}


def _go_yaml_v2_number(text: str) -> int | float | str:
    """A plain scalar that starts with a digit, a sign or a dot, as go-yaml v2's `resolve` reads it into an
    `interface{}`: an int (any base prefix Go's ParseInt(s, 0, 64) knows, 0777 as octal, `_` ignored), a
    float (`1e9`, `1.`, `.5`, `-2.5e-3`, `.inf`), else the string itself: timestamps stay strings (v2 does
    that for `interface{}`), and base-60 numbers (`1:30`, which YAML 1.1 and PyYAML read as 90) are strings.
    Then as the API server receives it in kubectl's JSON: a whole float is an int (`1e9` is 1000000000).
    One difference is left: integers beyond 64 bits stay exact here where go-yaml falls back to a float."""
    if text in _GO_SPECIAL_FLOATS:
        return _GO_SPECIAL_FLOATS[text]
    if text.startswith("."):  # go-yaml tries ParseFloat on the text as is
        return float(text) if _GO_FLOAT.fullmatch(text) else text
    plain = text.replace("_", "")
    if _GO_INT.fullmatch(plain):
        digits = plain.lstrip("+-")
        base = 0 if digits[1:2].isalpha() else 8 if digits.startswith("0") else 10  # 0x, 0o, 0b; 0777
        try:
            return int(plain, base)
        except ValueError:  # e.g. 0b12 or 0o9: not an int; maybe a float below, else a string
            pass
    if _GO_FLOAT.fullmatch(plain):
        value = float(plain)
        if value in (float("inf"), float("-inf")):  # Go's ParseFloat fails on overflow: a string
            return text
        # kubectl sends JSON, and Go's encoding/json writes a whole float64 below 1e21 without a fraction or
        # exponent: the API server gets 1000000000 for 1e9, and 2 for 2.0, both valid integers
        return int(value) if value.is_integer() and abs(value) < 1e21 else value
    return text


class KubectlYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the implicit types kubectl gives plain scalars.

    kubectl reads manifests with sigs.k8s.io/yaml, which decodes with go-yaml v2 and converts to JSON.
    go-yaml v2 keeps the YAML 1.1 booleans (y/Y/yes/Yes/YES/true/True/TRUE/on/On/ON and the n/no/false/off
    spellings; `y` and `n` are booleans there but strings in PyYAML), so this loader keeps them too and adds
    y/n. Numbers follow go-yaml v2's `resolve` and kubectl's JSON (see `_go_yaml_v2_number`): `replicas: 1e9`
    is 1000000000 as in the cluster, not the string "1e9" of PyYAML's YAML 1.1 resolver. Nulls (~, null, empty) and `<<`
    merge keys are as in PyYAML. Only plain scalars are affected: quoted values are strings as before.
    """

    bool_values = {**yaml.SafeLoader.bool_values, "y": True, "n": False}
    yaml_implicit_resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}


KubectlYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$"),
    list("yYnNtTfFoO"),
)
KubectlYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
KubectlYamlLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])
KubectlYamlLoader.add_implicit_resolver(_GO_YAML_SCALAR_TAG, re.compile(r"^[-+.0-9]"), list("-+.0123456789"))
KubectlYamlLoader.add_constructor(
    _GO_YAML_SCALAR_TAG, lambda loader, node: _go_yaml_v2_number(loader.construct_scalar(node))
)

"""Renders the Helm chart in deploy/helm/proxmox-csi without Helm, for the
subset of Go templates the chart uses: `{{ .Values.a.b }}`, `.Release.Namespace`,
`$` and `$var` references, pipelines into `quote`, `trim`, `indent N`, `nindent N` and
`toYaml`, `list`, `if`/`else`/`end`, `range $v := …` and `range $i, $v := …`,
and `{{-` / `-}}` whitespace trimming. Anything else is an error, so the chart
cannot drift into what this renderer (and so the manifest tests) cannot see.

    python3 deploy/render.py                 print the chart with its default values
    python3 deploy/render.py --write DIR     write one file per template (deploy/kubernetes)
"""
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CHART = HERE / "helm" / "proxmox-csi"
ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


class TemplateError(Exception):
    pass


def tokenize(text):
    """Text and action tokens, with the trim markers applied to the text around them."""
    tokens, position = [], 0
    for match in ACTION.finditer(text):
        literal = text[position:match.start()]
        if match.group(1):
            literal = literal.rstrip(" \t\r\n")
        tokens.append(("text", literal))
        tokens.append(("action", match.group(2), bool(match.group(3))))
        position = match.end()
    tokens.append(("text", text[position:]))
    for index, token in enumerate(tokens):
        if token[0] == "action" and token[2] and index + 1 < len(tokens):
            tokens[index + 1] = ("text", tokens[index + 1][1].lstrip(" \t\r\n"))
    return tokens


def parse(tokens, index=0, closers=()):
    """A tree of ("text", s) / ("expr", e) / ("if", cond, body, else) / ("range", vars, expr, body)."""
    nodes = []
    while index < len(tokens):
        token = tokens[index]
        if token[0] == "text":
            nodes.append(token)
            index += 1
            continue
        words = token[1]
        keyword = words.split(" ", 1)[0]
        if keyword in closers:
            return nodes, index
        if keyword == "if":
            body, index = parse(tokens, index + 1, ("else", "end"))
            otherwise = []
            if tokens[index][1] == "else":
                otherwise, index = parse(tokens, index + 1, ("end",))
            nodes.append(("if", words[3:], body, otherwise))
        elif keyword == "range":
            match = re.match(r"range\s+(\$\w+)(?:\s*,\s*(\$\w+))?\s*:=\s*(.+)", words)
            if not match:
                raise TemplateError(f"unsupported range: {words}")
            variables = [v for v in match.group(1, 2) if v]
            body, index = parse(tokens, index + 1, ("end",))
            nodes.append(("range", variables, match.group(3), body))
        elif keyword in ("else", "end"):
            raise TemplateError(f"unexpected {keyword}")
        else:
            nodes.append(("expr", words))
        index += 1
    if closers:
        raise TemplateError(f"missing {{{{ end }}}} (expected one of {closers})")
    return nodes, index


def words_of(expression):
    return re.findall(r'"(?:[^"\\]|\\.)*"|\S+', expression)


def evaluate_term(term, scope):
    if term.startswith('"'):
        return term[1:-1]
    if re.fullmatch(r"-?\d+", term):
        return int(term)
    if term.startswith("$"):
        name, _, path = term.partition(".")
        value = scope["$vars"][name] if name != "$" else scope["$root"]
        return lookup(value, path)
    if term.startswith("."):
        return lookup(scope["$root"], term[1:])
    raise TemplateError(f"unsupported term: {term}")


def lookup(value, path):
    for part in filter(None, path.split(".")):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def to_yaml(value):
    return yaml.safe_dump(value, sort_keys=True, default_flow_style=False).rstrip("\n")


def indent(count, text):
    return "\n".join(" " * count + line for line in str(text).split("\n"))


FUNCTIONS = {
    "trim": lambda text: str(text).strip(),
    "quote": lambda value: '"' + str(value).replace('"', '\\"') + '"',
    "toYaml": to_yaml,
    "indent": indent,
    "nindent": lambda count, text: "\n" + indent(count, text),
    "list": lambda *items: list(items),
}


def evaluate(expression, scope):
    """A pipeline: each stage's result becomes the last argument of the next."""
    result, first = None, True
    for stage in expression.split("|"):
        words = words_of(stage.strip())
        if words[0] in FUNCTIONS:
            arguments = [evaluate_term(w, scope) for w in words[1:]] + ([] if first else [result])
            result = FUNCTIONS[words[0]](*arguments)
        elif len(words) == 1 and first:
            result = evaluate_term(words[0], scope)
        else:
            raise TemplateError(f"unsupported expression: {expression}")
        first = False
    return result


def truthy(value):
    return value not in (None, False, 0, "", [], {})


def execute(nodes, scope):
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "expr":
            value = evaluate(node[1], scope)
            out.append("" if value is None else str(value).lower() if isinstance(value, bool) else str(value))
        elif node[0] == "if":
            out.append(execute(node[2] if truthy(evaluate(node[1], scope)) else node[3], scope))
        elif node[0] == "range":
            items = evaluate(node[2], scope) or []
            for index, item in enumerate(items):
                names = node[1]
                bound = {names[0]: item} if len(names) == 1 else {names[0]: index, names[1]: item}
                out.append(execute(node[3], {**scope, "$vars": {**scope["$vars"], **bound}}))
    return "".join(out)


def render(namespace="proxmox-csi", values=None):
    """{template file name: rendered text} for the chart with `values` (default: values.yaml)."""
    values = values if values is not None else yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    root = {"Values": values, "Release": {"Namespace": namespace, "Name": "proxmox-csi"}, "Chart": chart}
    rendered = {}
    for template in sorted((CHART / "templates").glob("*.yaml")):
        tree, _ = parse(tokenize(template.read_text()))
        rendered[template.name] = execute(tree, {"$root": root, "$vars": {}}).strip("\n") + "\n"
    return rendered


HEADER = "# Rendered from deploy/helm/proxmox-csi/templates/{name} by scripts/render-manifests. Edit the chart, not this file.\n"


def main(argv):
    rendered = render()
    if argv[:1] == ["--write"]:
        target = Path(argv[1])
        for name, text in rendered.items():
            (target / name).write_text(HEADER.format(name=name) + text)
        return
    for name, text in rendered.items():
        print(f"---\n# Source: {name}\n{text}", end="")


if __name__ == "__main__":
    main(sys.argv[1:])

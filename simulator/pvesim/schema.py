"""Parameter validation from the official Proxmox API schema.

Proxmox checks every request against its schema before a handler runs and
answers `400 Parameter verification failed.` with one message per field.
This module does the same with the same messages, for the subset of the
schema in simulator/pve-api-schema.json (entries copied unmodified).
"""
import json
import re
from pathlib import Path

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "pve-api-schema.json"


class ParameterError(Exception):
    """400 Parameter verification failed, with per-field messages."""

    def __init__(self, errors):
        super().__init__("Parameter verification failed.")
        self.errors = errors


def _perl_regex(pattern):
    # Perl's (?^:...) is a group with default flags; Python's (?:...) matches alike.
    return re.compile(pattern.replace("(?^:", "(?:"))


# Formats the driver's requests touch; others are accepted as strings.
_FORMATS = {
    "pve-node": re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?"),
    "pve-storage-id": re.compile(r"[a-z][a-z0-9\-_.]*[a-z0-9]"),
    "pve-vmid": re.compile(r"[1-9][0-9]{2,8}"),
    # pve-common JSONSchema.pm $CONFIGID_RE (f665029): qr/[a-z][a-z0-9_-]+/i.
    "pve-configid": re.compile(r"[a-z][a-z0-9_\-]+", re.IGNORECASE),
    "pve-volume-id": re.compile(r"[a-z][a-z0-9\-_.]*[a-z0-9]:.+"),
    "disk-size": re.compile(r"\d+(\.\d+)?[KMGT]?"),
}
_FORMAT_MESSAGES = {
    "pve-node": "value does not look like a valid node name",
    "pve-storage-id": "storage ID '{v}' contains illegal characters",
    "pve-vmid": "value does not look like a valid VM ID",
    "pve-configid": "invalid configuration ID '{v}'",
    "pve-volume-id": "unable to parse volume ID '{v}'",
    "disk-size": "unable to parse size '{v}'",
}


class Schema:
    def __init__(self, path=SCHEMA_FILE):
        self.methods = json.loads(Path(path).read_text())
        self._routes = []
        for key in self.methods:
            method, template = key.split(" ", 1)
            regex = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$"
            self._routes.append((method, re.compile(regex), key))

    def match(self, method, path):
        """The schema key and path parameters for a request, or (None, None)."""
        for route_method, regex, key in self._routes:
            if route_method == method:
                found = regex.match(path)
                if found:
                    return key, found.groupdict()
        return None, None

    def path_exists(self, path):
        return any(regex.match(path) for _, regex, _ in self._routes)

    def validate(self, key, params):
        """Checks `params` (strings, as received) and returns them converted."""
        spec = self.methods[key].get("parameters", {})
        props = spec.get("properties", {})
        errors = {}
        converted = {}
        for name, value in params.items():
            prop = props.get(name) or _indexed(props, name)
            if prop is None:
                if spec.get("additionalProperties", 1) == 0:
                    errors[name] = "property is not defined in schema and the schema does not allow additional properties"
                else:
                    converted[name] = value
                continue
            try:
                converted[name] = check_value(prop, value)
            except ValueError as error:
                errors[name] = str(error)
        for name, prop in props.items():
            if "[n]" in name or prop.get("optional") or name in params:
                continue
            errors[name] = "property is missing and it is not optional"
        for name, prop in props.items():
            needed = prop.get("requires")
            if name in params and needed and needed not in params:
                errors[needed] = f"property is missing and it is not optional"
        if errors:
            raise ParameterError(errors)
        return converted

    def permissions(self, key):
        return self.methods[key].get("permissions")

    def allows_token(self, key):
        return bool(self.methods[key].get("allowtoken", 1))


def _indexed(props, name):
    """`scsi7` matches `scsi[n]`, within the range the description gives."""
    found = re.fullmatch(r"([a-z]+)(\d+)", name)
    if not found:
        return None
    prop = props.get(found.group(1) + "[n]")
    if prop is None:
        return None
    index = int(found.group(2))
    limit = re.search(r"n is 0 to (\d+)", prop.get("description", ""))
    if limit and index > int(limit.group(1)):
        return None
    return prop


def check_value(prop, value):
    kind = prop.get("type", "string")
    if kind == "integer":
        if not re.fullmatch(r"[+-]?\d+", str(value)):
            raise ValueError(f"type check ('integer') failed - got '{value}'")
        number = int(value)
        _check_range(prop, number)
        return number
    if kind == "number":
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"type check ('number') failed - got '{value}'") from None
        _check_range(prop, number)
        return number
    if kind == "boolean":
        text = str(value).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"type check ('boolean') failed - got '{value}'")
    text = str(value)
    if "enum" in prop and text not in prop["enum"]:
        raise ValueError(f"value '{text}' does not have a value in the enumeration '{', '.join(prop['enum'])}'")
    if "maxLength" in prop and len(text) > int(prop["maxLength"]):
        raise ValueError(f"value may only be {prop['maxLength']} characters long")
    if "pattern" in prop and not _perl_regex(prop["pattern"]).fullmatch(text):
        raise ValueError("value does not match the regex pattern")
    fmt = prop.get("format")
    if isinstance(fmt, dict):
        parse_property_string(fmt, text)
    elif isinstance(fmt, str):
        list_format = fmt.endswith("-list") and fmt[:-5] in _FORMATS
        base = fmt[:-5] if list_format else fmt
        if base in _FORMATS:
            items = re.split(r"[,;\s]+", text.strip()) if list_format else [text]
            for item in items:
                if item and not _FORMATS[base].fullmatch(item):
                    raise ValueError(_FORMAT_MESSAGES[base].format(v=item))
    return text


def _check_range(prop, number):
    if "minimum" in prop and number < prop["minimum"]:
        raise ValueError(f"value must have a minimum value of {prop['minimum']}")
    if "maximum" in prop and number > prop["maximum"]:
        raise ValueError(f"value must have a maximum value of {prop['maximum']}")


def parse_property_string(fmt, text):
    """`local-lvm:vm-100-disk-0,serial=x,ssd=1` against a property-string format.
    Returns {key: value}; raises ValueError with Proxmox's wording."""
    default_key = next((k for k, v in fmt.items() if v.get("default_key")), None)
    result = {}
    for part in text.split(","):
        if not part:
            continue
        if "=" in part:
            key, value = part.split("=", 1)
        elif default_key and default_key not in result:
            key, value = default_key, part
        else:
            raise ValueError(f"format error - value without key, but schema does not define a default key")
        spec = fmt.get(key)
        if spec is None:
            raise ValueError(f"invalid format - format error\n{key}: property is not defined in schema and the schema does not allow additional properties")
        if "alias" in spec:
            key, spec = spec["alias"], fmt[spec["alias"]]
        if key in result:
            raise ValueError(f"invalid format - duplicate key in comma-separated list property: {key}")
        try:
            result[key] = check_value(spec, value)
        except ValueError as error:
            raise ValueError(f"invalid format - format error\n{key}: {error}") from None
    for key, spec in fmt.items():
        if not spec.get("optional") and "alias" not in spec and key not in result:
            raise ValueError(f"invalid format - format error\n{key}: property is missing and it is not optional")
    return result

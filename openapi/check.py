#!/usr/bin/env python3
"""Checks openapi/openapi.yaml as its two consumers load it.

    python3 openapi/check.py [--base REV] [--file PATH]

The spec writes repeated response sets once, as YAML anchors merged with `<<: *name`. Two
programs read it: schemathesis 4 (scripts/contract-test), through a subclass of PyYAML's
CSafeLoader whose construct_mapping calls flatten_mapping (schemathesis/core/deserialization.py),
and the Swift tests (RegistryTests), through Yams 6.2.x. Both resolve merge keys: PyYAML in
SafeConstructor.flatten_mapping, Yams in Node.Mapping.flatten() (Sources/Yams/Node.Mapping.swift),
which Dictionary.private_construct_mapping (Sources/Yams/Constructor.swift) calls for every
mapping; in both the merged pairs come first and a mapping's own key wins over a merged one.

This script checks, and exits non-zero when something fails:

* the file loads with yaml.safe_load; with schemathesis's own loader, when schemathesis is
  installed; and with a copy of Yams's construction (merge flattening as in Node.Mapping.flatten,
  keys as their text, the last of equal keys wins), and all three give the same document;
* no mapping merges a key it also has itself, or merges one key twice, so that which side wins
  never matters; no mapping repeats a key, `<<` included (Yams refuses such a document:
  Parser.checkDuplicates in Sources/Yams/Parser.swift);
* every `$ref` resolves inside the document; operationIds are unique;
* with --base REV: `paths` and `components` equal REV's once description texts are left out
  (the description fields that differ are listed), every operation's responses are equal
  with their descriptions, and its 2xx codes come in the same order (schemathesis takes the
  first as the expected success). Other top-level keys may differ only in `info.description`
  and `x-` extensions. When schemathesis is installed, it also loads both revisions as it does
  for a run, and every operation's responses, resolved by schemathesis, must be equal.
"""

import argparse
import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "openapi", "openapi.yaml")
MERGE = "tag:yaml.org,2002:merge"
# libyaml, the parser Yams embeds (Sources/CYaml), when PyYAML was built with it.
NODE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

failures = []


def fail(message):
    failures.append(message)
    print("FAIL: " + message)


def report(since, message):
    """Prints message when no check failed since len(failures) was `since`."""
    if len(failures) == since:
        print(message)


# ---------------------------------------------------------------- loaders


def load_pyyaml(text):
    return yaml.load(text, Loader=yaml.SafeLoader)


def load_schemathesis(text):
    from schemathesis.core.deserialization import deserialize_yaml

    return deserialize_yaml(text)


def yams_flatten(node):
    """Node.Mapping.flatten() of Yams 6.2.x: merged pairs first, then the mapping's own pairs.

    A merge of a sequence of mappings takes them in reverse order, so that the first one wins.
    """
    merged, own = [], []
    for key, value in node.value:
        if key.tag == MERGE:
            if isinstance(value, yaml.MappingNode):
                merged += yams_flatten(value)
            elif isinstance(value, yaml.SequenceNode):
                for sub in reversed([n for n in value.value if isinstance(n, yaml.MappingNode)]):
                    merged += yams_flatten(sub)
            # anything else is ignored by Yams (PyYAML raises an error)
        else:
            own.append((key, value))
    return merged + own


def load_yams_like(text):
    """The document as Yams.load(yaml:) builds it: libyaml's node graph (an alias is the anchored
    node itself, as in Yams's Parser.loadAlias), mappings built by Yams's rules. Scalars are built
    by PyYAML, so that only the mapping rules are compared."""
    root = yaml.compose(text, Loader=NODE_LOADER)
    scalars = yaml.constructor.SafeConstructor()

    def build(node):
        if isinstance(node, yaml.MappingNode):
            result = {}
            for key, value in yams_flatten(node):
                # String.construct(from: key): the key's text, whatever its tag.
                result[key.value] = build(value)  # uniquingKeysWith: { _, second in second }
            return result
        if isinstance(node, yaml.SequenceNode):
            return [build(n) for n in node.value]
        return scalars.construct_object(node, deep=True)

    return build(root)


# ---------------------------------------------------------------- node checks


def check_nodes(text, label):
    """No mapping merges a key it also has, and none repeats a key."""
    root = yaml.compose(text, Loader=NODE_LOADER)
    seen = set()
    merges = 0

    def walk(node):
        nonlocal merges
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys = [k.value for k, _ in node.value]
            dupes = sorted({k for k in keys if keys.count(k) > 1})
            if dupes:
                # PyYAML keeps the last; Yams refuses the document (Parser.checkDuplicates), `<<` included.
                fail(f"{label}: line {node.start_mark.line + 1}: repeated keys {dupes}")
            own = [k.value for k, _ in node.value if k.tag != MERGE]
            flat = yams_flatten(node)
            merged = [k.value for k, _ in flat[: len(flat) - len(own)]]
            if any(k.tag == MERGE for k, _ in node.value):
                merges += 1
                clash = sorted(set(merged) & set(own))
                if clash:
                    fail(f"{label}: line {node.start_mark.line + 1}: merges keys it also has: {clash}")
                mdupes = sorted({k for k in merged if merged.count(k) > 1})
                if mdupes:
                    fail(f"{label}: line {node.start_mark.line + 1}: merges a key twice: {mdupes}")
            for k, v in node.value:
                walk(k)
                walk(v)
        elif isinstance(node, yaml.SequenceNode):
            for n in node.value:
                walk(n)

    walk(root)
    return merges


# ---------------------------------------------------------------- document checks


def pointer(document, ref):
    node = document
    for part in ref[2:].split("/") if ref != "#" else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(ref)
    return node


def check_refs(document, label):
    count = 0

    def walk(node, where):
        nonlocal count
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                count += 1
                if not ref.startswith("#"):
                    fail(f"{label}: {where}: $ref {ref} is not inside the document")
                else:
                    try:
                        pointer(document, ref)
                    except KeyError:
                        fail(f"{label}: {where}: $ref {ref} does not resolve")
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}/{i}")

    walk(document, "#")
    return count


def operations(document):
    for path, item in document.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def check_operation_ids(document, label):
    ids = [op.get("operationId") for _, _, op in operations(document)]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        fail(f"{label}: operationIds used twice: {dupes}")
    if None in ids:
        fail(f"{label}: an operation has no operationId")
    return ids


def strip_descriptions(node):
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def descriptions(node, where="#", out=None):
    out = {} if out is None else out
    if isinstance(node, dict):
        for k, v in node.items():
            here = f"{where}/{str(k).replace('~', '~0').replace('/', '~1')}"
            if k == "description" and isinstance(v, str):
                out[here] = v
            else:
                descriptions(v, here, out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            descriptions(v, f"{where}/{i}", out)
    return out


def first_difference(a, b, where="#"):
    if type(a) is not type(b):
        return f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{where}/{k}: only in the {'new' if k in b else 'base'} document"
            d = first_difference(a[k], b[k], f"{where}/{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{where}/{i}")
            if d:
                return d
        return None
    return None if a == b else f"{where}: {a!r} vs {b!r}"


def compare_with_base(old, new, loader):
    for part in ("paths", "components"):
        d = first_difference(strip_descriptions(old.get(part)), strip_descriptions(new.get(part)), f"#/{part}")
        if d:
            fail(f"{loader}: {part} differ from the base apart from descriptions, first at {d}")
    others = sorted((set(old) | set(new)) - {"paths", "components"})
    for key in others:
        a, b = old.get(key), new.get(key)
        if key.startswith("x-"):
            continue
        if key == "info":
            a = {k: v for k, v in (a or {}).items() if k != "description"}
            b = {k: v for k, v in (b or {}).items() if k != "description"}
        if a != b:
            fail(f"{loader}: top-level {key} differs from the base")
    old_ops = {(p, m): op for p, m, op in operations(old)}
    new_ops = {(p, m): op for p, m, op in operations(new)}
    if set(old_ops) != set(new_ops):
        fail(f"{loader}: operations differ: {sorted(set(old_ops) ^ set(new_ops))}")
    for key in sorted(set(old_ops) & set(new_ops)):
        a, b = old_ops[key], new_ops[key]
        if a.get("operationId") != b.get("operationId"):
            fail(f"{loader}: {key}: operationId {a.get('operationId')} became {b.get('operationId')}")
        if a.get("responses") != b.get("responses"):
            d = first_difference(a.get("responses"), b.get("responses"), f"{key[1].upper()} {key[0]} responses")
            fail(f"{loader}: {d}")
        success = lambda op: [c for c in op.get("responses", {}) if str(c).startswith("2")]  # noqa: E731
        if success(a) != success(b):
            fail(f"{loader}: {key}: 2xx codes {success(a)} became {success(b)}")


def schemathesis_responses(path):
    """Every operation's responses as schemathesis resolves them for a run."""
    import schemathesis

    schema = schemathesis.openapi.from_path(path)
    result = {}
    for item in schema.get_all_operations():
        if not hasattr(item, "ok"):
            fail(f"schemathesis cannot read an operation of {path}: {item.err()}")
            continue
        op = item.ok()
        responses = {}
        for code, response in op.responses.items():
            media = {m: response.get_schema(m).schema for m in (response.definition.get("content") or {})}
            responses[code] = (response.definition, media)
        result[op.definition.raw["operationId"]] = (op.label, list(op.responses.status_codes), responses)
    return result


# ---------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", default=SPEC, help="the spec to check (default: openapi/openapi.yaml)")
    parser.add_argument("--base", help="a git revision whose openapi/openapi.yaml the spec must equal (see above)")
    args = parser.parse_args()

    text = open(args.file, encoding="utf-8").read()
    print(f"{args.file}: {text.count(chr(10))} lines; nodes composed by {NODE_LOADER.__name__}")

    loaders = {"pyyaml": load_pyyaml, "yams-like": load_yams_like}
    try:
        import schemathesis  # noqa: F401

        loaders["schemathesis"] = load_schemathesis
    except ImportError:
        print("schemathesis is not installed: its loader is skipped (pip install 'schemathesis>=4,<5')")

    since = len(failures)
    merges = check_nodes(text, "spec")
    report(since, f"merge keys: {merges}; no key both merged and own, none repeated")

    since = len(failures)
    loaded = {name: load(text) for name, load in loaders.items()}
    reference = loaded["pyyaml"]
    for name, document in loaded.items():
        if name != "pyyaml" and document != reference:
            fail(f"{name} loads another document than yaml.safe_load: first at {first_difference(reference, document)}")
    report(since, f"loaders agree: {', '.join(loaded)}")

    since = len(failures)
    refs = check_refs(reference, "spec")
    ids = check_operation_ids(reference, "spec")
    report(since, f"$refs: {refs}, all resolve; operations: {len(ids)}, operationIds unique")

    if args.base:
        old_text = subprocess.run(
            ["git", "-C", ROOT, "show", f"{args.base}:openapi/openapi.yaml"], check=True, capture_output=True, text=True
        ).stdout
        print(f"base {args.base}: {old_text.count(chr(10))} lines")
        since = len(failures)
        for name, load in loaders.items():
            compare_with_base(load(old_text), loaded[name], name)
        report(
            since,
            f"paths and components equal the base's apart from descriptions, operations' responses"
            f" equal with theirs ({', '.join(loaders)})",
        )

        old_d, new_d = descriptions(load_pyyaml(old_text)), descriptions(reference)
        changed = sorted(k for k in set(old_d) | set(new_d) if old_d.get(k) != new_d.get(k))
        print(f"description fields that differ from the base: {len(changed)}")
        for k in changed:
            state = "removed" if k not in new_d else "added" if k not in old_d else "changed"
            size = f"{len(old_d.get(k, ''))} -> {len(new_d.get(k, ''))} characters"
            print(f"  {state:7} {k} ({size})")

        if "schemathesis" in loaders:
            import tempfile

            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
                f.write(old_text)
            since = len(failures)
            try:
                old_st, new_st = schemathesis_responses(f.name), schemathesis_responses(args.file)
            finally:
                os.unlink(f.name)
            if set(old_st) != set(new_st):
                fail(f"schemathesis: operations differ: {sorted(set(old_st) ^ set(new_st))}")
            for op_id in sorted(set(old_st) & set(new_st)):
                (label_a, codes_a, resp_a), (label_b, codes_b, resp_b) = old_st[op_id], new_st[op_id]
                if label_a != label_b or sorted(codes_a) != sorted(codes_b) or resp_a != resp_b:
                    fail(f"schemathesis: {op_id}: responses differ from the base")
            report(since, f"schemathesis: {len(new_st)} operations, each with the base's resolved responses")

    print("OK" if not failures else f"{len(failures)} FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

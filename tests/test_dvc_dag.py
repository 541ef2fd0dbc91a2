"""dvc.yaml against the code, without running anything: each stage's code deps are exactly its
stages/ module's import closure, and its params cover what that code reads of params.yaml.

A param read but not declared is a silent stale result (``dvc repro`` skips a needed rerun); a
param declared but never read is a needless rerun. The reads are found statically from the
stage's ``run`` (and what the CLI calls besides): every function reachable by calls that
resolve to cdae/ or stages/ code is scanned for attribute chains on config objects (arguments
annotated with a :mod:`cdae.config` dataclass, dataclass fields so annotated, and their local
aliases), mapped to params.yaml key paths through the dataclasses' fields.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import shutil
import subprocess
import typing
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from cdae import config as cfg

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cdae", "stages")

# Reads the static scan cannot see or must not follow, each with its reason.
ENTRY_POINTS = {  # what `cdae <stage>` (dvc.yaml's cmd) calls, beyond stages.<stage>.run
    "intervene": ("run", "write_skipped"),  # --skip-foreign on another profile's intervention
}
CLI_READS = {  # cdae/cli.py resolves `--name X` through the listed interventions
    "intervene": {"intervene.interventions"},
}
STORED_UNREAD = {  # a section kept whole on an object, whose keys the stage never reads
    # CounterfactualEngine.defaults: read by counterfactual() alone, which no stage calls
    (("cdae.counterfactual", "CounterfactualEngine.for_params"), "intervene"),
}
NOT_FOLLOWED = {  # its config object is the checkpoint's (a model.pt dep), not params.yaml's
    ("cdae.counterfactual", "CounterfactualEngine.load"),
}
ALWAYS = {"profile", "profiles"}  # every stage resolves its params through the active profile


def dvc_stages() -> dict[str, dict]:
    """Stage name -> definition (a foreach stage's ``do`` template)."""
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: (body["do"] if "do" in body else body) for name, body in raw.items()}


def stage_module(name: str, body: dict) -> str:
    cmd = body["cmd"].split()
    assert cmd[:2] == ["cdae", name], f"{name}: cmd {body['cmd']!r} is not `cdae {name}`"
    return "stages." + name.replace("-", "_")


def module_file(mod: str) -> Path | None:
    p = ROOT / (mod.replace(".", "/") + ".py")
    return p if p.is_file() else None


@lru_cache(maxsize=None)
def parsed(mod: str) -> ast.Module:
    return ast.parse(module_file(mod).read_text())  # type: ignore[union-attr]


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _walk_runtime(tree: ast.AST):
    """ast.walk without the bodies of ``if TYPE_CHECKING:`` (imports that never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def imported_modules(mod: str) -> set[str]:
    """cdae/stages modules ``mod`` imports at run time (module level or in functions)."""
    out = set()
    for node in _walk_runtime(parsed(mod)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n.split(".")[0] in PACKAGES and module_file(n)}
    return out


def import_closure(mod: str) -> set[str]:
    seen, todo = set(), [mod]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += imported_modules(m)
    return seen


# ------------------------------------------------------------------ params: the static scan

def is_section(tp: typing.Any) -> bool:
    """A params section: a dataclass of cdae.config (the graph is one setting, read whole)."""
    return dataclasses.is_dataclass(tp) and getattr(tp, "__module__", "") == cfg.__name__


def _sections() -> dict[str, str]:
    """Config dataclass name -> its key path ("" for Params itself)."""
    out = {"Params": ""}

    def walk(cls: type, prefix: str) -> None:
        for name, tp in typing.get_type_hints(cls).items():
            if is_section(tp):
                out[tp.__name__] = prefix + name
                walk(tp, prefix + name + ".")

    walk(cfg.Params, "")
    return out


SECTIONS = _sections()


def key_path(section: str, attrs: list[str]) -> str | None:
    """The params.yaml key path of ``section`` followed by ``attrs`` (as far as they are config
    fields); None when the chain names a whole section (a use, not a read)."""
    cls: typing.Any = cfg.Params
    for part in section.split(".") if section else []:
        cls = typing.get_type_hints(cls)[part]
    path = section
    for a in attrs:
        hints = typing.get_type_hints(cls) if is_section(cls) else {}
        if a not in hints:
            if is_section(cls) and hasattr(cls, a):  # a method or property of the section:
                return path  # it may read any of its keys
            break
        path = f"{path}.{a}" if path else a
        cls = hints[a]
    return None if is_section(cls) else path


def section_path(section: str, attrs: list[str]) -> str | None:
    """The key path of the section that ``section`` followed by ``attrs`` names, None when the
    chain does not end at a config section."""
    cls: typing.Any = cfg.Params
    for part in section.split(".") if section else []:
        cls = typing.get_type_hints(cls)[part]
    for a in attrs:
        hints = typing.get_type_hints(cls) if is_section(cls) else {}
        if a not in hints:
            return None
        cls = hints[a]
    return ".".join(x for x in [section, *attrs] if x) if is_section(cls) else None


def _annotation_section(node: ast.AST | None) -> str | None:
    for sub in ast.walk(node) if node is not None else ():
        name = sub.attr if isinstance(sub, ast.Attribute) else getattr(sub, "id", None)
        if name in SECTIONS:
            return SECTIONS[name]
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            words = sub.value.replace("cfg.", "").split()
            if words and words[0] in SECTIONS:
                return SECTIONS[words[0]]
    return None


def _chain(node: ast.AST) -> tuple[str | None, list[str]]:
    attrs: list[str] = []
    while isinstance(node, ast.Attribute):
        attrs.insert(0, node.attr)
        node = node.value
    return (node.id if isinstance(node, ast.Name) else None), attrs


@lru_cache(maxsize=None)
def index() -> tuple[dict, dict, dict, set]:
    """(functions by (module, qualname), methods by name, config-typed dataclass fields, the
    classes that hold them)."""
    funcs: dict[tuple[str, str], ast.FunctionDef] = {}
    methods: dict[str, list[tuple[str, str]]] = {}
    fields: dict[str, str] = {}
    holders: set[str] = set()  # classes with such fields (their reads are tracked by field)
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).glob("*.py")):
            mod = f"{pkg}.{f.stem}"
            for node in parsed(mod).body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    funcs[(mod, node.name)] = node
                elif isinstance(node, ast.ClassDef):
                    for item in node.body:
                        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                            funcs[(mod, f"{node.name}.{item.name}")] = item
                            methods.setdefault(item.name, []).append(
                                (mod, f"{node.name}.{item.name}"))
                        elif (mod != cfg.__name__  # the sections' own fields are key paths
                              and isinstance(item, ast.AnnAssign)
                              and isinstance(item.target, ast.Name)
                              and _annotation_section(item.annotation) is not None):
                            fields[item.target.id] = _annotation_section(item.annotation)
                            holders.add(node.name)
    return funcs, methods, fields, holders


@lru_cache(maxsize=None)
def _imports_of(mod: str) -> dict[str, str]:
    """Local name -> 'module' or 'module:attr' for every import in ``mod``."""
    out = {}
    for node in _walk_runtime(parsed(mod)):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out[a.asname or a.name] = full if module_file(full) else f"{node.module}:{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name] = a.name
    return out


def _callees(mod: str, qual: str, call: ast.Call) -> list[tuple[str, str]]:
    funcs, methods, _, _ = index()
    imports = _imports_of(mod)
    cls = qual.split(".")[0] if "." in qual else None
    f = call.func
    found: list[tuple[str, str]] = []
    if isinstance(f, ast.Name):
        target = (mod, f.id) if {(mod, f.id), (mod, f"{f.id}.__init__")} & funcs.keys() else None
        if target is None and ":" in imports.get(f.id, ""):
            m, a = imports[f.id].split(":")
            target = (m, a)
        if target is not None:
            found = [target] if target in funcs else [(target[0], f"{target[1]}.__init__")]
    elif isinstance(f, ast.Attribute):
        base = f.value
        if isinstance(base, ast.Name) and base.id in ("self", "cls") and cls:
            found = [(mod, f"{cls}.{f.attr}")]
        elif isinstance(base, ast.Name) and base.id in imports and ":" not in imports[base.id]:
            found = [(imports[base.id], f.attr)]  # module.function
        elif isinstance(base, ast.Name) and ":" in imports.get(base.id, ""):
            m, a = imports[base.id].split(":")
            found = [(m, f"{a}.{f.attr}")]  # Class.method
        elif isinstance(base, ast.Name) and (mod, f"{base.id}.{f.attr}") in funcs:
            found = [(mod, f"{base.id}.{f.attr}")]
        elif not isinstance(base, ast.Call) and not f.attr.startswith("__"):
            found = methods.get(f.attr, [])  # a method of an object of unknown class
    return [t for t in found if t in funcs]


def reads_of(mod: str, entries: tuple[str, ...]) -> set[str]:
    """params.yaml key paths read by ``mod``'s ``entries`` and everything they call."""
    funcs, _, fields, holders = index()
    reads: set[str] = set()
    seen: set[tuple[str, str]] = set()
    todo = [(mod, e) for e in entries]
    while todo:
        key = todo.pop()
        if key in seen or key in NOT_FOLLOWED:
            continue
        seen.add(key)
        m, qual = key
        fn = funcs[key]
        bound: dict[str, str] = {}
        for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]:
            sec = _annotation_section(a.annotation)
            if sec is not None:
                bound[a.arg] = sec

        def section_of(expr: ast.AST) -> str | None:
            if isinstance(expr, ast.Call) and _chain(expr.func)[1][-1:] == ["override"]:
                expr = expr.args[0]  # cfg.override(section, ...) -> that section, re-validated
            root, attrs = _chain(expr)
            if root in bound:
                start = bound[root]
            elif attrs and attrs[0] in fields:  # x.ip: a dataclass field of a config type
                start, attrs = fields[attrs[0]], attrs[1:]
            else:
                return None
            return section_path(start, attrs)

        for _ in range(3):  # local aliases: ep = params.evaluate; engine, ip = s.engine, s.ip
            for node in ast.walk(fn):
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    t, v = node.targets[0], node.value
                    pairs = (zip(t.elts, v.elts) if isinstance(t, ast.Tuple)
                             and isinstance(v, ast.Tuple) else [(t, v)])
                    for tt, vv in pairs:
                        sec = section_of(vv)
                        if isinstance(tt, ast.Name) and sec is not None:
                            bound[tt.id] = sec
        parents = {c: p for p in ast.walk(fn) for c in ast.iter_child_nodes(p)}

        def passed_on(node: ast.AST) -> bool:
            """A whole section handed to code whose reads are followed (or only copied)."""
            parent = parents.get(node)
            if isinstance(parent, ast.keyword):
                parent = parents.get(parent)
            if isinstance(parent, (ast.Assign, ast.Tuple)):
                return True  # a local alias (tracked above)
            if not isinstance(parent, ast.Call) or parent.func is node:
                return False
            called = _chain(parent.func)
            return bool(_callees(m, qual, parent)) or called[1][-1:] == ["override"] or (
                not called[1] and called[0] in holders)

        for node in ast.walk(fn):
            if isinstance(node, ast.Call):
                todo += _callees(m, qual, node)
            if isinstance(parents.get(node), ast.Attribute) or not isinstance(
                    node, (ast.Attribute, ast.Name)) or isinstance(node.ctx, ast.Store):
                continue
            whole = section_of(node)
            if whole is not None:
                if not passed_on(node) and (key, whole) not in STORED_UNREAD:
                    reads.add(whole or "*")  # "*": all of params, handed to unknown code
                continue
            if not isinstance(node, ast.Attribute):
                continue
            root, attrs = _chain(node)
            if root in bound:
                path = key_path(bound[root], attrs)
            elif attrs and attrs[0] in fields:
                path = key_path(fields[attrs[0]], attrs[1:])
            else:
                continue
            if path is not None and path != bound.get(root):
                reads.add(path)
    return reads


def declared(body: dict) -> set[str]:
    return {str(p).split(".${")[0] for p in body.get("params", [])}


def covered(read: str, keys: set[str]) -> bool:
    return any(read == k or read.startswith(k + ".") for k in keys)


STAGES = dvc_stages()


@pytest.mark.parametrize("name", list(STAGES))
def test_code_deps_are_the_import_closure(name: str) -> None:
    body = STAGES[name]
    mod = stage_module(name, body)
    need = {str(module_file(m).relative_to(ROOT)) for m in import_closure(mod)  # type: ignore
            if module_file(m).name != "__init__.py"}  # type: ignore[union-attr]
    have = {d for d in body["deps"] if d.endswith(".py")}
    assert not need - have, f"{name}: code it imports is not a dep: {sorted(need - have)}"
    assert not have - need, f"{name}: code deps it never imports: {sorted(have - need)}"


@pytest.mark.parametrize("name", list(STAGES))
def test_params_cover_the_reads(name: str) -> None:
    body = STAGES[name]
    mod = stage_module(name, body)
    reads = reads_of(mod, ENTRY_POINTS.get(name, ("run",))) | CLI_READS.get(name, set())
    keys = declared(body)
    assert ALWAYS <= keys, f"{name}: declares no {sorted(ALWAYS - keys)}"
    missing = sorted(r for r in reads if not r.startswith("paths.") and not covered(r, keys))
    assert not missing, f"{name} reads params it does not declare: {missing}"
    unread = sorted(k for k in keys - ALWAYS if not k.startswith("paths.")
                    and not any(covered(r, {k}) or covered(k, {r}) for r in reads))
    assert not unread, f"{name} declares params it never reads: {unread}"
    where = " ".join(str(x) for x in [*body.get("deps", []), *body.get("outs", []),
                                      *body.get("metrics", []), *body.get("plots", [])])
    paths = sorted(r for r in reads if r.startswith("paths.") and "${" + r + "}" not in where)
    assert not paths, f"{name} reads or writes {paths}, which its deps and outs do not name"


def test_declared_params_exist() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, body in STAGES.items():
        for key in declared(body):
            node = raw
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{name}: no {key} in params.yaml"
                node = node[part]


def test_scan_sees_reads_through_calls_and_aliases() -> None:
    """The scan itself: the engine's sampling settings (a section passed on), an override
    alias, a dataclass field of a config type, and nothing of the checkpoint's params."""
    reads = reads_of("stages.encode_latents", ("run",))
    assert {"diffusion.solver", "diffusion.spacing", "diffusion.inversion_iters", "device",
            "encode.steps", "intervene.t0", "paths.latents"} <= reads
    assert not any(r.startswith(("model", "train")) for r in reads), reads
    assert "intervene.guidance" in reads_of("stages.intervene", ("run",))
    assert "model.latent_dim" in reads_of("stages.train", ("run",))


def _outputs(body: dict) -> list[tuple[str, dict]]:
    """(path, options) of every out, metric and plot a stage declares."""
    out = []
    for kind in ("outs", "metrics", "plots"):
        for item in body.get(kind, []):
            path, opts = next(iter(item.items())) if isinstance(item, dict) else (item, {})
            out.append((str(path), opts or {}))
    return out


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs the git checkout")
@pytest.mark.parametrize("name", list(STAGES))
def test_outputs_live_in_the_dvc_cache_not_in_git(name: str) -> None:
    """Stage outputs never go into git (.gitignore), so each must be in DVC's cache: an output
    that is both git-ignored and `cache: false` is lost to every other revision (`dvc exp show`
    printed `!` for every experiment's metrics)."""
    paths = yaml.safe_load((ROOT / "params.yaml").read_text())["paths"]
    key = "${key}"  # a foreach stage's outputs: one of its keys
    for path, opts in _outputs(STAGES[name]):
        resolved = re.sub(r"\$\{paths\.(\w+)\}", lambda m: str(paths[m.group(1)]), path)
        resolved = resolved.replace(key, "example")
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", resolved],
                                 cwd=ROOT).returncode == 0
        assert ignored, f"{name}: output {resolved} is not git-ignored (outputs never go in git)"
        assert opts.get("cache", True), f"{name}: output {resolved} is git-ignored and not cached"


def test_a_method_of_a_section_reads_the_whole_section(monkeypatch: pytest.MonkeyPatch) -> None:
    """`params.evaluate.some_method()` may read any key of evaluate: the scan counts the whole
    section as read (it once missed `evaluate.floors` read through such a method)."""
    monkeypatch.setattr(cfg.EvaluateParams, "floors_parsed", lambda self: {}, raising=False)
    assert key_path("evaluate", ["floors_parsed"]) == "evaluate"
    assert key_path("evaluate", ["floors"]) == "evaluate.floors"
    assert key_path("", ["evaluate"]) is None  # the section itself: a use, followed elsewhere

"""The probe protocol: registry, the one spec reader/validator, spec search paths, --option parsing. Fast, no model
except the two CLI runs (clipkit-nano, a few items)."""
import ast
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from clipkit.probes import KINDS, ProbeSpec, SpecError, known_specs, load_spec, parse_option, run_any
from clipkit.probes.protocol import SPECS_DIR, Kind

KIND_MODULES = ("binding", "counting", "finegrained", "jsonl", "shift", "shift_folders", "spatial")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_every_registered_kind_has_a_spec_in_the_package():
    shipped = {yaml.safe_load(p.read_text())["kind"] for p in SPECS_DIR.glob("*.yaml")}
    assert set(KINDS) <= shipped, f"kinds without a shipped spec: {sorted(set(KINDS) - shipped)}"
    assert {"counting", "spatial", "binding", "jsonl", "finegrained", "shift", "folder_shift"} <= set(KINDS)


def test_no_kind_module_imports_another_kind():
    import importlib
    modules = {(k.items or k.run).__module__ for k in KINDS.values()}   # where each kind is defined
    assert {f"clipkit.probes.{m}" for m in KIND_MODULES} <= modules
    for name in modules:
        tree = ast.parse(Path(importlib.import_module(name).__file__).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not imported & (modules - {name}), f"{name} imports kind module(s) {sorted(imported & modules)}"


@pytest.mark.parametrize("text, match", [
    ("name: x\nkind: counting\ncolour: red\n", r"unknown key\(s\) \['colour'\].*known: \['name', 'kind', 'n'"),
    ("name: x\nkind: counting\noptions: {countz: [1]}\n",
     r"unknown option\(s\) \['countz'\] for kind 'counting' \(did you mean 'counts'\?\); known: \['counts'"),
    ("name: x\nkind: counting\nn: ten\n", r"key 'n' must be int or null, got 'ten'"),
    ("name: x\nkind: counting\nseed: true\n", r"key 'seed' must be int, got True"),
    ("name: x\nkind: counting\noptions: {image_size: 7.5}\n", r"option 'image_size' must be int, got 7.5"),
    ("name: x\nkind: spatial\noptions: {relations: left of}\n", r"option 'relations' must be list"),
    ("name: x\nkind: countin\n", r"unknown kind 'countin' \(did you mean 'counting'\?\); known kinds: \[.*'shift'"),
    ("name: x\nfamily: counting\n", r"top-level 'family:' is now 'kind:' \(write kind: counting\)"),
    ("name: x\n", r"missing required key 'kind'"),
    ("name: x\nkind: counting\noptions: [1, 2]\n", r"'options' must be a mapping"),
    ("- just a list\n", r"a probe spec is a mapping"),
])
def test_errors_name_the_file_the_key_and_the_known_keys(tmp_path, text, match):
    path = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(SpecError, match=match) as e:
        load_spec(path)
    assert str(e.value).startswith(f"{path}: ")


def test_a_float_option_accepts_an_int_and_a_bool_is_not_an_int():
    s = load_spec({"name": "j", "kind": "jsonl", "options": {"max_bad_fraction": 1}})
    assert s.options.max_bad_fraction == 1 and s.n == 200        # the kind's default n
    with pytest.raises(SpecError, match="option 'image_size' must be int, got True"):
        load_spec({"name": "c", "kind": "counting", "options": {"image_size": True}})


@pytest.mark.parametrize("text, expected", [
    ("image_size=96", ("image_size", 96)),
    ("counts=[1, 2, 3]", ("counts", [1, 2, 3])),
    ("flag=true", ("flag", True)),
    ("root=null", ("root", None)),
    ("mode=swap", ("mode", "swap")),
    ("template=a photo of {}", ("template", "a photo of {}")),   # not YAML: kept as text
    (" max_bad_fraction = 0.5", ("max_bad_fraction", 0.5)),
])
def test_parse_option_reads_the_value_as_yaml(text, expected):
    assert parse_option(text) == expected


def test_parse_option_needs_key_equals_value():
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        parse_option("counts")


def test_options_are_typed_by_the_kinds_dataclass(monkeypatch):
    @dataclass
    class ToyOptions:
        flag: bool = False        # a bool field: only true/false fit
        limit: int | None = 3     # null allowed
        names: list = None

    monkeypatch.setitem(KINDS, "toy", Kind("toy", ToyOptions, run=lambda *a, **k: None))
    opts = dict(parse_option(t) for t in ("flag=true", "limit=null", "names=[a, b]"))
    s = load_spec({"name": "t", "kind": "toy"}, options=opts)
    assert (s.options.flag, s.options.limit, s.options.names) == (True, None, ["a", "b"])
    for text, match in (("flag=1", "option 'flag' must be bool, got 1"), ("limit=x", "'limit' must be int or null"),
                        ("colour=red", r"unknown option\(s\) \['colour'\] for kind 'toy'; known: \['flag', 'limit'")):
        with pytest.raises(SpecError, match=match):
            load_spec({"name": "t", "kind": "toy"}, options=dict([parse_option(text)]))


def test_overrides_merge_into_the_spec():
    s = load_spec("counting", n=12, seed=3, options={"counts": [1, 2]})
    assert (s.n, s.seed, s.options.counts, s.options.size_modes) == (12, 3, [1, 2], ["random"])
    assert load_spec(s) == s                                        # a ProbeSpec reads back to itself
    with pytest.raises(SpecError, match="'n' must be >= 1"):
        load_spec("counting", n=0)


def test_a_spec_name_with_a_typo_gets_a_suggestion():
    with pytest.raises(SpecError, match=r"unknown probe spec 'countng' \(did you mean 'counting'\?\); known: \["):
        load_spec("countng")


def test_clipkit_probes_folders_are_searched_before_the_package(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a / "mine.yaml", "name: mine\nkind: binding\nn: 4\n")
    _write(b / "counting.yaml", "name: counting\nkind: counting\nn: 5\noptions: {counts: [2, 3]}\n")
    monkeypatch.setenv("CLIPKIT_PROBES", f"{a}{__import__('os').pathsep}{b}")
    assert load_spec("mine").n == 4 and known_specs()["mine"] == a / "mine.yaml"
    assert load_spec("counting").options.counts == [2, 3]        # the user's folder wins over the package
    assert "spatial" in known_specs()                             # the package's specs are still found
    monkeypatch.delenv("CLIPKIT_PROBES")
    with pytest.raises(SpecError, match="unknown probe spec 'mine'.*CLIPKIT_PROBES"):
        load_spec("mine")


def test_a_path_finds_a_spec_anywhere(tmp_path, monkeypatch):
    path = _write(tmp_path / "deep" / "er" / "anywhere.yml", "name: anywhere\nkind: spatial\nn: 6\n")
    monkeypatch.chdir(tmp_path)
    assert load_spec(path).name == "anywhere"
    assert load_spec("deep/er/anywhere.yml").n == 6              # a relative path: has a separator
    with pytest.raises(SpecError, match="probe spec file .*nope.yaml not found"):
        load_spec("nope.yaml")


def test_run_any_dispatches_on_the_kind(monkeypatch):
    seen = []
    monkeypatch.setitem(KINDS, "counting", Kind("counting", KINDS["counting"].options_cls,
                                                run=lambda spec, *a, model_name="": seen.append((spec.kind, model_name))))
    run_any("counting", None, None, None, model_name="m")
    assert seen == [("counting", "m")]


def test_cli_option_overrides_and_unknown_option_is_one_line(capsys):
    from clipkit.cli import main
    assert main(["probe", "--probe", "counting", "--model", "clipkit-nano", "--n", "8",
                 "--option", "counts=[1, 2]", "--option", "image_size=48"]) == 0
    out = capsys.readouterr().out
    assert "counting" in out and "chance 0.500 n 8" in out       # two candidate counts: chance 1/2
    assert main(["probe", "--probe", "counting", "--model", "clipkit-nano", "--option", "countz=3"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown option(s) ['countz'] for kind 'counting'" in err
    assert "known: ['counts', 'size_modes', 'image_size', 'template']" in err


def test_shipped_specs_have_the_new_shape():
    for p in sorted(SPECS_DIR.glob("*.yaml")):
        d = yaml.safe_load(p.read_text())
        assert d["name"] == p.stem and d["kind"] in KINDS and "family" not in d, p
        assert set(d) <= {f for f in ProbeSpec.__dataclass_fields__}, p


def test_cli_help_lists_each_kinds_options_from_its_dataclass(capsys):
    from clipkit.cli import probe_main
    from clipkit.probes.protocol import option_defaults
    with pytest.raises(SystemExit):
        probe_main(["--help"])
    out = capsys.readouterr().out
    assert "$CLIPKIT_PROBES" in out and "YAML path" in out and "--kinds" in out
    probe_main(["--kinds"])          # --help stays fast; --kinds loads the registry and lists every kind's options
    out = capsys.readouterr().out
    assert "  counting: counts=[1, 2, 3, 4, 5, 6], size_modes=['random'], image_size=72, template='{}'" in out
    assert "allow_outside_root=False" in out
    assert option_defaults("shift")["severities"] == [1, 3, 5] and set(option_defaults("spatial")) == {
        "relations", "mode", "image_size", "template"}

"""Every stage default is declared once, in the stage's options model: the CLI's flags, the pipeline config's
sections and the libraries' keyword defaults must all agree with it (a second, different default fails here)."""

from __future__ import annotations

import inspect
import re

import click
import pytest
import typer

from qscope_data.cli import app
from qscope_data.config import PipelineConfig
from qscope_data.coverage.gaps import GapsOptions, compute_gaps
from qscope_data.coverage.inventory import InventoryOptions, select_features
from qscope_data.cli.params import fields_of
from qscope_data.curate.curate import CurateInputs, CurateOptions
from qscope_data.encode_options import EncodeOptions, RayOptions
from qscope_data.rules.mine import MineOptions
from qscope_data.rules.score import ScoreOptions, evaluate_store
from qscope_data.synth.nearcopy import NearCopyOptions
from qscope_data.synth.options import SynthInputs, SynthOptions

# command path → its stage's options model; flag parameter names that differ from the field's name
STAGE_COMMANDS = {
    ("encode",): EncodeOptions,
    ("score",): ScoreOptions,
    ("rules", "mine"): MineOptions,
    ("rules", "select-layer"): MineOptions,
    ("features", "select"): InventoryOptions,
    ("gaps",): GapsOptions,
    ("synth",): SynthOptions,
    ("curate",): CurateOptions,
}
RENAMED = {"heldout": "heldout_fraction", "validation": "validation_fraction", "fmt": "format", "license_": "license",
           "near_dup": "near_duplicate_threshold", "benign": "benign_categories"}
# options of a command that belong to further models, looked up in order (the encode command's Ray executor flags;
# synth's and curate's inputs, whose defaults are the flags' too; synth's near-copy flags), with their renames
SECOND_MODEL = {("encode",): [(RayOptions, {"ray_address": "address"})],
                ("synth",): [(SynthInputs, {}),
                             (NearCopyOptions, {"near_copy_jaccard": "jaccard", "near_copy_containment": "containment"})],
                ("curate",): [(CurateInputs, {})]}


def _command(path: tuple[str, ...]) -> click.Command:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def _as_flag(value):
    """A model default in the form its flag takes (lists are comma-separated text on the command line)."""
    return ",".join(value) if isinstance(value, list) else value


def _field(path: tuple[str, ...], param: click.Parameter) -> tuple[type, str] | None:
    """The options model field with a default that a command's parameter sets (None: a parameter of the command
    alone, or a required field such as a path)."""
    name = RENAMED.get(param.name, param.name)
    for model, renamed in [(STAGE_COMMANDS[path], {}), *SECOND_MODEL.get(path, [])]:
        field = renamed.get(name, name)
        if field in fields_of(model):
            return None if fields_of(model)[field].is_required() else (model, field)
    return None


@pytest.mark.parametrize("path", list(STAGE_COMMANDS), ids=" ".join)
def test_cli_defaults_are_the_options_models(path):
    compared = 0
    for param in _command(path).params:
        if (found := _field(path, param)) is None:
            continue
        model, field = found
        expected = fields_of(model)[field].get_default(call_default_factory=True)
        want = expected if getattr(param, "multiple", False) else _as_flag(expected)  # a repeatable flag: a list
        assert param.default == want, f"qscope {' '.join(path)} --{param.name}: {param.default!r} vs {model.__name__}.{field} = {expected!r}"
        compared += 1
    assert compared >= min(3, len(STAGE_COMMANDS[path].model_fields)), f"qscope {' '.join(path)} shares almost no options with {STAGE_COMMANDS[path].__name__}"


def _function(path: tuple[str, ...]):
    """The Python function behind a command (its parameters' defaults are the `typer.Option` declarations)."""
    command = _command(path)
    return getattr(command.callback, "__wrapped__", command.callback)


@pytest.mark.parametrize("path", list(STAGE_COMMANDS), ids=" ".join)
def test_flags_of_model_fields_are_declared_from_the_model(path):
    """Equal is not enough: a flag that sets an options field must take its default through `cli/params.option`,
    so that changing the model changes the flag (a literal copy agrees only until then)."""
    declared = inspect.signature(_function(path)).parameters
    by_name = {p.name: p for p in _command(path).params}
    for name, param in declared.items():
        if name not in by_name or (found := _field(path, by_name[name])) is None:
            continue
        source = getattr(param.default, "model_field", None)
        assert source is not None and source[1] == found[1] and issubclass(found[0], source[0]), (
            f"qscope {' '.join(path)} --{name}: default written in the command, not taken from {found[0].__name__}.{found[1]}")


@pytest.mark.parametrize("path", list(STAGE_COMMANDS), ids=" ".join)
def test_help_does_not_restate_a_default(path):
    """A default written into a flag's help text is a second declaration that goes stale when the model changes
    (typer shows the model's own default beside the help)."""
    for param in _command(path).params:
        found, text = _field(path, param), getattr(param, "help", None) or ""
        if found is None or not text:
            continue
        model, field = found
        default = _as_flag(fields_of(model)[field].get_default(call_default_factory=True))
        if default is None or isinstance(default, bool) or default == "":
            continue
        restated = re.search(rf"default:?\s+{re.escape(str(default))}(?![\w.])", text)
        assert not restated, f"qscope {' '.join(path)} --{param.name}: help restates {model.__name__}.{field} = {default!r}"


@pytest.mark.parametrize("section, model", [("score", ScoreOptions), ("inventory", InventoryOptions), ("gaps", GapsOptions),
                                            ("synth", SynthOptions), ("curate", CurateOptions)])
def test_pipeline_sections_are_the_options_models(section, model):
    annotation = PipelineConfig.model_fields[section].annotation
    classes = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
    assert any(issubclass(c, model) for c in classes), f"PipelineConfig.{section} is not (a subclass of) {model.__name__}"
    for cls in classes:
        for name, field in getattr(cls, "model_fields", {}).items():
            if name in model.model_fields:
                assert field.get_default(call_default_factory=True) == model.model_fields[name].get_default(
                    call_default_factory=True), f"{section}.{name} redeclares its default"


def test_mine_section_is_the_mine_options():
    from qscope_data.config import RulesConfig

    section = [a for a in RulesConfig.model_fields["mine"].annotation.__args__ if isinstance(a, type)][0]
    assert issubclass(section, MineOptions)
    assert section.model_fields["top"].default == MineOptions.model_fields["top"].default == 10


@pytest.mark.parametrize("function, model, renamed", [
    (select_features, InventoryOptions, {"n_examples": "examples"}),
    (compute_gaps, GapsOptions, {"n_examples": "examples"}),
    (evaluate_store, ScoreOptions, {}),
])
def test_library_keyword_defaults_are_the_options_models(function, model, renamed):
    defaults = model()
    checked = 0
    for name, param in inspect.signature(function).parameters.items():
        field = renamed.get(name, name)
        if field in model.model_fields and param.default is not inspect.Parameter.empty:
            assert param.default == getattr(defaults, field), f"{function.__name__}({name}=…) disagrees with {model.__name__}"
            checked += 1
    assert checked >= min(2, len(model.model_fields))


@pytest.mark.parametrize("section, model, renamed", [
    ("corpora", EncodeOptions, {}), ("encode", EncodeOptions, {}), ("encode", RayOptions, {"ray_address": "address"}),
])
def test_encode_sections_refer_to_the_encode_options(section, model, renamed):
    from qscope_data.config import CorpusConfig, EncodeConfig

    cls = CorpusConfig if section == "corpora" else EncodeConfig
    checked = 0
    for name, field in cls.model_fields.items():
        target = renamed.get(name, name)
        if target in model.model_fields:
            theirs = model.model_fields[target]
            assert field.get_default(call_default_factory=True) == theirs.get_default(call_default_factory=True), name
            assert field.metadata == theirs.metadata, f"{section}.{name}: constraints differ from {model.__name__}"
            checked += 1
    assert checked >= 2

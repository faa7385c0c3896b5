"""The CLI is a thin table: instant --help (no torch import), one command per stage, clear param errors."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from genrec.cli import main


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from genrec.cli import main\n"
        "result = CliRunner().invoke(main, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'mlflow', 'great_expectations', 'pandas')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_stage_command_has_help():
    """Each command of the group (whatever is registered) prints its help with every one of its options."""
    import click

    runner = CliRunner()
    assert len(main.commands) >= 12
    for name, command in main.commands.items():
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, f"{name}: {result.output}"
        options = [opt for p in command.params if isinstance(p, click.Option) and not p.hidden for opt in p.opts]
        missing = [opt for opt in options if opt not in result.output]
        assert not missing, f"`genrec {name} --help` does not show {missing}"
        if name not in ("preset", "seeds"):  # print params overrides / aggregate metrics files: read no params
            assert "--set" in result.output and "--params" in result.output, name


def test_bad_override_is_a_usage_error_naming_the_key(tmp_path):
    (tmp_path / "interim").mkdir()
    result = CliRunner().invoke(main, [
        "split", "--params", "params.yaml", "--set", "split.user_core=0",
        "--interim", str(tmp_path / "interim"), "--out", str(tmp_path / "out"),
        "--report", str(tmp_path / "rep"), "--metrics", str(tmp_path / "m.json"),
    ])
    assert result.exit_code == 2
    assert "split.user_core" in result.output
    assert not (tmp_path / "out").exists()


def test_a_badly_typed_override_exits_2_with_one_line_naming_the_key(tmp_path):
    """`--set prompts.seed=abc` is refused before the stage runs: exit 2, one error line, no traceback."""
    (tmp_path / "processed").mkdir()
    result = CliRunner().invoke(main, [
        "prompts", "--processed", str(tmp_path / "processed"), "--out", str(tmp_path / "out"),
        "--set", "prompts.seed=abc",
    ])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: params.yaml: prompts.seed: expected an integer, got 'abc'"], result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert not (tmp_path / "out").exists()


def test_a_params_file_with_a_yaml_syntax_error_exits_2_naming_the_line(tmp_path):
    (tmp_path / "processed").mkdir()
    (tmp_path / "params.yaml").write_text("split:\n  user_core: [5\n")
    result = CliRunner().invoke(main, [
        "prompts", "--params", str(tmp_path / "params.yaml"), "--processed", str(tmp_path / "processed"),
        "--out", str(tmp_path / "out"),
    ])
    assert result.exit_code == 2, result.output
    assert f"Error: {tmp_path / 'params.yaml'}, line 3: not valid YAML" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


def test_every_model_command_comes_from_the_model_table():
    """The CLI builds each model's commands from genrec.models.table: a stage module per command, and each
    declared path option shown."""
    import importlib

    from genrec.cli import OPTIONS, stage_command
    from genrec.models.table import MODELS, Command

    for entry in MODELS.values():
        for command in entry.commands:
            assert command.name in main.commands, command.name
            assert callable(importlib.import_module(f"genrec.stages.{command.name}").run)
    new = stage_command("itemknn", "Item-kNN.", Command("itemknn", "", ("processed", "results")).options)
    flags = {opt for p in new.params for opt in p.opts}
    assert {"--params", "--set", "--processed", "--metrics", "--predictions"} <= flags
    assert set(OPTIONS) >= {o for e in MODELS.values() for c in e.commands for o in c.options}

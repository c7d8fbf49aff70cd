"""The extra commands on jsonargparse (finlight/commands.py): --help, --print_config, settings files, the
argparse-style flags they kept, and one-line errors."""

import pytest
import yaml

from finlight.cli import main
from finlight.commands import run_command

# each extra command with enough arguments to parse, and the option that reads its settings file
COMMANDS = {
    "export": (["--ckpt_path", "a.ckpt", "--output_dir", "out", "--merged"], "--config"),
    "export-onnx": (["--ckpt_path", "a.ckpt", "--output_dir", "out", "--no_optimize", "--int8", "--atol", "1e-3"],
                    "--config"),
    "quantize": (["--model_dir", "m", "--method", "gptq4", "--output_dir", "q", "--config", "train.yaml"], "--settings"),
    "pseudo-label": (["--teacher", "t", "--input", "a.txt", "b/", "--input", "c.csv", "--output", "o.jsonl",
                      "--no_progress_bar", "--label_names", "neg", "pos"], "--config"),
    "report": (["logs/a", "logs/b", "--metrics", "test/acc", "--resamples", "500"], "--config"),
    "seeds": (["--config", "a.yaml", "--config", "b.yaml", "--seeds", "1", "2", "--select", "last"], "--settings"),
}


def printed(argv, capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_names_the_command_and_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m finlight {command}") and "--print_config" in out
    args, settings = COMMANDS[command]
    assert settings in out
    for option in (a for a in args if a.startswith("--")):
        assert option in out, option


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_print_config_reads_back_through_the_settings_file(command, in_tmp, capsys):
    args, settings = COMMANDS[command]
    first = printed([command, *args, "--print_config"], capsys)
    (in_tmp / "settings.yaml").write_text(yaml.safe_dump(first))
    assert printed([command, settings, "settings.yaml", "--print_config"], capsys) == first


def test_the_kept_flags_parse_as_argparse_did(in_tmp, capsys):
    seen = printed(["pseudo-label", *COMMANDS["pseudo-label"][0], "--print_config"], capsys)
    assert seen["input"] == ["a.txt", "b/", "c.csv"]  # repeated list options extend, as argparse's nargs did
    assert seen["progress_bar"] is False and seen["keep_duplicates"] is False
    assert seen["label_names"] == ["neg", "pos"] and seen["batch_size"] == 64
    onnx = printed(["export-onnx", *COMMANDS["export-onnx"][0], "--print_config"], capsys)
    assert onnx["optimize"] is False and onnx["int8"] is True and onnx["atol"] == 1e-3 and onnx["model"] is None
    seeds = printed(["seeds", *COMMANDS["seeds"][0], "--print_config"], capsys)
    assert seeds["config"] == ["a.yaml", "b.yaml"] and seeds["seeds"] == [1, 2] and seeds["select"] == "last"
    report = printed(["report", *COMMANDS["report"][0], "--print_config"], capsys)
    assert report["paths"] == ["logs/a", "logs/b"] and report["resamples"] == 500


def test_command_line_overrides_the_settings_file(in_tmp, capsys):
    (in_tmp / "e.yaml").write_text("ckpt_path: a.ckpt\noutput_dir: from_file\nmerged: true\n")
    seen = printed(["export", "--config", "e.yaml", "--output_dir", "from_line", "--print_config"], capsys)
    assert seen == {"ckpt_path": "a.ckpt", "output_dir": "from_line", "trust_remote_code": False, "merged": True}


def test_run_command_passes_plain_typed_values_and_other_options_through():
    from typing import Literal, Optional

    from jsonargparse.typing import PositiveFloat, PositiveInt

    def probe(paths: list[str], size: PositiveInt = 3, rate: PositiveFloat = 0.5, fast: bool = False,
              how: Literal["a", "b"] = "a", label: Optional[str] = None, overrides=()):
        """A probe.

        Args:
            paths: where.
            size: how many.
        """
        return dict(paths=paths, size=size, rate=rate, fast=fast, how=how, label=label, overrides=list(overrides))

    got = run_command(probe, ["x", "y", "--size", "4", "--rate=2", "--fast", "--trainer.max_epochs", "3",
                              "--how", "b", "--model.init_args.lr", "-1"], "probe", positional=("paths",),
                      passthrough=True)
    assert got == dict(paths=["x", "y"], size=4, rate=2.0, fast=True, how="b", label=None,
                       overrides=["--trainer.max_epochs", "3", "--model.init_args.lr", "-1"])
    assert type(got["size"]) is int and type(got["rate"]) is float  # no jsonargparse subclasses leak out


def test_an_unreadable_settings_file_is_one_line(in_tmp, capsys):
    (in_tmp / "bad.yaml").write_text("ckpt_path: [a\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--config", "bad.yaml"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("finlight: error: bad.yaml:2: not valid YAML")

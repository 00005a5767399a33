"""Every numeric option of every command has a range: a value outside it is a usage error (exit 2)
that names the option, before any work; a config file's value outside its range is a one-line
error (exit 1) naming the file and the key."""

from __future__ import annotations

import click
import pytest
from cli_helpers import assert_one_line_error, run

from wsiscan.cli import main


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def _numeric_options():
    for path, cmd in _commands(main):
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.is_flag and isinstance(
                    param.type, (click.types.IntParamType, click.types.FloatParamType)):
                yield pytest.param(path, param, id=f"{' '.join(path)} {param.opts[-1]}")


NUMERIC = list(_numeric_options())


def test_there_are_numeric_options():
    assert len(NUMERIC) > 40  # the loop below really walks every command


@pytest.mark.parametrize("path, param", NUMERIC)
def test_every_numeric_option_has_a_range(path, param):
    assert isinstance(param.type, (click.IntRange, click.FloatRange)), f"{' '.join(path)} {param.opts[-1]} has no range"


def _outside(param) -> list[str]:
    t = param.type
    values = []
    if t.min is not None:
        values.append(str(t.min - 1 if isinstance(t, click.IntRange) else t.min - 0.5))
    if t.max is not None:
        values.append(str(t.max + 1 if isinstance(t, click.IntRange) else t.max + 0.5))
    return values


@pytest.mark.parametrize("path, param", NUMERIC)
def test_a_value_outside_the_range_is_a_usage_error(path, param):
    values = _outside(param)
    assert values, "a range with neither bound"
    for value in values:
        r = run(*path, param.opts[-1], value)
        assert r.exit_code == 2, (path, param.opts, value, r.output)
        assert "Traceback" not in r.output
        assert f"Invalid value for '{param.opts[0]}'" in r.stderr or param.opts[-1] in r.stderr, r.stderr
        assert r.stderr.startswith("Usage: "), r.stderr


@pytest.mark.parametrize("args, option", [
    (("predict", "x.svs", "--tile-size-px", "0"), "--tile-size-px"),
    (("predict", "x.svs", "--target-mpp", "0"), "--target-mpp"),
    (("predict", "x.svs", "--batch-size", "-4"), "--batch-size"),
    (("predict", "x.svs", "--loader-workers", "-3"), "--loader-workers"),
    (("heatmap", "somewhere", "--threshold", "1.5"), "--threshold"),
    (("tile", "x.svs", "--min-tissue", "2"), "--min-tissue"),
    (("tile", "x.svs", "--stride-px", "500"), "--stride-px"),  # more than 4 patch sides: clashes
])
def test_issue_cases_exit_2_naming_the_option(tmp_path, args, option):
    r = run(*args, "-o", tmp_path / "out") if args[0] != "heatmap" else run(*args)
    assert r.exit_code == 2, r.output
    assert option in r.stderr and "tile." not in r.stderr and "predict." not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists(), "nothing was done"


@pytest.mark.parametrize("yaml_text, key", [
    ("tile:\n  min_tissue: 2\n", "tile.min_tissue"),
    ("tile:\n  tile_size_px: 0\n", "tile.tile_size_px"),
    ("predict:\n  batch_size: -4\n", "predict.batch_size"),
    ("predict:\n  loader_workers: -3\n", "predict.loader_workers"),
    ("predict:\n  threshold: 1.5\n", "predict.threshold"),
    ("tile:\n  workers: -1\n", "tile.workers"),
    ("slide:\n  slide_mpp: 0\n", "slide.slide_mpp"),
])
def test_config_file_value_out_of_range_names_file_and_key(tmp_path, yaml_text, key):
    cfg = tmp_path / "my.yaml"
    cfg.write_text(yaml_text)
    r = run("tile", tmp_path / "x.svs", "--config", cfg, "-o", tmp_path / "out")
    assert_one_line_error(r, str(cfg), key)


def test_yaml_syntax_error_names_the_line(tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("tile:\n  min_tissue: 0.5\n  stride_px: [32\npredict: {}\n")
    r = run("tile", tmp_path / "x.svs", "--config", cfg, "-o", tmp_path / "out")
    assert_one_line_error(r, str(cfg), "line 4")

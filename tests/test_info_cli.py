"""`diffit info`: parameter counts and GFLOPs of the presets, and its errors."""

from typer.testing import CliRunner

from diffit_cli.main import app

runner = CliRunner()


def test_info_reports_the_paper_sizes() -> None:
    tiny = runner.invoke(app, ["info", "--model", "tiny"])
    assert tiny.exit_code == 0 and "1.16M trainable" in tiny.output
    xl = runner.invoke(app, ["info", "--model", "xl2", "--res", "256"])
    assert xl.exit_code == 0, xl.output
    assert "561.04M trainable" in xl.output and "118.51 G multiply-adds" in " ".join(xl.output.split())


def test_info_errors_exit_2() -> None:
    bad_res = runner.invoke(app, ["info", "--model", "xl2", "--res", "250"])
    assert bad_res.exit_code == 2 and "must be a multiple of 8" in bad_res.output
    bad_model = runner.invoke(app, ["info", "--model", "dit"])
    assert bad_model.exit_code == 2 and "--model must be one of" in bad_model.output
    bad_window = runner.invoke(app, ["info", "--model", "cifar10", "--res", "24"])
    assert bad_window.exit_code == 2 and "window" in bad_window.output

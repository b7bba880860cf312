"""`charlm plot`: training curves from metrics files or checkpoints, into a picture."""

from __future__ import annotations

import json
import struct
import sys

from pathlib import Path

import pytest

from charlm.errors import CharlmError
from charlm.plot import metrics_path, plot_runs, run_name
from tests.conftest import TINY_MODEL, run_cli


def write_metrics(path, losses):
    records = [{"step": 10 * (i + 1), "epoch": i, "tokens": 320 * (i + 1), "train_loss": loss + 0.1,
                "val_loss": loss, "val_ppl": 2.718281828 ** loss, "val_bpc": loss / 0.693}
               for i, loss in enumerate(losses)]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_a_run_is_found_from_its_metrics_file_or_any_of_its_checkpoints(tmp_path):
    for given in ("x.metrics.jsonl", "x.safetensors", "x.resume.safetensors"):
        assert metrics_path(tmp_path / given) == tmp_path / "x.metrics.jsonl"
        assert run_name(tmp_path / given) == "x"


def test_several_runs_make_one_png(runner, tmp_path):
    pytest.importorskip("matplotlib")
    write_metrics(tmp_path / "lstm.metrics.jsonl", [3.0, 2.5, 2.1, 1.9])
    write_metrics(tmp_path / "gru.metrics.jsonl", [3.1, 2.4, 2.0])
    (tmp_path / "gru.safetensors").write_bytes(b"")  # named by its checkpoint: the metrics beside it
    result = run_cli(runner, "plot", tmp_path / "lstm.metrics.jsonl", tmp_path / "gru.safetensors",
                     "--out", tmp_path / "curve.png")
    assert "wrote" in result.stderr
    width, height = png_size(tmp_path / "curve.png")
    assert width > 500 and height > 200


def test_a_real_run_plots_through_the_cli(runner, tiny_corpus):
    pytest.importorskip("matplotlib")
    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "4", "--eval-every", "2", "--out", "t.safetensors")
    run_cli(runner, "plot", "t.safetensors")  # -> curve.png in the working directory
    png_size(Path("curve.png"))
    assert Path("curve.png").stat().st_size > 10_000


def test_without_matplotlib_the_message_names_the_extra(runner, tmp_path, monkeypatch):
    write_metrics(tmp_path / "a.metrics.jsonl", [3.0, 2.0])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(CharlmError, match=r"pip install 'charlm\[plot\]'"):
        plot_runs([tmp_path / "a.metrics.jsonl"], tmp_path / "c.png")
    result = run_cli(runner, "plot", tmp_path / "a.metrics.jsonl", ok=False)
    assert result.exit_code == 1 and "charlm[plot]" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(("content", "message"), [(None, "no metrics file"), ("", "no evaluations yet"),
                                                  ("not json\n", "line 1 is not")])
def test_bad_inputs_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "r.metrics.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CharlmError, match=message):
        plot_runs([path], tmp_path / "c.png")


def test_the_plot_the_server_and_the_api_read_a_metrics_file_alike(tmp_path):
    """One reader: a last line cut short by a kill is left out by `charlm plot`, by the server's
    loss curve and by `charlm.Run.metrics` alike; a damaged line in the middle stops each of them."""
    import charlm
    from charlm.plot import read_metrics
    from charlm.serve.catalog import Served

    write_metrics(tmp_path / "x.metrics.jsonl", [3.0, 2.5])
    whole = (tmp_path / "x.metrics.jsonl").read_text()
    (tmp_path / "x.metrics.jsonl").write_text(whole + '{"step": 30, "tok')
    notes: list[str] = []
    plotted = read_metrics(tmp_path / "x.safetensors", notes)
    assert [record["step"] for record in plotted] == [10, 20] and "skipped line 3, cut short" in notes[0]
    assert charlm.Run(tmp_path / "x.safetensors", None).metrics == plotted
    served = Served("x", str(tmp_path / "x.safetensors"), None).metrics()["points"]
    assert [point["step"] for point in served] == [10, 20]
    (tmp_path / "x.metrics.jsonl").write_text('{"step": 5, "tok\n' + whole)
    for read in (lambda: read_metrics(tmp_path / "x.safetensors"), lambda: charlm.Run(tmp_path / "x.safetensors", None).metrics):
        with pytest.raises(CharlmError, match="line 1 is not a charlm metrics record"):
            read()
    assert charlm.Run(tmp_path / "none.safetensors", None).metrics == []

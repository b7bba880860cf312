"""`charlm export`: a checkpoint as an ONNX file, or as a static web page that generates in the
browser; or the check of an ONNX file charlm exported. The work is `charlm.export`'s."""

from __future__ import annotations

from pathlib import Path

import click

from charlm.cli import escaped, options
from charlm.settings import EXPORT


@click.command()
@click.argument("source", type=click.Path(path_type=str))
@options(EXPORT, "export")
def export(source: str, format: str, out: str | None, ort: str | None, check: bool) -> None:
    """Export SOURCE, a model checkpoint, to run without charlm or torch: a language model's step
    as one ONNX file (or a web page), a seq2seq pair model's encoder and decoder step as two files
    in a folder. --check reads back an export (a file, or a pair model's folder). Needs charlm[export].

    \b
    charlm export checkpoints/timemachine.safetensors --out timemachine.onnx
    charlm export checkpoints/timemachine.safetensors --format web --out site/
    python -m http.server -d site/      # then open http://127.0.0.1:8000
    charlm export timemachine.onnx --check
    """
    from charlm.errors import UsageError

    if check:
        from charlm.export.onnx import read_export, read_pair

        described = read_pair(source) if Path(source).is_dir() else read_export(source)
        click.echo(f"{escaped(source)}: charlm ONNX export of {escaped(described['describe'])}, "
                   f"{described['tokens']} tokens, vocab {described['vocab_size']}")
        return
    if ort is not None and format != "web":
        raise UsageError("--ort is for --format web")
    stem = Path(source).with_suffix("")
    if format == "onnx":
        from charlm.export.onnx import checkpoint_task, export_onnx

        if Path(source).suffix == ".onnx":
            raise UsageError(f"{source} is already an ONNX file: --format web makes a page of it, --check checks it")
        target = out or (f"{stem}.onnx" if checkpoint_task(source) == "lm" else f"{stem}-onnx")
        described = export_onnx(source, target)
    else:
        from charlm.export.web import export_web

        target = out or f"{stem}-web"
        described = export_web(source, target, ort)
    click.echo(f"wrote {escaped(str(target))} ({escaped(described['describe'])})"
               + (f"; serve it: python -m http.server -d {escaped(str(target))}" if format == "web" else ""), err=True)


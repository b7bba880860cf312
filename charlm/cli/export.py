"""`charlm export`: a checkpoint as an ONNX file, or as a static web page that generates in the
browser; or the check of an ONNX file charlm exported. The work is `charlm.export`'s."""

from __future__ import annotations

from pathlib import Path

import click

from charlm.cli import escaped, options
from charlm.settings import EXPORT


@click.command()
@click.argument("source", type=click.Path(dir_okay=False, path_type=str))
@options(EXPORT, "export")
def export(source: str, format: str, out: str | None, ort: str | None, check: bool) -> None:
    """Export SOURCE (a language-model checkpoint; for --format web or --check, also an ONNX file
    charlm exported) to run without charlm or torch; needs charlm[export].

    \b
    charlm export checkpoints/timemachine.safetensors --out timemachine.onnx
    charlm export checkpoints/timemachine.safetensors --format web --out site/
    python -m http.server -d site/      # then open http://127.0.0.1:8000
    charlm export timemachine.onnx --check
    """
    from charlm.errors import UsageError

    if check:
        from charlm.export.onnx import read_export

        described = read_export(source)
        click.echo(f"{escaped(source)}: charlm ONNX export of {escaped(described['describe'])}, "
                   f"{described['tokens']} tokens, vocab {described['vocab_size']}")
        return
    if ort is not None and format != "web":
        raise UsageError("--ort is for --format web")
    stem = Path(source).with_suffix("")
    if format == "onnx":
        from charlm.export.onnx import export_onnx

        if Path(source).suffix == ".onnx":
            raise UsageError(f"{source} is already an ONNX file: --format web makes a page of it, --check checks it")
        target = out or f"{stem}.onnx"
        described = export_onnx(source, target)
    else:
        from charlm.export.web import export_web

        target = out or f"{stem}-web"
        described = export_web(source, target, ort)
    click.echo(f"wrote {escaped(str(target))} ({escaped(described['describe'])})"
               + (f"; serve it: python -m http.server -d {escaped(str(target))}" if format == "web" else ""), err=True)

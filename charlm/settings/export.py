"""Export's settings: `charlm export`'s flags and `charlm.export`'s keywords. Standard library only."""

from __future__ import annotations

import os

from charlm.settings.rows import Setting, table

EXPORT_FORMATS = ("onnx", "web")

EXPORT = table(
    Setting("format", str, "onnx", "onnx: the one-step graph and its metadata, one file; web: a static folder whose "
            "page generates in the browser (the model, ONNX Runtime Web, no server, no network).", ("export",),
            choices=EXPORT_FORMATS),
    Setting("out", os.PathLike, None, "Where to write: a .onnx file, a pair model's folder (encoder.onnx, "
            "decoder.onnx) or the web page's folder [default: beside the source, MODEL.onnx, MODEL-onnx/ or "
            "MODEL-web/].", ("export",)),
    Setting("ort", os.PathLike, None, "ONNX Runtime Web for the page: its npm package's dist/ folder or its tarball "
            "(npm pack onnxruntime-web@1.31.1) [default: that tarball, fetched once from the npm registry and "
            "checked against its published SHA-512].", ("export",)),
    Setting("check", bool, False, "Only check SOURCE, an ONNX file charlm exported, and say what it holds.",
            ("export",)),
)

"""Export: a trained model outside charlm and torch, as ONNX (`onnx`, from the step graphs of `steps`)
and as a static web page that generates in the browser (`web`)."""

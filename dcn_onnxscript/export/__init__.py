"""The exporter hooks: torch.onnx's dynamo exporter (:mod:`.dynamo`) and the TorchScript exporter
(:mod:`.torchscript`), both writing the lowerings of :mod:`dcn_onnxscript.lowering`."""

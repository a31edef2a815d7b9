"""The ONNX lowerings of deformable convolution: the steps of the equation (:mod:`.sampling`), the
"gather" (:mod:`.gather`) and "grid_sample" (:mod:`.grid_sample`) lowerings, the table of lowerings
(:mod:`.table`) and the standalone onnxscript functions (:mod:`.script`). Nothing here imports torch."""

"""pydiff.export: models, and whole few-step samplers with their model, as files to deploy.

    from pydiff.export import aoti, onnx, tensorrt
    from pydiff.samplers import SamplerModule

    graph = SamplerModule(model, "dpmpp_2m", steps=8, guidance_scale=3.0)   # noise, cond, uncond -> x0, one graph
    onnx(graph, (noise, {"y": labels}, {"y": null_labels}), "sampler.onnx")  # checked with ONNX Runtime
    aoti(graph, (noise, {"y": labels}, {"y": null_labels}), "sampler.pt2")   # AOTInductor package, checked
    tensorrt("sampler.onnx", "sampler.plan", fp16=True)                       # needs TensorRT (optional)

Command line: ``pydiff export`` (the bundled digits model or its sampler).
"""

from .formats import (MARKER, TOLERANCES, ExportMismatch, Exported, OnnxRunner, aoti, export_program, lower, onnx,
                      run_onnx, tensorrt)

__all__ = ["MARKER", "TOLERANCES", "ExportMismatch", "Exported", "OnnxRunner", "aoti", "export_program", "lower",
           "onnx", "run_onnx", "tensorrt"]

"""Export of detectors to deployable bundles (ONNX / OpenVINO graph + manifest), see docs/export.md.

The graphs map a preprocessed batch (B, 3, S, S) to image scores (B,) and anomaly maps (B, S, S) with the text
embeddings and the few-shot memory baked in; :mod:`vlmad_runtime.bundle` loads and runs them without torch.
"""

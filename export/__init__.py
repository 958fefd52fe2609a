"""Router classifier: fine-tune, export to ONNX, version into the Triton model repository, evaluate.

Kept import-light: ``export.metrics`` and ``export.repository`` must not pull in torch.
"""

"""Deployment: model folders with a measured model card, Hub uploads, and TorchScript/ONNX export; imports inference, scoring, storage and below, never training, serving or cli."""

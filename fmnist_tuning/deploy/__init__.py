"""The shipped model: ONNX export, its checks against PyTorch, predictions, and its model card."""

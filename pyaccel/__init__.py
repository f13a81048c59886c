"""pyaccel: persistent, shared weight pools on fast memory, and a zero-copy ONNX loader."""

__version__ = "0.1.0"

"""camcaffe: faithful Caffe → ONNX conversion, ONNX Runtime execution and Class Activation Maps."""

__version__ = "0.1.0"

"""Caffe → ONNX conversion: a registry of one converter function per Caffe layer type."""

"""`caffe.proto` for legacy scripts: `caffe.proto.caffe_pb2` with `import camcaffe as caffe`, and
`from camcaffe.proto import caffe_pb2` for `from caffe.proto import caffe_pb2`.

It is camcaffe's Caffe schema (camcaffe.caffe.caffe_pb2, the very module): the messages of deploy nets,
caffemodels, BlobProto (mean.binaryproto) and Datum, with Caffe's field names and numbers."""

import sys

from camcaffe.caffe import caffe_pb2

# `import camcaffe.proto.caffe_pb2` gives the same module (one set of message classes)
sys.modules[f"{__name__}.caffe_pb2"] = caffe_pb2

__all__ = ["caffe_pb2"]

"""The legacy pycaffe surface (`import camcaffe as caffe`): `Net`, blobs and params, modes, and `caffe.io`."""

"""`caffe.proto.caffe_pb2` (import camcaffe as caffe) is camcaffe's Caffe schema, with Datum and BlobProto."""

from __future__ import annotations

import camcaffe as caffe
from camcaffe.caffe import caffe_pb2 as schema


def test_caffe_proto_is_the_schema_module() -> None:
    import camcaffe.proto.caffe_pb2 as imported

    from camcaffe.proto import caffe_pb2

    assert caffe.proto.caffe_pb2 is schema and caffe_pb2 is schema and imported is schema
    assert "proto" in dir(caffe)


def test_messages_keep_caffe_field_numbers() -> None:
    datum = schema.Datum.DESCRIPTOR.fields_by_name
    numbers = {name: field.number for name, field in datum.items()}
    assert numbers == {
        "channels": 1,
        "height": 2,
        "width": 3,
        "data": 4,
        "label": 5,
        "float_data": 6,
        "encoded": 7,
    }
    # a mean.binaryproto as Caffe's compute_image_mean writes it (legacy 4-D header) parses
    blob = schema.BlobProto(num=1, channels=3, height=1, width=2)
    blob.data.extend([1, 2, 3, 4, 5, 6])
    parsed = caffe.proto.caffe_pb2.BlobProto()
    parsed.ParseFromString(blob.SerializeToString())
    assert caffe.io.blobproto_to_array(parsed).shape == (1, 3, 1, 2)

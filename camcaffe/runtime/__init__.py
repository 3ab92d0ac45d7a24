"""Running a converted model: the ONNX Runtime session and provider choice, model-file loading and its safety
checks, caffe.io preprocessing, views (warp, centre crop, 10 crops) and labels."""

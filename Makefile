# camcaffe — the pipeline a lab wires up. `make demo` runs the main job, `make test` the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
CAMCAFFE := $(BIN)/camcaffe
OUT ?= out

# make convert: every prototxt/NAME.prototxt that has weights/NAME.caffemodel -> convert/NAME.onnx
CONVERT_FLAGS ?= --mean 104,117,123 --raw-scale 255 --channel-swap 2,1,0
MODELS := $(basename $(notdir $(wildcard prototxt/*.prototxt)))
ONNX := $(foreach m,$(MODELS),$(if $(wildcard weights/$(m).caffemodel),convert/$(m).onnx))

# make demo: the real SqueezeNet v1.0 from ../shared when present, else weights/ (see `make weights`).
DEMO_PROTOTXT ?= $(firstword $(wildcard prototxt/squeezenet_v1.0.prototxt $(SHARED)/data/models/squeezenet_v1.0/deploy.prototxt))
DEMO_WEIGHTS ?= $(firstword $(wildcard weights/squeezenet_v1.0.caffemodel $(SHARED)/data/models/squeezenet_v1.0/weights.caffemodel))
DEMO_LABELS ?= $(firstword $(wildcard $(SHARED)/data/labels/synset_words.txt))
DEMO_IMAGES ?= $(firstword $(wildcard $(SHARED)/data/images) examples/images)

# make cam: CAMs of IMAGES with MODEL into $(OUT)
MODEL ?= convert/demo.onnx
IMAGES ?= $(DEMO_IMAGES)

.PHONY: all setup test lint proto convert weights demo cam report bench clean help

all: test

help:
	@echo "make demo     set up, convert the demo model and write CAM overlays + results.csv to $(OUT)/demo"
	@echo "make test     set up and run the test suite"
	@echo "make convert  convert every prototxt/NAME.prototxt with weights/NAME.caffemodel to convert/NAME.onnx"
	@echo "make weights  download the files listed in weights/manifest.json (checks sha256)"
	@echo "make cam      MODEL=convert/x.onnx IMAGES=dir: CAMs into $(OUT)/cam"
	@echo "make report   HTML gallery of $(OUT)/cam (run 'make cam' first) -> $(OUT)/cam/report.html"
	@echo "make bench    benchmarks (figures to bench/results/)"
	@echo "make proto    regenerate camcaffe/caffe/caffe_pb2.py (needs protoc 3.21, Debian: protobuf-compiler)"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: setup
	$(BIN)/ruff check camcaffe tests bench examples

proto:
	cd camcaffe/caffe && protoc --python_out=. caffe.proto

convert: setup $(ONNX)
	@$(if $(ONNX),,echo "nothing to convert: put NAME.prototxt in prototxt/ and NAME.caffemodel in weights/ (or run 'make weights')")

convert/%.onnx: prototxt/%.prototxt weights/%.caffemodel | setup
	$(CAMCAFFE) convert $< weights/$*.caffemodel -o $@ $(CONVERT_FLAGS) $(if $(wildcard labels/$*.txt),--labels labels/$*.txt)

weights: setup
	$(BIN)/python -m camcaffe.fetch weights/manifest.json

demo: setup
	@if [ -z "$(DEMO_WEIGHTS)" ] || [ -z "$(DEMO_PROTOTXT)" ]; then \
	  echo "make demo: no SqueezeNet v1.0 weights found. Put the deploy file at prototxt/squeezenet_v1.0.prototxt and the"; \
	  echo "caffemodel at weights/squeezenet_v1.0.caffemodel (or pass DEMO_PROTOTXT=... DEMO_WEIGHTS=...),"; \
	  echo "or run 'make weights' and 'make demo DEMO_PROTOTXT=prototxt/squeezenet_v1.1.prototxt DEMO_WEIGHTS=weights/squeezenet_v1.1.caffemodel'."; \
	  exit 1; fi
	@mkdir -p convert
	$(CAMCAFFE) convert "$(DEMO_PROTOTXT)" "$(DEMO_WEIGHTS)" -o convert/demo.onnx $(CONVERT_FLAGS) \
	  $(if $(DEMO_LABELS),--labels "$(DEMO_LABELS)")
	$(CAMCAFFE) cam convert/demo.onnx "$(DEMO_IMAGES)" --out $(OUT)/demo --top-k 1
	@echo "overlays and $(OUT)/demo/results.csv written"

cam: setup
	$(CAMCAFFE) cam $(MODEL) $(IMAGES) --out $(OUT)/cam

report: setup
	$(CAMCAFFE) report $(OUT)/cam -o $(OUT)/cam/report.html

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(OUT) convert/*.onnx convert/*.onnx.data .pytest_cache build *.egg-info

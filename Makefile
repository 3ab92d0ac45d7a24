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


.PHONY: all setup test test-fast lint proto convert weights demo cam report reproduce bench clean help

all: test

help:
	@echo "make demo     set up, convert the demo model and write CAM overlays, results.csv and report.html to $(OUT)/demo"
	@echo "make test     set up and run the test suite"
	@echo "make test-fast  the tests without the slow end-to-end cases (Ray, browser, real models)"
	@echo "make convert  convert every prototxt/NAME.prototxt with weights/NAME.caffemodel to convert/NAME.onnx"
	@echo "make weights  download the files listed in weights/manifest.json (checks sha256)"
	@echo "make cam      MODEL=convert/x.onnx IMAGES=dir: CAMs into $(OUT)/cam"
	@echo "make report   HTML gallery of $(OUT)/cam (run 'make cam' first) -> $(OUT)/cam/report.html"
	@echo "make reproduce ILSVRC_IMAGES=dir ILSVRC_ANNOTATIONS=dir: the CAM paper's ILSVRC val localisation, paper vs ours"
	@echo "make bench    benchmarks (figures to bench/results/)"
	@echo "make proto    regenerate camcaffe/caffe/caffe_pb2.py (needs protoc 3.21, Debian: protobuf-compiler)"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# -n auto: one pytest worker per core; loadgroup keeps each xdist_group (Ray, browser) on one worker.
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider -n auto --dist loadgroup

test: setup
	$(PYTEST) tests

test-fast: setup
	$(PYTEST) -m "not slow" tests

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
	$(CAMCAFFE) cam convert/demo.onnx "$(DEMO_IMAGES)" --out $(OUT)/demo --top-k 5 --report
	@echo "overlays, $(OUT)/demo/results.csv and $(OUT)/demo/report.html written"

cam: setup
	$(CAMCAFFE) cam $(MODEL) $(IMAGES) --out $(OUT)/cam

report: setup
	$(CAMCAFFE) report $(OUT)/cam -o $(OUT)/cam/report.html

# make reproduce: the paper's protocol (10 crops, the authors' dt boxes, top-5) on ILSVRC 2012 val with the
# published GoogLeNet-CAM ('make weights'); REPRO_LIMIT=N scores only the first N images.
REPRO_MODEL ?= convert/googlenet_cam.onnx
REPRO_PROTOTXT ?= prototxt/googlenet_cam.prototxt
REPRO_WEIGHTS ?= weights/googlenet_cam.caffemodel
REPRO_LABELS ?= $(firstword $(wildcard labels/synset_words.txt $(SHARED)/data/labels/synset_words.txt))
REPRO_LIMIT ?= 0

reproduce: setup
	@if [ -z "$(ILSVRC_IMAGES)" ] || [ -z "$(ILSVRC_ANNOTATIONS)" ] || [ -z "$(REPRO_LABELS)" ]; then \
	  echo "make reproduce: give ILSVRC_IMAGES=<ILSVRC2012 val images folder> ILSVRC_ANNOTATIONS=<val bbox XML folder>"; \
	  echo "and REPRO_LABELS=<synset_words.txt> if ../shared is absent; run 'make weights' for GoogLeNet-CAM first."; \
	  exit 1; fi
	$(BIN)/python -m camcaffe.cli.reproduce --images "$(ILSVRC_IMAGES)" --annotations "$(ILSVRC_ANNOTATIONS)" \
	  --model "$(REPRO_MODEL)" --prototxt "$(REPRO_PROTOTXT)" --weights "$(REPRO_WEIGHTS)" \
	  --labels "$(REPRO_LABELS)" --out $(OUT)/reproduce --limit $(REPRO_LIMIT)

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(OUT) convert/*.onnx convert/*.onnx.data .pytest_cache build *.egg-info

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

# make demo: the pruned 8-bit Deep-Compression SqueezeNet v1.0, its labels and five photos, all shipped in
# examples/demo (licences in examples/demo/README.md); override any DEMO_* to try your own.
DEMO_DIR ?= examples/demo
DEMO_PROTOTXT ?= $(DEMO_DIR)/squeezenet_v1.0.prototxt
DEMO_WEIGHTS ?= $(DEMO_DIR)/squeezenet_v1.0.caffemodel
DEMO_LABELS ?= $(DEMO_DIR)/synset_words.txt
DEMO_IMAGES ?= $(DEMO_DIR)/images

# make cam: CAMs of IMAGES with MODEL into $(OUT)
MODEL ?= convert/demo.onnx
IMAGES ?= $(DEMO_IMAGES)


.PHONY: all setup test test-fast lint proto convert weights demo demo-inputs web cam report reproduce bench clean help

all: test

help:
	@echo "make demo     set up, convert the demo model and write CAM overlays, results.csv and report.html to $(OUT)/demo"
	@echo "make test     set up and run the test suite"
	@echo "make test-fast  the tests without the slow end-to-end cases (Ray, browser, real models)"
	@echo "make convert  convert every prototxt/NAME.prototxt with weights/NAME.caffemodel to convert/NAME.onnx"
	@echo "make weights  download the files listed in weights/manifest.json (checks sha256)"
	@echo "make web      the demo model's page that explains images in the browser -> $(WEB_OUT) (fetches onnxruntime-web with npm once)"
	@echo "make cam      MODEL=convert/x.onnx IMAGES=dir: CAMs into $(OUT)/cam"
	@echo "make report   HTML gallery of $(OUT)/cam (run 'make cam' first) -> $(OUT)/cam/report.html"
	@echo "make reproduce ILSVRC_IMAGES=dir ILSVRC_ANNOTATIONS=dir: the CAM paper's ILSVRC val localisation, paper vs ours"
	@echo "make bench    benchmarks (figures to bench/results/)"
	@echo "make proto    regenerate camcaffe/caffe/caffe_pb2.py and camcaffe/runtime/onnx_lite_pb2.py (needs protoc 3.21, Debian: protobuf-compiler)"

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
	cd camcaffe/runtime && protoc --python_out=. onnx_lite.proto

convert: setup $(ONNX)
	@$(if $(ONNX),,echo "nothing to convert: put NAME.prototxt in prototxt/ and NAME.caffemodel in weights/ (or run 'make weights')")

# labels/NAME.txt is embedded when present (and a new or changed one triggers a reconversion).
.SECONDEXPANSION:
convert/%.onnx: prototxt/%.prototxt weights/%.caffemodel $$(wildcard labels/$$*.txt) | setup
	$(CAMCAFFE) convert $< weights/$*.caffemodel -o $@ $(CONVERT_FLAGS) $(if $(wildcard labels/$*.txt),--labels labels/$*.txt)
	@$(if $(wildcard labels/$*.txt),,echo "$@: no labels/$*.txt, so no labels embedded (classes show as class_N); for an ImageNet model: cp $(DEMO_DIR)/synset_words.txt labels/$*.txt && make convert")

weights: setup
	$(BIN)/python -m camcaffe.fetch weights/manifest.json

# Inputs are checked before the virtual environment is built, so a wrong path fails in a second.
demo-inputs:
	@check() { if [ -z "$$2" ] || [ ! -e "$$2" ]; then \
	  echo "make demo: $$1='$$2' not found; restore $(DEMO_DIR) (git checkout -- $(DEMO_DIR)) or give $$1=<an existing path>"; \
	  exit 1; fi; }; \
	check DEMO_PROTOTXT "$(DEMO_PROTOTXT)"; check DEMO_WEIGHTS "$(DEMO_WEIGHTS)"; \
	$(if $(DEMO_LABELS),check DEMO_LABELS "$(DEMO_LABELS)";) check DEMO_IMAGES "$(DEMO_IMAGES)"

demo: demo-inputs setup
	@mkdir -p convert
	$(CAMCAFFE) convert "$(DEMO_PROTOTXT)" "$(DEMO_WEIGHTS)" -o convert/demo.onnx $(CONVERT_FLAGS) \
	  $(if $(DEMO_LABELS),--labels "$(DEMO_LABELS)")
	$(CAMCAFFE) cam convert/demo.onnx "$(DEMO_IMAGES)" --out $(OUT)/demo --top-k 5 --report
	@echo "overlays, $(OUT)/demo/results.csv and $(OUT)/demo/report.html written; open file://$(abspath $(OUT)/demo/report.html) in a browser"
	@echo "next: $(CAMCAFFE) cam convert/demo.onnx YOUR_PHOTOS --out $(OUT)/mine --report  (then open $(OUT)/mine/report.html)"

# make web: the static page of `camcaffe web` for the demo model; onnxruntime-web (the version pinned in
# camcaffe/output/web_vendor.py) is fetched from the npm registry into ~/.cache/camcaffe once (or $$CAMCAFFE_ORT_WEB).
WEB_OUT ?= build/web-demo

web: demo-inputs setup
	@mkdir -p convert $(dir $(WEB_OUT))
	$(CAMCAFFE) convert "$(DEMO_PROTOTXT)" "$(DEMO_WEIGHTS)" -o convert/demo.onnx $(CONVERT_FLAGS) \
	  $(if $(DEMO_LABELS),--labels "$(DEMO_LABELS)") -q
	$(CAMCAFFE) web convert/demo.onnx -o $(WEB_OUT) --fetch

cam: setup
	$(CAMCAFFE) cam $(MODEL) $(IMAGES) --out $(OUT)/cam

report: setup
	$(CAMCAFFE) report $(OUT)/cam -o $(OUT)/cam/report.html

# make reproduce: the paper's protocol (10 crops, the authors' dt boxes, top-5) on ILSVRC 2012 val with the
# published GoogLeNet-CAM ('make weights'); REPRO_LIMIT=N scores only the first N images.
REPRO_MODEL ?= convert/googlenet_cam.onnx
REPRO_PROTOTXT ?= prototxt/googlenet_cam.prototxt
REPRO_WEIGHTS ?= weights/googlenet_cam.caffemodel
REPRO_LABELS ?= $(firstword $(wildcard labels/synset_words.txt $(DEMO_DIR)/synset_words.txt $(SHARED)/data/labels/synset_words.txt))
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

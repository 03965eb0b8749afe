from pathlib import Path

from setuptools import find_packages, setup

package_name = "qc_cell"
executables = [
    "camera_driver",
    "inference",
    "sensor_fusion",
    "decision",
    "reject_actuator",
    "cloud_bridge",
    "process_simulator",
    "arm_server",
    "cell_manager",
]

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={"qc_cell": ["camera/*.xml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="QC cell developers",
    maintainer_email="dev@example.com",
    description=Path("package.xml").read_text().split("<description>")[1].split("</description>")[0],
    license="Apache-2.0",
    entry_points={
        "console_scripts": [f"{name} = qc_cell.nodes.{name}:main" for name in executables]
        + [
            "qc_cell_runner = qc_cell.bringup.cell_runner:main",
            "qc_synthetic_parts = qc_cell.camera.synthetic_cli:main",
        ],
    },
)

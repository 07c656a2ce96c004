"""Install msg_edu from `settings.ini`, the one place for metadata and requirements.

Written without `pkg_resources` (removed from current setuptools); needs Python 3.11+.
"""
from configparser import ConfigParser
from pathlib import Path

import setuptools

here = Path(__file__).parent
parser = ConfigParser(delimiters=["="])
parser.read(here / "settings.ini", encoding="utf-8")
cfg = parser["DEFAULT"]

licenses = {"apache2": ("Apache Software License 2.0", "OSI Approved :: Apache Software License")}
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable"]
py_versions = ["3.11", "3.12", "3.13"]
lic = licenses[cfg["license"]]
# data/ (ToySlakh's recipe, an example Slakh metadata.yaml, ...): beside the package in a checkout, in share/msg_edu
# for a regular install; core.asset() looks in both
assets = sorted(p for p in (here / "data").rglob("*") if p.is_file())
data_files = [(str(Path("share/msg_edu") / p.parent.relative_to(here / "data")), [str(p.relative_to(here))]) for p in assets]
min_python = cfg["min_python"]

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    url=cfg["git_url"],
    license=lic[0],
    keywords=cfg["keywords"].split(),
    classifiers=[
        "Development Status :: " + statuses[int(cfg["status"])],
        "Intended Audience :: " + cfg["audience"].title(),
        "License :: " + lic[1],
        "Natural Language :: " + cfg["language"].title(),
        *[f"Programming Language :: Python :: {v}" for v in py_versions[py_versions.index(min_python):]],
    ],
    python_requires=f">={min_python}",
    packages=setuptools.find_packages(include=[cfg["lib_path"], cfg["lib_path"] + ".*"]),
    include_package_data=True,
    data_files=data_files,
    install_requires=cfg["requirements"].split(),
    extras_require={"dev": cfg["dev_requirements"].split(), "docs": cfg["docs_requirements"].split()},
    entry_points={
        "console_scripts": cfg["console_scripts"].split(),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    zip_safe=False,
)

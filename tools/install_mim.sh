#!/usr/bin/env bash
# Installs OpenMMLab's mim (openmim 0.3.9) into the active environment without its
# opendatalab dependency (see requirements/mim.txt). mim's other requirements go in first and
# openmim last with --no-deps: pip checks an install against the packages that depend on what
# it installs, so installing them after openmim would report the left-out opendatalab as an
# "ERROR" of pip's dependency resolver, which is no error here.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q -r requirements/mim.txt
pip install -q --no-deps openmim==0.3.9

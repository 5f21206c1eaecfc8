#!/usr/bin/env bash
# The wheels a GPU run carries in .whl (see ../shared/gpu/README.md): the shared script's defaults
# (pydantic, platformdirs, filelock) plus dask and distributed with everything they import, which
# the GPU image lacks. Without them the dask GPU tests skip (session 19's run 1: 178 passed,
# 4 skipped, against 179 / 3 with them).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
../shared/gpu/prepare-wheels.sh dask distributed cloudpickle fsspec packaging partd locket toolz pyyaml click \
    importlib_metadata zipp msgpack psutil sortedcontainers tblib tornado urllib3 zict jinja2 markupsafe "$@"

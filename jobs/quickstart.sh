#!/usr/bin/env bash
# The quickstart: create the environment when it is missing, then train the small U-Net of
# jobs/quickstart.toml on 4 ranks, each image split over a 2x2 grid. Extra arguments go to `hpcnn train`
# (e.g. --restart to start over, --resume to continue).
set -euo pipefail
cd "$(dirname "$0")/.."
. jobs/env.sh
exec mpiexec -n 4 hpcnn train jobs/quickstart.toml "$@"

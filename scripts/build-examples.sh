#!/usr/bin/env bash
# Builds the example monoliths into examples/monoliths/build/NAME/bin/NAME,
# the package directories examples/monoliths/hostel.json points at.
set -euo pipefail
cd "$(dirname "$0")/.."
for app in quotes blog shop wiki guestbook; do
  mkdir -p "examples/monoliths/build/$app/bin"
  go build -trimpath -o "examples/monoliths/build/$app/bin/$app" "./examples/monoliths/$app"
done
chmod -R a+rX examples/monoliths/build

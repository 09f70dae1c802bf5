#!/bin/sh
# What `make test-container` runs (busybox has no make): the app answers, on this machine.
set -e
app | grep "Hello World from $(uname -m)"
cat /built.txt
grep -q "on $(uname -m)" /built.txt

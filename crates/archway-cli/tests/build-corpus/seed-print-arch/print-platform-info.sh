#!/bin/sh
echo "machine: $(uname -m)"

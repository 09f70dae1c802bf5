#!/bin/sh
# Hello World, and the architecture it runs on (what the seed's Go server prints).
echo "Hello World from $(uname -m)"

#!/usr/bin/env bash
# The docker_manifest action of the CodeCatalyst seed ("Multi-Architecture Container Builds
# with CodeCatalyst"), command for command, with `archway` substituted for `docker` (and the
# ECR login replaced by a password on stdin). Inputs, as in the seed's workflow variables:
#   REGISTRY, IMAGE_REPO_NAME, IMAGE_TAG_AMD64, IMAGE_TAG_ARM64, REGISTRY_USER, REGISTRY_PASSWORD
set -euo pipefail
echo "$REGISTRY_PASSWORD" | archway login --username "$REGISTRY_USER" --password-stdin "$REGISTRY"
archway manifest create "$REGISTRY/$IMAGE_REPO_NAME" "$REGISTRY/$IMAGE_REPO_NAME:$IMAGE_TAG_ARM64" "$REGISTRY/$IMAGE_REPO_NAME:$IMAGE_TAG_AMD64"
archway manifest annotate --arch amd64 "$REGISTRY/$IMAGE_REPO_NAME" "$REGISTRY/$IMAGE_REPO_NAME:$IMAGE_TAG_AMD64"
archway manifest annotate --arch arm64 "$REGISTRY/$IMAGE_REPO_NAME" "$REGISTRY/$IMAGE_REPO_NAME:$IMAGE_TAG_ARM64"
archway manifest push "$REGISTRY/$IMAGE_REPO_NAME"

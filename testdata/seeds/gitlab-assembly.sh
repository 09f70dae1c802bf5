#!/usr/bin/env bash
# The create-manifest-job of the GitLab seed ("multi-architecture GitLab runners on EKS"),
# command for command, with `archway` substituted for `podman`. Inputs, as in the seed:
#   CI_REGISTRY, CI_REGISTRY_USER, CI_REGISTRY_PASSWORD, COMPOSITE_IMAGE
set -euo pipefail
echo "${CI_REGISTRY_PASSWORD}" | archway login -u "${CI_REGISTRY_USER}" --password-stdin "${CI_REGISTRY}"
archway manifest create ${COMPOSITE_IMAGE}
for arch in arm64 amd64; do
  archway manifest add ${COMPOSITE_IMAGE} docker://${COMPOSITE_IMAGE}-${arch};
done
archway manifest inspect ${COMPOSITE_IMAGE}
# The composite image manifest omits the architecture from the tag suffix.
archway manifest push ${COMPOSITE_IMAGE} docker://${COMPOSITE_IMAGE}

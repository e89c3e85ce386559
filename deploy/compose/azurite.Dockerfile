# Azurite (the Azure Blob emulator, from the npm registry at the version package-lock.json pins) for
# the compose deployment's default bucket, on the local base image. Its blobs go to /var/lib/azurite.
# Debian's nodejs, and npm itself from the npm registry (checked against the registry's integrity):
# Debian's npm package drags in some 350 packages.
ARG BASE_IMAGE=aiot-base:bookworm
FROM ${BASE_IMAGE}
LABEL aiot.compose=1
COPY deploy/compose/trust-host-ca.sh /usr/local/bin/
RUN trust-host-ca.sh \
    && apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs >/dev/null \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
ARG NPM_VERSION=10.9.2
RUN python3 -c 'import base64, hashlib, json, sys, urllib.request; \
meta = json.load(urllib.request.urlopen("https://registry.npmjs.org/npm/" + sys.argv[1], timeout=60)); \
data = urllib.request.urlopen(meta["dist"]["tarball"], timeout=120).read(); \
algorithm, digest = meta["dist"]["integrity"].split("-", 1); \
assert base64.b64encode(hashlib.new(algorithm, data).digest()).decode() == digest, "npm: integrity mismatch"; \
open("/tmp/npm.tgz", "wb").write(data)' "$NPM_VERSION" \
    && mkdir -p /opt/npm && tar -xzf /tmp/npm.tgz -C /opt/npm --strip-components=1 && rm /tmp/npm.tgz
WORKDIR /opt/azurite
COPY package.json package-lock.json ./
RUN node /opt/npm/bin/npm-cli.js ci --no-audit --no-fund --loglevel=error \
    && node /opt/npm/bin/npm-cli.js cache clean --force
CMD ["/opt/azurite/node_modules/.bin/azurite-blob", "--blobHost", "0.0.0.0", "--blobPort", "10000", \
     "--location", "/var/lib/azurite", "--skipApiVersionCheck", "--disableTelemetry", "--loose"]

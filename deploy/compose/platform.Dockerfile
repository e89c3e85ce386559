# The platform's images for the compose deployment (docker-compose.yml), built from this checkout
# on the local base image (.ci/docker-setup.sh; no image registry is reachable). Two targets:
#
#   platform   the main node: the platform in a venv (python -m bootstrapper.compose main)
#   kafka      Apache Kafka from Maven Central's jars (bootstrapper/kafka_jars/pom.xml), run by
#              the platform's own KafkaBroker (python -m bootstrapper.compose kafka)
#
# Layers go from the rarely to the often changed: CA trust, uv, the locked dependencies (uv.lock),
# Java and the jars (kafka), and only then the source: an edit to the platform rebuilds two small
# layers of each image. The classic builder runs every stage before the target, so `platform`
# comes first and `kafka` reuses it from the cache.
ARG BASE_IMAGE=aiot-base:bookworm

FROM ${BASE_IMAGE} AS python-deps
LABEL aiot.compose=1
COPY deploy/compose/trust-host-ca.sh /usr/local/bin/
RUN trust-host-ca.sh
ENV PATH=/opt/aiot/venv/bin:/opt/aiot/tools/bin:$PATH \
    UV_PROJECT_ENVIRONMENT=/opt/aiot/venv \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    UV_PYTHON=/usr/bin/python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    AIOT_HOME=/var/lib/aiot
RUN python3 -m venv /opt/aiot/tools && /opt/aiot/tools/bin/pip install --quiet --no-cache-dir uv==0.13.9
WORKDIR /opt/aiot/src
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project

FROM python-deps AS platform
COPY . /opt/aiot/src
RUN uv sync --frozen --no-dev \
    && python -m compileall -q -j 0 /opt/aiot/src >/dev/null
CMD ["python", "-m", "bootstrapper.compose", "main"]

FROM python-deps AS java
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null \
    && update-ca-certificates --fresh >/dev/null 2>&1 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

# Maven itself from Maven Central (its binary distribution, checked against its published sha512):
# Debian's maven package drags in a hundred libraries and took two minutes here.
FROM java AS kafka-jars
ARG MAVEN_VERSION=3.9.16
RUN python3 -c 'import hashlib, sys, urllib.request; \
base = "https://repo.maven.apache.org/maven2/org/apache/maven/apache-maven/" + sys.argv[1] + "/apache-maven-" + sys.argv[1] + "-bin.tar.gz"; \
data = urllib.request.urlopen(base, timeout=120).read(); \
want = urllib.request.urlopen(base + ".sha512", timeout=60).read().decode().split()[0]; \
assert hashlib.sha512(data).hexdigest() == want, "apache-maven: sha512 mismatch"; \
open("/tmp/maven.tgz", "wb").write(data)' "$MAVEN_VERSION" \
    && mkdir -p /opt/maven && tar -xzf /tmp/maven.tgz -C /opt/maven --strip-components=1 && rm /tmp/maven.tgz
COPY bootstrapper/kafka_jars/pom.xml /build/pom.xml
RUN /opt/maven/bin/mvn -q -B -f /build/pom.xml dependency:copy-dependencies -DoutputDirectory=/opt/kafka-jars -DincludeScope=runtime \
    && sha256sum /build/pom.xml | cut -c1-16 > /opt/kafka-jars/.aiot-complete

FROM java AS kafka
COPY --from=kafka-jars /opt/kafka-jars /opt/kafka-jars
ENV AIOT_KAFKA__JARS_DIR=/opt/kafka-jars
COPY . /opt/aiot/src
RUN uv sync --frozen --no-dev \
    && python -m compileall -q -j 0 /opt/aiot/src >/dev/null
CMD ["python", "-m", "bootstrapper.compose", "kafka"]

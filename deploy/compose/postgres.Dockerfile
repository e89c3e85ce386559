# PostgreSQL 15 (Debian's) for the compose deployment's registry database, on the local base image.
ARG BASE_IMAGE=aiot-base:bookworm
FROM ${BASE_IMAGE}
LABEL aiot.compose=1
# No cluster made by the package: the entrypoint makes one on the data volume, once.
RUN mkdir -p /etc/postgresql-common \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf \
    && apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql \
    && chmod 700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/
CMD ["postgres-entrypoint.sh"]

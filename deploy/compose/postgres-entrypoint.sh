#!/bin/sh
# The compose deployment's PostgreSQL: on an empty data volume, a cluster whose superuser is
# POSTGRES_USER (password POSTGRES_PASSWORD, scram-sha-256 over the network; the socket inside
# the container trusts local users, so `docker-compose exec postgres pg_dump -U aiot aiot` backs
# up) and the database POSTGRES_DB; then the server on every address of the container (the
# project's network only: its port is not published). The password never reaches the server's
# environment.
set -eu
PGBIN=/usr/lib/postgresql/15/bin
PGDATA=/var/lib/postgresql/data
: "${POSTGRES_USER:=aiot}"
: "${POSTGRES_DB:=aiot}"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

chown postgres:postgres "$PGDATA"
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "error: POSTGRES_PASSWORD is not set (the compose env file's AIOT_COMPOSE_POSTGRES_PASSWORD)" >&2
    exit 1
  fi
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  chown postgres "$pwfile"
  as_postgres "$PGBIN/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "CREATE DATABASE \"$POSTGRES_DB\"" | as_postgres "$PGBIN/postgres" --single -D "$PGDATA" postgres >/dev/null
  echo "initialised $PGDATA: user $POSTGRES_USER, database $POSTGRES_DB"
fi
unset POSTGRES_PASSWORD
exec setpriv --reuid=postgres --regid=postgres --init-groups "$PGBIN/postgres" -D "$PGDATA" \
  -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql

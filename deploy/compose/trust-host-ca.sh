#!/bin/sh
# Keep the base image's CA bundle (this host's, with the TLS proxy's CA that package downloads pass)
# trusted after apt installs ca-certificates, which rebuilds /etc/ssl/certs/ca-certificates.crt from
# /usr/share/ca-certificates and /usr/local/share/ca-certificates only: every certificate of the
# bundle becomes a file of the latter. Run before any apt-get install; Java's keystore takes them
# with `update-ca-certificates --fresh` once the JRE is installed.
set -eu
mkdir -p /usr/local/share/ca-certificates
awk '/BEGIN CERTIFICATE/ { n++; file = sprintf("/usr/local/share/ca-certificates/host-%03d.crt", n) }
     file { print > file }
     /END CERTIFICATE/ { close(file); file = "" }' /etc/ssl/certs/ca-certificates.crt
